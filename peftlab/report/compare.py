"""comparison.md and comparison.csv: one row per method plus the majority-class baseline."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from peftlab.io import atomic_write_text
from peftlab.report.facts import missing_classes
from peftlab.report.fairness import search_summary
from peftlab.report.seeds import distinct_seeds, summary_csv, summary_markdown
from peftlab.results import RunResult
from peftlab.threads import contended_lines

COLUMNS = [
    "method", "kind", "status", "accuracy", "macro_f1", "trainable", "total", "pct_trainable",
    "derived_trainable", "params_check", "train_s", "peak_mem_mb", "train_ex_per_s",
    "eval_ex_per_s", "adapter_mb", "flags", "accuracy_std", "macro_f1_std", "backbone",
]


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def row(r: RunResult) -> dict[str, str]:
    p, t = r.params, r.timing
    check = "" if p is None or p.agree is None else ("ok" if p.agree else "MISMATCH")
    return {
        "method": r.name,
        "kind": r.method,
        "status": r.status,
        "accuracy": _fmt(r.accuracy, ".4f"),
        "macro_f1": _fmt(r.macro_f1, ".4f"),
        "trainable": "" if p is None else str(p.trainable),
        "total": "" if p is None else str(p.total),
        "pct_trainable": "" if p is None else f"{p.percent_trainable:.3f}",
        "derived_trainable": "" if p is None or p.derived_trainable is None else str(p.derived_trainable),
        "params_check": check,
        "train_s": "" if t is None else f"{t.train_s:.1f}",
        "peak_mem_mb": _fmt(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20, ".0f"),
        "train_ex_per_s": "" if t is None else _fmt(t.train_examples_per_s, ".1f"),
        "eval_ex_per_s": "" if t is None else _fmt(t.eval_examples_per_s, ".1f"),
        "adapter_mb": _fmt(None if r.adapter_bytes is None else r.adapter_bytes / 2**20, ".3f"),
        "flags": " ".join(r.flags + [m for m in [missing_classes(r)] if m]) if r.status == "ok" else f"{r.status}: {r.error or ''}",
        "accuracy_std": _fmt(r.accuracy_std, ".4f"),
        "macro_f1_std": _fmt(r.macro_f1_std, ".4f"),
        "backbone": r.backbone,
    }


def _with_spread(mean: str, std: str) -> str:
    """``0.6123 ± 0.0210`` for rows averaged over several seeds."""
    return f"{mean} ± {std}" if std else mean


def to_csv(results: list[RunResult]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in results:
        w.writerow(row(r))
    return buf.getvalue()


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(results: list[RunResult]) -> str:
    heads = ["method", "backbone", "accuracy", "macro-F1", "trainable", "% trainable", "params check", "train s",
             "peak MB", "train ex/s", "eval ex/s", "adapter MB", "flags"]
    keys = ["method", "backbone", "accuracy", "macro_f1", "trainable", "pct_trainable", "params_check", "train_s",
            "peak_mem_mb", "train_ex_per_s", "eval_ex_per_s", "adapter_mb", "flags"]
    task = results[0].task if results else ""
    lines = [f"# Comparison: {task}", ""]
    multi = len(distinct_seeds(results)) > 1
    if results:
        r0 = results[-1]
        seeds = f"seeds {', '.join(map(str, distinct_seeds(results)))}" if multi else f"seed {r0.seed}"
        lines += [f"{r0.n_train} train / {r0.n_eval} eval examples, labels: {', '.join(r0.labels)}; {seeds}.", ""]
    if multi:  # one row per method over its seeds first, then every single run
        lines += summary_markdown(results) + ["## Every run", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in results:
        cells = row(r)
        cells["accuracy"] = _with_spread(cells["accuracy"], cells["accuracy_std"])
        cells["macro_f1"] = _with_spread(cells["macro_f1"], cells["macro_f1_std"])
        if multi:
            cells["method"] = f"{r.name} (seed {r.seed})"
        lines.append("| " + " | ".join(_md_cell(cells[k]) for k in keys) + " |")
    lines += ["", "params check: counted trainable and total parameters equal the closed-form formula "
              "(ok), differ (MISMATCH), or no formula for this architecture (blank). "
              "Flags: collapsed = every eval prediction is one class; never predicts X = no eval example was predicted as X; nan_loss = training stopped on a "
              "non-finite loss; params_unchanged = trainable weights never moved; backbone_newly_initialised = "
              "backbone weights beyond the head were missing from the checkpoint (random); train_eval_overlap = "
              "some eval inputs also occur in training; prompt_shortened = some prompts exceeded the model's context and "
              "were shortened (demonstrations dropped, then the input's beginning cut). a ± b: mean and standard deviation over demonstration seeds.", ""]
    lines += search_summary(results)
    lines += contended_lines(results)
    for r in results:  # method-specific diagnostics, e.g. zero-shot's worst class and template search
        if r.details.get("report_lines"):
            lines += [f"## {r.name}", "", *r.details["report_lines"], ""]
    return "\n".join(lines)


def write_comparison(results: list[RunResult], out: Path) -> str:
    md = to_markdown(results)
    multi = len(distinct_seeds(results)) > 1  # several seeds: one row per method with mean and std
    atomic_write_text(out / "comparison.csv", summary_csv(results) if multi else to_csv(results))
    atomic_write_text(out / "comparison.md", md)
    return md
