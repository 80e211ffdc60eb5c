"""report.md: the same report as text (tables instead of figures), for papers, PRs and terminals.

Markdown renders inline HTML, so text from data or configs is HTML-escaped too (a label named
``<script>`` must show as text in every viewer), and code blocks get a fence longer than any
backtick run inside them.
"""

from __future__ import annotations

import json
import re
from html import escape

from peftlab.report import facts
from peftlab.report.collect import Row, RunDir, group_by_task, reproduce_note, run_dirs
from peftlab.report.fairness import fairness_lines
from peftlab.report.paired import pooled_verdicts
from peftlab.report.seeds import distinct_seeds, summary_markdown
from peftlab.report.table import columns_for, legend, table


def cell(s: object) -> str:
    """Safe inside a Markdown table cell: escaped HTML, no pipes, no line breaks."""
    return escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def fenced(body: str, lang: str = "") -> str:
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body.rstrip()}\n{fence}"


def md_table(heads: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + ["| " + " | ".join(r) + " |" for r in rows]


def comparison(rows: list[Row]) -> list[str]:
    cols = columns_for(rows)
    cells = [[f"**{cell(c.text)}**" if c.best else cell(c.text) for c in r] for r in table(rows, cols)]
    return md_table([cell(c.title) for c in cols], cells) + [""] + [f"- {cell(x)}" for x in legend(cols)] + \
        ["- **bold** = best in column."]


def heading(row: Row) -> str:
    """The row's label, with its method when the label does not already say it."""
    method = row.result.method
    return cell(row.label) if row.result.name == method else f"{cell(row.label)} ({cell(method)})"


def method_block(row: Row) -> list[str]:
    res = row.result
    out = [f"### {heading(row)}", ""]
    if res.method_params:
        out += [f"hyperparameters: {cell(json.dumps(facts.effective_params(row), sort_keys=True))}", ""]
    if res.status != "ok":
        out += [f"**failed**: {cell(res.error or 'no error recorded')}", ""]
    for line in fairness_lines(res):
        out += [cell(line), ""]
    if row.calibration is not None:
        out += [cell(facts.calibration_text(row.calibration)), ""]
    if res.epochs:
        out += md_table(["epoch", "train loss", "eval loss", "accuracy", "macro-F1"],
                        [[str(e.epoch)] + ["" if v is None else f"{v:.4f}" for v in
                                           (e.train_loss, e.eval_loss, e.accuracy, e.macro_f1)] for e in res.epochs]) + [""]
    if res.confusion_matrix and len(res.labels) == len(res.confusion_matrix):
        heads = ["true \\ predicted"] + [cell(n) for n in res.labels]
        out += md_table(heads, [[cell(n)] + [str(v) for v in r] for n, r in zip(res.labels, res.confusion_matrix)]) + [""]
    f1 = facts.per_class_f1(row)
    if f1:
        out += md_table(["class", "F1"], [[cell(n), f"{v:.3f}"] for n, v in f1]) + [""]
    return out


def task_block(task: str, rows: list[Row], pareto: str = facts.DEFAULT_TRADEOFF) -> list[str]:
    out = [f"## Task: {cell(task)}", "", cell(facts.task_summary(task, rows).describe()) + ".", ""]
    notes = facts.health_notes(rows)
    if notes:
        out += ["**Needs attention:**", ""] + [f"- {cell(n)}" for n in notes] + [""]
    out += comparison(rows) + [""]
    if len(distinct_seeds([r.result for r in rows])) > 1:
        results = [r.result for r in rows]
        out += summary_markdown(results, level=3, paired=pooled_verdicts(results, [r.predictions for r in rows]))
    front = facts.frontier_labels(rows, pareto)
    others = ", ".join(facts.TRADEOFFS.get(k).name for k in facts.TRADEOFF_ORDER if k != pareto)
    out += [f"Pareto frontier (accuracy vs {facts.TRADEOFFS.get(pareto).name}): {cell(', '.join(front) or 'none')}. "
            f"Figures: see report.html (also against {others}).", ""]
    for r in rows:
        out += method_block(r)
    return out


def reproduce_block(runs: list[RunDir], rows: list[Row]) -> list[str]:
    out = ["## Reproduce", ""]
    for run in runs:
        out += [f"### {cell(run.path)}", ""]
        if run.command:
            out += ["Every number from this folder comes from:", "", fenced(run.command, "bash"), "",
                    cell(reproduce_note(run)), ""]
            if run.original:
                out += [f"Originally started as (in {cell(run.original[1])}):", "", fenced(run.original[0], "bash"), ""]
            out += [fenced(run.config_text or "", "yaml"), ""]
        else:
            out += ["No config.yaml next to these results: the command cannot be reconstructed.", ""]
        out += md_table(["", "value"], [[cell(k), cell(v)] for k, v in facts.environment_table(facts.rows_of(run, rows))])
        out.append("")
    return out


def render_md(rows: list[Row], pareto: str = facts.DEFAULT_TRADEOFF) -> str:
    """``pareto``: the cost (facts.TRADEOFFS) whose Pareto frontier the text names."""
    groups = group_by_task(rows)
    lines = [f"# peftlab report: {cell(', '.join(groups))}", "",
             f"{len(rows)} runs, {len(groups)} task(s).", ""]
    for task, rs in groups.items():
        lines += task_block(task, rs, pareto)
    lines += reproduce_block(run_dirs(rows), rows)
    return "\n".join(lines).rstrip() + "\n"
