"""Find the runs a report is about: every ``results.json`` below the given folders.

A report must not care which runner wrote a row (fine-tuning, in-context learning, zero-shot,
a composition sweep), so it reads only the RunResult schema and the run folder's
``config.yaml`` as plain YAML (never validated here: other runners may write other configs).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from peftlab.infra.errors import PeftlabError
from peftlab.report.calibration import Calibration, calibration_of
from peftlab.results import BASELINE_METHOD, PREDICTIONS_FILE, RESULTS_FILE, Predictions, RunResult, read_predictions, read_result
from peftlab.infra.launcher import launch_prefix

CONFIG_FILE = "config.yaml"
#: the command line that started a run and its working folder (written by ``peftlab run``)
COMMAND_FILE = "command.json"
#: folders that hold saved weights, never results worth a row
_SKIP_DIRS = {"adapter", "adapter.tmp", "mlruns", "mlartifacts", "tensorboard", "__pycache__"}


@dataclass
class RunDir:
    """One folder passed to ``peftlab report``: its config (if any) and how to reproduce it."""

    path: Path
    config_text: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    #: (command line, working folder) as the user typed it, when recorded
    original: tuple[str, str] | None = None
    #: ``accelerate launch ...`` / ``torchrun ...`` when the run was started by a launcher (peftlab.infra.launcher)
    launcher: str | None = None

    @property
    def label(self) -> str:
        return self.path.name or str(self.path)

    @property
    def command(self) -> str | None:
        """The one command that reproduces every row of this folder (the resolved config)."""
        if self.config_text is None:
            return None
        run = f"peftlab run {_shell_quote(str(self.path / CONFIG_FILE))}"
        return f"{self.launcher} -m {run}" if self.launcher else run


@dataclass
class Row:
    """One result in the report, with the folder it came from."""

    result: RunResult
    run: RunDir
    path: Path
    #: the name shown in tables and plots (prefixed by the run folder when several are compared)
    label: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.result.method == BASELINE_METHOD

    @cached_property
    def predictions(self) -> Predictions | None:
        """The per-example answers beside results.json (read once), for the paired tests; None
        for a row that is not ok or has none (older peftlab, other writers) or an unreadable file."""
        path = self.path.parent / PREDICTIONS_FILE
        if self.result.status != "ok" or not path.is_file():
            return None
        try:
            return read_predictions(path)
        except PeftlabError:
            return None

    @cached_property
    def calibration(self) -> Calibration | None:
        """NLL, Brier and ECE from the row's probabilities; None where it has none (shown as "-")."""
        return calibration_of(self.predictions)


def reproduce_note(run: RunDir) -> str:
    """What the reader must know to rerun the command: overrides are baked in; where to stand."""
    note = "config.yaml is the resolved config (overrides applied); timings and memory depend on the hardware."
    out = run.config.get("output_dir")
    if isinstance(out, str) and not Path(out).is_absolute():
        note += f" Its output_dir ({out}) is relative: run it from the folder the original run started in."
    return note


def _shell_quote(s: str) -> str:
    return shlex.quote(s)


def _find_config(path: Path) -> Path | None:
    """The run folder's config: here, or one level up for a single method folder."""
    for d in (path, path.parent) if (path / RESULTS_FILE).is_file() else (path,):
        if (d / CONFIG_FILE).is_file():
            return d / CONFIG_FILE
    return None


def load_run_dir(path: Path) -> tuple[RunDir, list[Path]]:
    """The run folder and its result files, in the order the config lists the methods."""
    if not path.exists():
        raise PeftlabError(f"run folder not found: {path}")
    if path.is_file():
        if path.name != RESULTS_FILE:
            raise PeftlabError(f"{path}: expected a run folder or a {RESULTS_FILE}")
        path = path.parent
    files = sorted(p for p in path.rglob(RESULTS_FILE) if not (_SKIP_DIRS & set(p.relative_to(path).parts[:-1])))
    if not files:
        raise PeftlabError(f"{path}: no {RESULTS_FILE} found (not a peftlab run folder)")
    run = RunDir(path=path)
    cfg_path = _find_config(path)
    if cfg_path is not None:
        run.path = cfg_path.parent
        run.config_text = cfg_path.read_text(encoding="utf-8", errors="replace")
        try:
            loaded = yaml.safe_load(run.config_text)
        except yaml.YAMLError:
            loaded = None
        run.config = loaded if isinstance(loaded, dict) else {}
        run.original, run.launcher = _original_command(run.path / COMMAND_FILE)
    return run, _order(files, run)


def _original_command(path: Path) -> tuple[tuple[str, str] | None, str | None]:
    """The recorded command line (with its launcher's prefix) and that prefix alone; None for what
    is absent or unreadable (it is a courtesy, not data)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        argv = [str(a) for a in data["argv"]]
        launcher = launch_prefix(data["launcher"]) if isinstance(data.get("launcher"), dict) else None
        if launcher and argv[:1] == ["peftlab"]:
            argv = ["-m", *argv]
        line = f"{launcher} {shlex.join(argv)}" if launcher else shlex.join(argv)
        return (line, str(data.get("cwd", ""))), launcher
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None


def _config_labels(config: dict[str, Any]) -> list[str]:
    labels = []
    for m in config.get("methods") or []:
        if isinstance(m, dict):
            labels.append(str(m.get("name") or m.get("method")))
        elif isinstance(m, str):
            labels.append(m)
    return labels


def _order(files: list[Path], run: RunDir) -> list[Path]:
    """Baseline first, then the config's method order, then anything else by path."""
    order = {name: i for i, name in enumerate([BASELINE_METHOD] + _config_labels(run.config))}
    return sorted(files, key=lambda p: (order.get(p.parent.name, len(order)), str(p)))


def collect(paths: list[Path]) -> list[Row]:
    """Every result below ``paths``; row labels carry the folder name when several are given."""
    if not paths:
        raise PeftlabError("give at least one run folder")
    rows: list[Row] = []
    for path in paths:
        run, files = load_run_dir(path)
        rows += [Row(result=read_result(f), run=run, path=f) for f in files]
    several = len({r.run.path.resolve() for r in rows}) > 1
    for r in rows:
        r.label = f"{r.run.label}/{r.result.name}" if several else r.result.name
    _seed_labels(rows)
    _dedupe_labels(rows)
    return rows


def _seed_labels(rows: list[Row]) -> None:
    """A row name run with several seeds (``seeds: [0, 1, 2]``) gets its seed in the label."""
    seeds: dict[tuple[Path, str], set[int]] = {}
    for r in rows:
        seeds.setdefault((r.run.path.resolve(), r.result.name), set()).add(r.result.seed)
    for r in rows:
        if len(seeds[(r.run.path.resolve(), r.result.name)]) > 1:
            r.label = f"{r.label} (seed {r.result.seed})"


def _dedupe_labels(rows: list[Row]) -> None:
    """Two rows must never share a label (plots and anchors are keyed by it)."""
    seen: dict[str, int] = {}
    for r in rows:
        n = seen.get(r.label, 0)
        seen[r.label] = n + 1
        if n:
            r.label = f"{r.label} ({n + 1})"


def group_by_task(rows: list[Row]) -> dict[str, list[Row]]:
    """Rows of different tasks never share a table: accuracies are not comparable across tasks."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.result.task, []).append(r)
    return groups


def run_dirs(rows: list[Row]) -> list[RunDir]:
    out: dict[Path, RunDir] = {}
    for r in rows:
        out.setdefault(r.run.path.resolve(), r.run)
    return list(out.values())
