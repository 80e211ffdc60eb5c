"""Atomic file output (a file is either complete or absent, never half-written), and JSON input
whose failures are one-line PeftlabErrors.

Every file and folder peftlab writes follows the user's umask (0644 / 0755 under umask 022), like
files written with plain ``open``. ``tempfile.mkstemp`` and ``mkdtemp`` create 0600 / 0700 on
purpose (private scratch space); renamed into place, those modes would make results unreadable to a
teammate, a group-shared folder or a web server. So the temp names here are created with the modes
``open`` and ``mkdir`` ask for (0666 / 0777), and the kernel applies the umask itself. That is
more robust than reading the umask and chmod-ing: ``os.umask(0)``-then-restore is a process-wide
race with any other thread creating files, ``/proc/self/status`` is Linux-only, a value cached at
import misses a later ``os.umask`` call, and none of them honours a folder's default POSIX ACL,
which the kernel applies in place of the umask for files it creates.

Files written by a dependency are set right afterwards with :func:`follow_umask`: safetensors
(from 0.8) writes every ``save_file`` through a 0600 temp file renamed into place, and
``save_pretrained`` of transformers and peft writes its weights with it. peftlab's own tensor
files go through :func:`save_safetensors`, which does so.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from peftlab.infra.errors import PeftlabError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def _new_name(parent: Path, prefix: str, suffix: str, create: Callable[[Path], T]) -> tuple[Path, T]:
    """``create(parent / (prefix + random + suffix))`` on a name nobody holds (``create`` must
    refuse an existing one, as O_EXCL and mkdir do), like mkstemp but with ``create``'s mode."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return path, create(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {parent}")


def temp_file(parent: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, Path]:
    """(open write-only descriptor, path) of a new empty file in ``parent``, mode 0666 less the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    path, fd = _new_name(Path(parent), prefix, suffix, lambda p: os.open(p, flags, 0o666))
    return fd, path


def temp_dir(parent: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A new empty folder in ``parent``, mode 0777 less the umask (``tempfile.mkdtemp`` makes 0700)."""
    return _new_name(Path(parent), prefix, suffix, lambda p: os.mkdir(p, 0o777))[0]


def new_file_mode(folder: Path) -> int:
    """The permission bits a file created now in ``folder`` gets (0666 less the umask), measured by
    creating one: thread-safe, portable, always current (see the module docstring)."""
    fd, probe = temp_file(folder, ".peftlab-mode.")
    try:
        return stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def follow_umask(*paths: str | Path) -> None:
    """Give each of ``paths`` (a file, or a folder: every file below it; all just written by
    peftlab) the mode of a new file in its folder, as if it had been written with ``open``."""
    modes: dict[Path, int] = {}
    for path in map(Path, paths):
        files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] if path.is_dir() else [path]
        for f in files:
            mode = modes.get(f.parent)
            if mode is None:
                mode = modes[f.parent] = new_file_mode(f.parent)
            if stat.S_IMODE(f.stat().st_mode) != mode:
                os.chmod(f, mode)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, leaving the file with the umask's mode (not 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    follow_umask(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path.parent, f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON in ``path``; missing, unreadable or malformed is the user's file: a PeftlabError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PeftlabError(f"cannot read {path}: {exc}") from None


def dir_size_bytes(path: str | Path) -> int:
    """Total size of the regular files below ``path`` (the adapter size on disk)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
