"""Stop a run in process right after a method's k-th checkpoint, as a kill would (for resume tests)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from peftlab.runners.checkpoint import complete_checkpoints
from peftlab.runners.experiment import run_experiment


class Interrupt(KeyboardInterrupt):
    """Stands in for a kill: KeyboardInterrupt is the one exception the runner lets through."""


def run_until_checkpoint(monkeypatch: pytest.MonkeyPatch, loop: ModuleType, cfg, method: str, k: int) -> Path:
    """Run ``cfg`` until ``method`` has written its ``k``-th checkpoint (through ``loop.save_checkpoint``),
    check that the run looks unfinished, and put the real save back. Returns the run folder."""
    real_save, saves = loop.save_checkpoint, []

    def save_then_die(method_dir, *args, **kwargs):
        path = real_save(method_dir, *args, **kwargs)
        if method_dir.name == method:
            saves.append(path)
            if len(saves) == k:
                raise Interrupt
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        run_experiment(cfg, quiet=True)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    out = Path(cfg.output_dir)
    assert json.loads((out / method / "results.json").read_text())["status"] == "incomplete"
    assert not (out / "comparison.md").exists()
    assert complete_checkpoints(out / method)
    return out
