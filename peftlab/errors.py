"""User-facing errors.

Anything the user can fix (config, data, paths, adapters) raises :class:`PeftlabError`; the CLI
prints its one-line message and exits with code 2. Everything else is a bug and keeps its
traceback.
"""


class PeftlabError(Exception):
    """A problem with the user's input, reported as one line with exit code 2."""

    exit_code = 2
