"""Atomic file output (a file is either complete or absent, never half-written), and JSON input
whose failures are one-line PeftlabErrors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
