"""Markdown lines for an image method's diagnostics (shown under the comparison table)."""

from __future__ import annotations

from typing import Any


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def per_class_summary(per_class: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean per-class recall (balanced accuracy) and the worst class by F1."""
    recalls = [v["recall"] for v in per_class.values()]
    worst = min(per_class, key=lambda c: per_class[c]["f1-score"])
    return {"mean_per_class_recall": sum(recalls) / len(recalls), "worst_class": worst,
            "worst_class_f1": per_class[worst]["f1-score"]}


def report_lines(details: dict[str, Any]) -> list[str]:
    lines = [f"- mean per-class recall {_pct(details['mean_per_class_recall'])}; worst class by F1: "
             f"**{details['worst_class']}** (F1 {details['worst_class_f1']:.3f})"]
    if details.get("per_template_accuracy"):
        lines.append(f"- template ensemble ({len(details['templates'])} templates): accuracy "
                     f"{_pct(details['ensemble_accuracy'])}; each template alone:")
        lines += [f"  - `{t}`: {_pct(a)}" for t, a in details["per_template_accuracy"].items()]
    if details.get("class_prompts"):
        lines.append("- per-class prompt overrides: " + "; ".join(
            f"{c}: {', '.join(f'`{p}`' for p in ps)}" for c, ps in details["class_prompts"].items()))
    search = details.get("search")
    if search:
        lines.append(f"- template search for the worst class(es), chosen on the {search['chosen_on']}:")
        for item in search["classes"]:
            c = item["class"]
            b, a = search["before"]["per_class"][c], search["after"]["per_class"][c]
            chosen = f"`{item['template']}`" if item["template"] else "no candidate beat the current prompts"
            lines.append(f"  - {c}: {chosen}; eval F1 {b['f1-score']:.3f} -> {a['f1-score']:.3f}, "
                         f"recall {b['recall']:.3f} -> {a['recall']:.3f}")
        lines.append(f"  - whole set: accuracy {_pct(search['before']['accuracy'])} -> {_pct(search['after']['accuracy'])}, "
                     f"macro-F1 {search['before']['macro_f1']:.4f} -> {search['after']['macro_f1']:.4f}")
    return lines
