"""report.html: one self-contained page (inline CSS and SVG, no script, no URL of any kind).

Every string from data or configs (labels, names, paths, errors, the config text) is escaped
here or in :mod:`peftlab.report.svg`; nothing user-provided is ever written raw.
"""

from __future__ import annotations

import datetime as _dt
import json
import zlib
from html import escape

from peftlab.results.metrics import SELECT_METRICS
from peftlab.report import facts
from peftlab.report.collect import Row, RunDir, group_by_task, reproduce_note, run_dirs
from peftlab.report.plots import confusion_svg, hbar_svg, line_svg, nothing_svg, pareto_svg, reliability_svg
from peftlab.report.fairness import fairness_lines
from peftlab.report.paired import pooled_verdicts
from peftlab.report.seeds import distinct_seeds, note, paired_note, select_metric, summary_rows
from peftlab.report.table import columns_for, legend, table

CSS = """
:root{--fg:#1b1f24;--mute:#5b6570;--line:#d8dee4;--best:#e6f4ea;--bad:#fde8e8;--warn:#fff4d6}
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);margin:0 auto;
max-width:1200px;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:21px;border-bottom:2px solid var(--line);padding-bottom:4px;
margin-top:36px}h3{font-size:16px;margin:22px 0 8px}h4{margin:14px 0 6px}
.mute{color:var(--mute)}nav a{margin-right:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid var(--line);padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f5f7;white-space:normal;vertical-align:bottom}td.txt,th.txt{text-align:left}td.wrap{white-space:normal;max-width:340px}
td.best{background:var(--best);font-weight:700}td.best::after{content:" \\2605";color:#2b8a3e}
tr.baseline td{color:var(--mute);font-style:italic}tr.failed td{background:var(--bad)}
.flag{display:inline-block;border-radius:8px;padding:0 6px;margin:1px;font-size:11px;background:var(--warn)}
.flag.failed,.flag.nan_loss,.flag.params_mismatch{background:var(--bad)}
.scroll{overflow-x:auto}.legend{font-size:12px;color:var(--mute);margin:4px 0 0 18px;padding:0}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.pareto figure.fig{max-width:556px}
figure.fig{margin:0;width:fit-content;max-width:100%;border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff}
figure.fig svg{display:block;max-width:100%;height:auto}
figcaption{font-size:12px;color:var(--mute);max-width:640px}
.method{border-top:1px dashed var(--line);margin-top:18px}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:6px;padding:8px;overflow-x:auto;
font-size:12px}code{font-size:12px}
.notes{background:var(--warn);border-radius:6px;padding:6px 12px}
@media print{body{max-width:none}figure.fig{break-inside:avoid}}
"""


def e(s: object) -> str:
    return escape(str(s), quote=True)


def anchor(prefix: str, label: str) -> str:
    """A safe id from any label (ids must not carry user text verbatim)."""
    return prefix + "-" + "".join(c if c.isalnum() else "-" for c in label.lower())[:60] + f"-{zlib.crc32(label.encode()):08x}"


def figure(kind: str, body: str, caption: str, method: str | None = None, data: dict[str, str] | None = None) -> str:
    """A captioned figure; ``data``: more ``data-*`` attributes (a Pareto plot's axis)."""
    attrs = f' data-kind="{e(kind)}"' + (f' data-method="{e(method)}"' if method is not None else "")
    attrs += "".join(f' data-{k}="{e(v)}"' for k, v in (data or {}).items())
    return f'<figure class="fig"{attrs}>{body}<figcaption>{e(caption)}</figcaption></figure>'


def _flags_html(text: str, status: str) -> str:
    if status != "ok":
        return f'<span class="flag failed">{e(text)}</span>'
    return "".join(f'<span class="flag {e(f)}">{e(f)}</span>' for f in text.split())


def comparison_table(rows: list[Row]) -> str:
    cols = columns_for(rows)
    head = "".join(f'<th class="{"" if c.better else "txt"}">{e(c.title)}</th>' for c in cols)
    body = []
    for row, cells in zip(rows, table(rows, cols)):
        tds = []
        for col, cell in zip(cols, cells):
            if col.key == "flags":
                tds.append(f'<td class="txt wrap">{_flags_html(cell.text, row.result.status)}</td>')
                continue
            cls = ("txt " if col.better is None else "") + ("best" if cell.best else "")
            tip = ' title="best in column"' if cell.best else ""
            tds.append(f'<td class="{cls.strip()}"{tip}>{e(cell.text)}</td>')
        kind = "baseline" if row.is_baseline else ("failed" if row.result.status != "ok" else "")
        body.append(f'<tr class="{kind}" data-method="{e(row.label)}">{"".join(tds)}</tr>')
    notes = "".join(f"<li>{e(line)}</li>" for line in legend(cols))
    return (f'<div class="scroll"><table class="comparison"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div><ul class="legend">{notes}</ul>')


