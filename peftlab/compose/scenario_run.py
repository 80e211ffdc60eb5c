"""Run a composition scenario: train its modules (the usual runner), compose, choose lambda on
validation, score on test, and write one comparison plus ``scenario.md``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from peftlab.compose import scenario_data as sd
from peftlab.compose.core import compose, load_pool
from peftlab.compose.scenarios import SCENARIOS, Module, Plan, ScenarioConfig
from peftlab.compose.sweep import Validation, parse_sweep, run_sweep, score, write_sweep
from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import atomic_write_text
from peftlab.results import RunResult, read_result
from peftlab.config import validate_raw
from peftlab.report.compare import write_comparison
from peftlab.runners.experiment import run_experiment


def _module_config(cfg: ScenarioConfig, mod: Module, out: Path) -> dict[str, Any]:
    data = out / "data"
    train_csv = sd.write_csv(mod.train, mod.labels, data / f"{mod.name}_train.csv")
    val_csv = sd.write_csv(mod.val, mod.labels, data / f"{mod.name}_val.csv")
    return {
        "name": mod.name, "backbone": cfg.backbone, "baseline": False,
        "task": {"source": "csv", "train_file": str(train_csv), "eval_file": str(val_csv), "label_names": mod.labels},
        "methods": [{**cfg.lora, "method": "lora", "name": mod.name}],
        "train": cfg.train.model_dump(mode="json"),
        "output_dir": str(out / "modules" / mod.name),
    }


def train_modules(cfg: ScenarioConfig, plan: Plan, out: Path, reuse: bool, quiet: bool) -> dict[str, RunResult]:
    """Train every module as an ordinary one-method peftlab run (reused when asked and present)."""
    done: dict[str, RunResult] = {}
    for mod in plan.modules:
        raw = _module_config(cfg, mod, out)
        result_path = out / "modules" / mod.name / mod.name / "results.json"
        if reuse and result_path.is_file() and read_result(result_path).status == "ok":
            done[mod.name] = read_result(result_path)
            continue
        print(f"== module {mod.name}: {len(mod.train)} train / {len(mod.val)} validation", file=sys.stderr, flush=True)
        [result] = run_experiment(validate_raw(raw), quiet=quiet)
        if result.status != "ok":
            raise PeftlabError(f"module {mod.name} failed to train: {result.error}")
        done[mod.name] = result
    return done


def score_rows(cfg: ScenarioConfig, plan: Plan, out: Path, quiet: bool) -> list[RunResult]:
    """Each row on the test split; a row with ``lambda`` gets it chosen on validation first."""
    pool = load_pool({m.name: str(out / "modules" / m.name / m.name) for m in plan.modules})
    max_len = cfg.train.max_length
    val = Validation("validation", plan.val, plan.labels, max_len, cfg.train.eval_batch_size)
    test = Validation(f"{cfg.task} test", plan.test, plan.labels, max_len, cfg.train.eval_batch_size)
    var, values = parse_sweep(cfg.sweep)
    rows = []
    for row in plan.rows:
        variables: dict[str, float] = {}
        val_scores: dict[str, Any] = {}
        if row.swept:
            swept, best = run_sweep(row.expression.replace("lambda", var), pool, var, values, val,
                                    row.mode, None, row.head, quiet=quiet)
            write_sweep(swept, var, best, row.expression, out / "sweeps" / _slug(row.label))
            variables = {var: values[best]}
            val_scores = {"accuracy": swept[best].accuracy, "macro_f1": swept[best].macro_f1}
        composed, record = compose(row.expression.replace("lambda", var), pool, row.mode, None, row.head, variables)
        r = score(composed, {**record, "validation": val_scores}, test, row.label)
        rows.append(r)
        print(f"{row.label}: test accuracy {r.accuracy:.4f} macro-F1 {r.macro_f1:.4f} {variables or ''}",
              file=sys.stderr, flush=True)
    return rows


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def report(cfg: ScenarioConfig, plan: Plan, modules: dict[str, RunResult], rows: list[RunResult],
           wall_s: float, command: str) -> str:
    """scenario.md: what was trained, and every row with its chosen lambda."""
    lines = [f"# Composition scenario: {cfg.scenario} ({cfg.name})", "", f"Reproduce: `{command}`", "",
             plan.note, "", "## Modules (LoRA, each an ordinary peftlab run)", "",
             "| module | train | validation acc | train s | flags |", "|---|---|---|---|---|"]
    for name, r in modules.items():
        train_s = f"{r.timing.train_s:.0f}" if r.timing else ""
        lines.append(f"| {name} | {r.n_train} | {r.accuracy:.4f} | {train_s} | {' '.join(r.flags)} |")
    lines += ["", f"## Rows on the test split ({len(plan.test)} examples; lambda chosen on {len(plan.val)} validation examples)", "",
              "| row | expression | mode | head | lambda | val acc | test acc | test macro-F1 |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.method_params
        lam = ", ".join(f"{v:g}" for v in p["variables"].values())
        va = p["validation"].get("accuracy")
        lines.append(f"| {r.name} | `{p['expression']}` | {p['mode']} | {p['head']} | {lam} | "
                     f"{'' if va is None else f'{va:.4f}'} | {r.accuracy:.4f} | {r.macro_f1:.4f} |")
    lines += ["", f"Wall time: {wall_s:.0f} s. Sweeps (tables and plots) in `sweeps/`; every row's RunResult in `rows/`.", ""]
    return "\n".join(lines)


def run_scenario(cfg: ScenarioConfig, reuse: bool = False, quiet: bool = True, command: str = "") -> str:
    import torch

    t0 = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    out = Path(cfg.output_dir)
    plan = SCENARIOS.get(cfg.scenario)(cfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "scenario.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    modules = train_modules(cfg, plan, out, reuse, quiet)
    rows = score_rows(cfg, plan, out, quiet)
    for r in rows:
        r.write(out / "rows" / _slug(r.name))
    write_comparison(rows, out)
    md = report(cfg, plan, modules, rows, time.perf_counter() - t0, command)
    atomic_write_text(out / "scenario.md", md)
    return md
