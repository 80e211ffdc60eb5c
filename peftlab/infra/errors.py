"""User-facing errors.

Anything the user can fix (config, data, paths, adapters) raises :class:`PeftlabError`; the CLI
prints its one-line message and exits with code 2. Everything else is a bug and keeps its
traceback.
"""


class PeftlabError(Exception):
    """A problem with the user's input, reported as one line with exit code 2."""

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (or its type when the message is empty):
    enough to name the problem in a one-line PeftlabError."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