def pareto_figure(rows: list[Row], task: str, axis: str, headline: bool) -> str:
    """Accuracy against one cost (facts.TRADEOFFS), with its frontier; two fit side by side."""
    t = facts.TRADEOFFS.get(axis)
    pts = [p for _, p in facts.pareto_points(rows, axis)]
    front = facts.frontier_labels(rows, axis)
    caption = (f"Accuracy against {t.name} (log scale); runs that cost nothing sit at 0. "
               f"Frontier (no other run is both cheaper and more accurate): {', '.join(front) or 'none'}.")
    missing = facts.unplotted_labels(rows, axis)
    if missing:
        caption += f" Not plotted (no accuracy or {t.name} recorded): {', '.join(missing)}."
    if headline:
        caption = f"Headline trade-off (peftlab report --pareto {axis}). " + caption
    body = pareto_svg(pts, facts.baseline_accuracy(rows), f"{task}: accuracy vs {t.name}", t.axis, t.tip, (540, 330))
    return figure("pareto", body, caption, data={"axis": axis, **({"headline": "1"} if headline else {})})


def pareto_section(rows: list[Row], task: str, headline: str = facts.DEFAULT_TRADEOFF) -> str:
    """Four trade-off plots, the headline one (``peftlab report --pareto``) first."""
    order = [headline] + [k for k in facts.TRADEOFF_ORDER if k != headline]
    return '<div class="figs pareto">' + "".join(pareto_figure(rows, task, k, k == headline) for k in order) + "</div>"


def cost_section(rows: list[Row]) -> str:
    kinds = facts.memory_kinds(rows)
    mem_note = f"peak memory as {', '.join(kinds)}" if kinds else "peak memory"
    colours = facts.row_colours(rows)
    return ('<div class="figs">'
            + figure("time", hbar_svg(facts.time_items(rows), "Train + eval time", "s", colours=colours),
                     "Time spent training and evaluating.")
            + figure("memory", hbar_svg(facts.memory_items(rows), "Peak memory", "MB", ".0f", colours),
                     f"{mem_note} (rss = whole process on CPU; cuda_max_allocated = tensors on the GPU).")
            + "</div>")


def method_section(row: Row) -> str:
    res = row.result
    what = ", ".join(x for x in ([] if res.name == res.method else [res.method]) + [res.backbone] if x and x != "-")
    parts = [f'<div class="method" id="{anchor("m", row.label)}"><h4>{e(row.label)} '
             + (f'<span class="mute">({e(what)})</span>' if what else "") + "</h4>"]
    if res.method_params:
        parts.append(f"<p class=\"mute\">hyperparameters: <code>{e(json.dumps(facts.effective_params(row), sort_keys=True))}</code></p>")
    if res.status != "ok":
        parts.append(f'<p class="notes">failed: {e(res.error or "no error recorded")}</p>')
    parts += [f'<p class="mute">{e(line)}</p>' for line in fairness_lines(res)]
    cal = row.calibration
    if cal is not None:
        parts.append(f'<p class="mute">{e(facts.calibration_text(cal))}</p>')
    figs = []
    losses, scores = facts.curve_series(row)
    if losses or scores:
        curves = (line_svg(losses, "loss", "epoch", "cross-entropy") if losses else "") + \
                 (line_svg(scores, "eval scores", "epoch", "score", 0.0, 1.0) if scores else "")
        figs.append(figure("curves", f'<div class="figs">{curves}</div>', "Per epoch: train and eval loss; eval accuracy and macro-F1.", row.label))
    elif not row.is_baseline and res.status == "ok":
        figs.append(figure("curves", nothing_svg("no per-epoch record (nothing trained by epochs)"), "No training curve.", row.label))
    if res.confusion_matrix:
        figs.append(figure("confusion", confusion_svg(res.labels, res.confusion_matrix, f"{row.label}: confusion matrix"),
                           "Rows: true label; columns: predicted; shade: share of the row.", row.label))
    f1 = facts.per_class_f1(row)
    if f1:
        figs.append(figure("per-class-f1", hbar_svg(f1, "F1 per class", "F1", ".3f"), "Per-class F1 on the eval set.", row.label))
    if cal is not None:
        bins = [(b.low, b.high, b.count, b.confidence, b.accuracy) for b in cal.bins]
        figs.append(figure("reliability", reliability_svg(bins, f"{row.label}: reliability"),
                           f"Accuracy per confidence bin (15 equal-width bins; empty bins not drawn) against the "
                           f"diagonal a calibrated row follows; shaded: the gap. ECE {cal.ece:.3f}.", row.label))
    elif res.status == "ok":
        figs.append(figure("reliability", nothing_svg("no probabilities recorded: no reliability diagram"),
                           "No reliability diagram.", row.label))
    parts.append(f'<div class="figs">{"".join(figs)}</div></div>')
    return "".join(parts)


