"""comparison.md and comparison.csv: one row per method plus the majority-class baseline."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from peftlab.infra.errors import PeftlabError
from peftlab.infra.io import atomic_write_text
from peftlab.report.calibration import Calibration, calibration_of
from peftlab.report.facts import data_notes, dropped_note, row_flags
from peftlab.report.drift import drift_cka, lm_loss, lm_loss_delta
from peftlab.report.fairness import search_summary
from peftlab.report.paired import NO_VERDICT, Paired, accuracy_interval, interval_text, note, paired_verdicts, pooled_verdicts
from peftlab.report.seeds import distinct_seeds, seed_dir, summary_csv, summary_markdown
from peftlab.results import PREDICTIONS_FILE, Predictions, RunResult, read_predictions
from peftlab.infra.threads import contended_lines

COLUMNS = [
    "method", "kind", "status", "accuracy", "macro_f1", "trainable", "total", "pct_trainable",
    "derived_trainable", "params_check", "train_s", "peak_mem_mb", "train_ex_per_s",
    "eval_ex_per_s", "adapter_mb", "flags", "accuracy_std", "macro_f1_std", "backbone",
    # the accuracy's 95% Wilson interval, and the paired test against the best row (peftlab.report.paired)
    "accuracy_ci_low", "accuracy_ci_high", "vs_best", "vs_best_diff", "vs_best_diff_low", "vs_best_diff_high",
    "vs_best_p",
    # calibration from predictions.jsonl (peftlab.report.calibration); *_uncalibrated: an in-context
    # row's figures before contextual calibration
    "nll", "brier", "ece", "ece_adaptive", "nll_uncalibrated", "brier_uncalibrated", "ece_uncalibrated",
    # how far the row moved its backbone (peftlab.runners.drift): linear CKA of pooled features to the base's
    "drift_cka",
    # a causal-LM row's loss on the shipped reference text after minus before adapting (forgetting)
    "lm_loss_base", "lm_loss_adapted", "lm_loss_delta",
]


DRIFT_NOTE = ("CKA to base: linear CKA of the adapted model's mean-pooled last hidden states to the base "
              "model's on up to 512 eval inputs, how much the method changed the backbone (1 = unchanged, "
              "lower = moved further); - = not measured. LM loss Δ: a causal-LM row's mean token NLL on peftlab's "
              "shipped reference text after adapting minus before (0 = unchanged, > 0 = worse at ordinary text).")


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def row(r: RunResult, paired: Paired | None = None, cal: Calibration | None = None) -> dict[str, str]:
    """One CSV row; ``paired``: the row against the best row (None: not computed, shown as "-");
    ``cal``: its calibration figures (None: no probabilities, blank)."""
    p, t = r.params, r.timing
    ci = accuracy_interval(r)
    v = paired or Paired(NO_VERDICT)
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
        "flags": " ".join(r.flags + [m for m in row_flags(r) if m not in r.flags]) if r.status == "ok" else f"{r.status}: {r.error or ''}",
        "accuracy_std": _fmt(r.accuracy_std, ".4f"),
        "macro_f1_std": _fmt(r.macro_f1_std, ".4f"),
        "backbone": r.backbone,
        "accuracy_ci_low": "" if ci is None else f"{ci[0]:.4f}",
        "accuracy_ci_high": "" if ci is None else f"{ci[1]:.4f}",
        "vs_best": v.verdict, "vs_best_diff": _fmt(v.diff, ".4f"), "vs_best_diff_low": _fmt(v.low, ".4f"),
        "vs_best_diff_high": _fmt(v.high, ".4f"), "vs_best_p": _fmt(v.p, ".4g"),
        **calibration_cells(cal),
        "drift_cka": _fmt(drift_cka(r), ".4f"),
        "lm_loss_base": _fmt(lm_loss(r, "base"), ".4f"), "lm_loss_adapted": _fmt(lm_loss(r, "adapted"), ".4f"),
        "lm_loss_delta": _fmt(lm_loss_delta(r), "+.4f"),
    }


def calibration_cells(cal: Calibration | None) -> dict[str, str]:
    """The calibration columns of one row: blank without probabilities, *_uncalibrated blank
    unless the row stored its probabilities before contextual calibration."""
    before = None if cal is None else cal.before
    return {"nll": _fmt(cal and cal.nll, ".4f"), "brier": _fmt(cal and cal.brier, ".4f"),
            "ece": _fmt(cal and cal.ece, ".4f"), "ece_adaptive": _fmt(cal and cal.adaptive_ece, ".4f"),
            "nll_uncalibrated": _fmt(before and before.nll, ".4f"), "brier_uncalibrated": _fmt(before and before.brier, ".4f"),
            "ece_uncalibrated": _fmt(before and before.ece, ".4f")}


def _shown(cal: Calibration | None, attr: str) -> str:
    """A calibration cell of comparison.md: "-" without probabilities, the value before calibration beside."""
    if cal is None:
        return "-"
    before = "" if cal.before is None else f" (before {getattr(cal.before, attr):.3f})"
    return f"{getattr(cal, attr):.3f}{before}"


def row_predictions(results: list[RunResult], out: Path | None) -> list[Predictions | None]:
    """Each ok row's predictions.jsonl in the run folder ``out`` (``out/seed-N/METHOD`` for several
    seeds); None where absent or unreadable (older results, rows other runners wrote): that row
    then says "-" rather than a guess."""
    if out is None:
        return [None] * len(results)
    multi = len(distinct_seeds(results)) > 1
    found: list[Predictions | None] = []
    for r in results:
        path = (seed_dir(out, r.seed) if multi else out) / r.name / PREDICTIONS_FILE
        try:
            found.append(read_predictions(path) if r.status == "ok" and path.is_file() else None)
        except PeftlabError:
            found.append(None)
    return found


def _with_spread(mean: str, std: str) -> str:
    """``0.6123 ± 0.0210`` for rows averaged over several seeds."""
    return f"{mean} ± {std}" if std else mean


def to_csv(results: list[RunResult], preds: list[Predictions | None] | None = None) -> str:
    """``preds``: each row's predictions (:func:`row_predictions`), for the paired columns."""
    preds = preds or [None] * len(results)
    verdicts = paired_verdicts(results, preds)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r, v, p in zip(results, verdicts, preds):
        w.writerow(row(r, v, calibration_of(p)))
    return buf.getvalue()


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(results: list[RunResult], preds: list[Predictions | None] | None = None) -> str:
    """``preds``: each row's predictions (:func:`row_predictions`), for the paired verdicts."""
    heads = ["method", "backbone", "accuracy", "accuracy 95% CI", "vs best (paired)", "macro-F1", "NLL", "Brier", "ECE",
             "CKA to base", "LM loss Δ", "trainable", "% trainable", "params check", "train s", "peak MB", "train ex/s", "eval ex/s", "adapter MB",
             "flags"]
    keys = ["method", "backbone", "accuracy", "accuracy_ci", "vs_best", "macro_f1", "nll", "brier", "ece", "drift_cka", "lm_loss_delta", "trainable",
            "pct_trainable", "params_check", "train_s", "peak_mem_mb", "train_ex_per_s", "eval_ex_per_s", "adapter_mb",
            "flags"]
    preds = preds or [None] * len(results)
    verdicts = paired_verdicts(results, preds)
    task = results[0].task if results else ""
    lines = [f"# Comparison: {task}", ""]
    multi = len(distinct_seeds(results)) > 1
    if results:
        r0 = results[-1]
        seeds = f"seeds {', '.join(map(str, distinct_seeds(results)))}" if multi else f"seed {r0.seed}"
        dropped = dropped_note(results)
        lines += [f"{r0.n_train} train / {r0.n_eval} eval examples, labels: {', '.join(r0.labels)}; {seeds}"
                  + (f"; {dropped}" if dropped else "") + ".", ""]
        lines += [f"**Needs attention:** {_md_cell(n)}." for n in data_notes(results)] + ([""] if data_notes(results) else [])
    if multi:  # one row per method over its seeds first, then every single run
        lines += summary_markdown(results, paired=pooled_verdicts(results, preds)) + ["## Every run", ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r, v, p in zip(results, verdicts, preds):
        cal = calibration_of(p)
        cells = row(r, v, cal)
        if r.status == "ok":
            cells["flags"] = " ".join(row_flags(r))  # the task's data flags are said once, above
            cells.update({k: _shown(cal, k) for k in ("nll", "brier", "ece")})
            cells["drift_cka"] = cells["drift_cka"] or "-"
            cells["lm_loss_delta"] = cells["lm_loss_delta"] or "-"
        cells["accuracy_ci"] = interval_text(accuracy_interval(r))
        cells["vs_best"] = v.text()
        cells["accuracy"] = _with_spread(cells["accuracy"], cells["accuracy_std"])
        cells["macro_f1"] = _with_spread(cells["macro_f1"], cells["macro_f1_std"])
        if multi:
            cells["method"] = f"{r.name} (seed {r.seed})"
        lines.append("| " + " | ".join(_md_cell(cells[k]) for k in keys) + " |")
    lines += ["", "params check: counted trainable and total parameters equal the closed-form formula "
              "(ok), differ (MISMATCH), or no formula for this architecture or method (blank: the generic peft row). "
              "Flags: collapsed = every eval prediction is one class; never predicts X = no eval example was predicted as X; nan_loss = training stopped on a "
              "non-finite loss; params_unchanged = trainable weights never moved; backbone_newly_initialised = "
              "backbone weights beyond the head were missing from the checkpoint (random); train_eval_overlap = "
              "some eval inputs also occur in training; prompt_shortened = some prompts exceeded the model's context and "
              "were shortened (demonstrations dropped, then the input's beginning cut). a ± b: mean and standard deviation over demonstration seeds. "
              "NLL, Brier, ECE: calibration of the row's probabilities (predictions.jsonl): mean -log p(gold), mean squared "
              "distance from the one-hot gold label, expected calibration error over 15 equal-width confidence bins "
              "(equal-mass ECE in comparison.csv); - = no probabilities; (before x) = before contextual calibration. "
              f"{DRIFT_NOTE}",
              "", note() + (" With several seeds, each run is compared with the best run of its seed." if multi else ""), ""]
    lines += search_summary(results)
    lines += contended_lines(results)
    for r in results:  # method-specific diagnostics, e.g. zero-shot's worst class and template search
        if r.details.get("report_lines"):
            lines += [f"## {r.name}", "", *r.details["report_lines"], ""]
    return "\n".join(lines)


def write_comparison(results: list[RunResult], out: Path) -> str:
    preds = row_predictions(results, out)
    md = to_markdown(results, preds)
    multi = len(distinct_seeds(results)) > 1  # several seeds: one row per method with mean and std
    atomic_write_text(out / "comparison.csv",
                      summary_csv(results, pooled_verdicts(results, preds), preds) if multi else to_csv(results, preds))
    atomic_write_text(out / "comparison.md", md)
    return md
