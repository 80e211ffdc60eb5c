"""Per-method report lines about the fairness of a row: the learning-rate search that chose its
value, the memory estimate next to the measured peak, and the guards' findings."""

from __future__ import annotations

from peftlab.results import RunResult
from peftlab.infra.eta import WARMUP_STEPS

MB = 2**20


def fairness_lines(r: RunResult) -> list[str]:
    """Plain-text sentences (rendered as paragraphs by the Markdown and HTML reports)."""
    d = r.details
    out = []
    search = d.get("lr_search")
    if isinstance(search, dict) and search.get("trials"):
        curve = ", ".join(f"{t['lr']:g} -> {t['score']:.4f}" for t in search["trials"])
        out.append(f"learning rate {search['chosen']:g} chosen by a search on {search['n_val']} held-out training "
                   f"examples ({search['budget_steps']} steps per trial, {search['cost_s']:.1f} s in all; "
                   f"{search['metric']}): {curve}")
    if r.class_weights:
        out.append("loss weighted by class (train.class_weight: balanced): "
                   + ", ".join(f"{n} {w:.3f}" for n, w in r.class_weights.items()))
    est = d.get("memory_estimate_bytes")

    if isinstance(est, (int, float)) and r.peak_memory_bytes:
        out.append(f"memory: estimated {est / MB:.0f} MB before the run, measured peak {r.peak_memory_bytes / MB:.0f} MB "
                   f"({r.memory_kind or 'unknown kind'}; ratio {est / r.peak_memory_bytes:.2f})")
    eta = d.get("train_time_estimate_s")
    if isinstance(eta, (int, float)) and r.timing is not None and r.timing.train_s:
        out.append(f"training time: estimated {eta:.1f} s from its first steady-state steps (after "
                   f"{WARMUP_STEPS} warm-up steps), took {r.timing.train_s:.1f} s")
    if d.get("newly_initialised_count"):
        out.append(f"WARNING: {d['newly_initialised_count']} backbone weights beyond the head were newly initialised "
                   f"(not in the checkpoint), e.g. {', '.join(d.get('newly_initialised', [])[:3])}")
    return out  # train_eval_overlap is the task's, said once above its table (facts.data_notes)


def search_summary(results: list[RunResult]) -> list[str]:
    """Comparison lines: which learning rate each searched method got, from which grid, at what cost."""
    lines = []
    for r in results:
        s = r.details.get("lr_search")
        if isinstance(s, dict) and s.get("trials"):
            grid = ", ".join(f"{t['lr']:g}" for t in s["trials"])
            lines.append(f"- {r.name} (seed {r.seed}): lr {s['chosen']:g} from [{grid}] by {s['metric']}; "
                         f"{len(s['trials'])} trials x {s['budget_steps']} steps on {s['n_train']} training examples, "
                         f"scored on {s['n_val']} held-out training examples; {s['cost_s']:.1f} s")
    if not lines:
        return []
    return ["Learning-rate search (trials on a held-out slice of the training split, never the eval split):",
            "", *lines, ""]