def seed_section(rows: list[Row]) -> str:
    """Mean ± std per method when the rows hold several seeds of the same methods; else nothing."""
    results = [r.result for r in rows]
    if len(distinct_seeds(results)) <= 1:
        return ""
    metric = select_metric(results)
    paired = pooled_verdicts(results, [r.predictions for r in rows])
    heads = ["method", "seeds", "accuracy", "accuracy 95% CI", "macro-F1", f"vs best ({SELECT_METRICS[metric]})",
             "vs best (paired, accuracy)", "CKA to base", "LM loss Δ"]
    body = "".join(
        f"<tr><td>{e(x['method'])}</td><td>{e(x['seeds'])}</td>"
        f"<td>{e(x['accuracy_mean'])} ± {e(x['accuracy_std'])}</td>"
        f"<td>{e(_ci(x['accuracy_ci_low'], x['accuracy_ci_high']))}</td>"
        f"<td>{e(x['macro_f1_mean'])} ± {e(x['macro_f1_std'])}</td><td>{e(x['vs_best'])}</td>"
        f"<td>{e(paired[x['method']].text() if x['method'] in paired else '-')}</td>"
        f"<td>{e(_spread(x['drift_cka_mean'], x['drift_cka_std']))}</td>"
        f"<td>{e(_spread(x['lm_loss_delta_mean'], x['lm_loss_delta_std']))}</td></tr>"
        for x in summary_rows(results, paired))
    return (f"<h3>Mean ± std over seeds</h3><table><thead><tr>{''.join(f'<th>{h}</th>' for h in heads)}</tr></thead>"
            f"<tbody>{body}</tbody></table><p class=\"mute\">{e(note(metric))}</p>"
            f"<p class=\"mute\">{e(paired_note())}</p>")


def _spread(mean: str, std: str) -> str:
    """A forgetting cell of the seed table: mean ± std, "-" where some seed did not measure it."""
    return f"{mean} ± {std}" if mean else "-"


def _ci(low: str, high: str) -> str:
    return f"[{float(low):.3f}, {float(high):.3f}]" if low and high else ""


def task_section(i: int, task: str, rows: list[Row], pareto: str = facts.DEFAULT_TRADEOFF) -> str:
    meta = facts.task_summary(task, rows).describe()
    notes = facts.health_notes(rows)
    warn = (f'<div class="notes"><b>Needs attention:</b><ul>{"".join(f"<li>{e(n)}</li>" for n in notes)}</ul></div>'
            if notes else "")
    methods = "".join(method_section(r) for r in rows)
    return (f'<section class="task" id="task-{i}"><h2>Task: {e(task)}</h2>'
            f'<p class="mute">{e(meta)}</p>{warn}'
            f"<h3>Comparison</h3>{comparison_table(rows)}{seed_section(rows)}"
            f"<h3>Accuracy vs cost (Pareto)</h3>{pareto_section(rows, task, pareto)}"
            f"<h3>Time and memory</h3>{cost_section(rows)}"
            f"<h3>Per method</h3>{methods}</section>")


def command_block(run: RunDir) -> str:
    """The reproducing command, what the user originally typed, and the resolved config."""
    if not run.command:
        return '<p class="notes">No config.yaml next to these results: the command cannot be reconstructed.</p>'
    original = (f"<p>Originally started as <code>{e(run.original[0])}</code> in <code>{e(run.original[1])}</code>.</p>"
                if run.original else "")
    return (f"<p>Every number from this folder comes from:</p><pre><code>{e(run.command)}</code></pre>"
            f'<p class="mute">{e(reproduce_note(run))}</p>{original}'
            f"<details><summary>config.yaml</summary><pre><code>{e(run.config_text)}</code></pre></details>")


def reproduce_section(runs: list[RunDir], rows: list[Row]) -> str:
    parts = ['<section id="reproduce"><h2>Reproduce</h2>']
    for run in runs:
        env = "".join(f'<tr><th class="txt">{e(k)}</th><td class="txt wrap">{e(v)}</td></tr>'
                      for k, v in facts.environment_table(facts.rows_of(run, rows)))
        parts.append(f"<h3>{e(run.path)}</h3>{command_block(run)}"
                     f'<h4>Versions, seed and hardware</h4><table class="env">{env}</table>')
    parts.append("</section>")
    return "".join(parts)


def render_html(rows: list[Row], now: _dt.datetime | None = None, pareto: str = facts.DEFAULT_TRADEOFF) -> str:
    """``pareto``: the headline trade-off (facts.TRADEOFFS), drawn first and larger."""
    groups = group_by_task(rows)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    nav = "".join(f'<a href="#task-{i}">{e(t)}</a>' for i, t in enumerate(groups)) + '<a href="#reproduce">reproduce</a>'
    sections = "".join(task_section(i, t, rs, pareto) for i, (t, rs) in enumerate(groups.items()))
    title = "peftlab report: " + ", ".join(groups)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{e(title)}</h1><p class=\"mute\">{len(rows)} runs, {len(groups)} task(s); "
            f"generated {e(now.strftime('%Y-%m-%d %H:%M UTC'))}</p><nav>{nav}</nav></header>"
            f"{sections}{reproduce_section(run_dirs(rows), rows)}</body></html>\n")
