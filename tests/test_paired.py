"""Per-example predictions, paired significance between rows, and confidence intervals on accuracy
(issue 22 items 1, 2, 6): pure functions against textbook values and scipy, the predictions file's
round trip, and what the comparison shows."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from peftlab.infra.errors import PeftlabError
from peftlab.report.compare import to_csv, to_markdown
from peftlab.report.paired import (BEST, NO_VERDICT, SAME, WORSE, against_best, compare, mcnemar_exact,
                                   paired_bootstrap, paired_verdicts, pooled_verdicts, wilson_interval)
from peftlab.results import PREDICTIONS_FILE, Predictions, RunResult, read_predictions, write_predictions

LABELS = ["neg", "pos"]


def correctness(b: int, c: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two rows' 0/1 correctness with ``b`` examples only A got right and ``c`` only B."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    bb = [0] * b + [1] * c + [1] * both + [0] * neither
    return np.array(a, dtype=bool), np.array(bb, dtype=bool)


def preds_with(correct: np.ndarray, gold: np.ndarray | None = None) -> Predictions:
    """A single-pass row right exactly where ``correct`` says (binary labels)."""
    gold = np.zeros(len(correct), dtype=np.int64) if gold is None else gold
    pred = np.where(correct, gold, 1 - gold)
    return Predictions.of(LABELS, gold, [pred], [np.eye(2)[pred]])


# --- Wilson --------------------------------------------------------------------------------------

def test_wilson_interval_hand_computed():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    # z = 1.96 by hand: (p + z^2/2n) / (1 + z^2/n) +- z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    z, p, n = 1.959963984540054, 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)


def test_wilson_interval_stays_in_unit_range_and_narrows():
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 20)[1] > 0.1  # 0/20 is not "certainly 0"
    small, big = wilson_interval(8, 10), wilson_interval(800, 1000)
    assert big[1] - big[0] < small[1] - small[0]
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


# --- McNemar -------------------------------------------------------------------------------------

def test_mcnemar_textbook_cases():
    a, b = correctness(1, 9, both=30, neither=5)
    res = mcnemar_exact(a, b)
    assert (res.b, res.c) == (1, 9) and res.p == pytest.approx(0.0215, abs=5e-5)
    assert res.p == pytest.approx(22 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10
    assert mcnemar_exact(*correctness(4, 4, both=10)).p == 1.0
    assert mcnemar_exact(*correctness(0, 0, both=10, neither=3)).p == 1.0  # no disagreement at all
    assert mcnemar_exact(*correctness(9, 1)).p == res.p  # symmetric


@pytest.mark.parametrize("b,c", [(0, 6), (3, 11), (20, 31), (7, 7), (50, 2)])
def test_mcnemar_matches_scipy(b: int, c: int):
    res = mcnemar_exact(*correctness(b, c, both=12, neither=4))
    assert res.p == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_mcnemar_mid_p_is_smaller():
    a, b = correctness(1, 9)
    assert mcnemar_exact(a, b, mid_p=True).p == pytest.approx(22 / 1024 - 10 / 1024)


def test_mcnemar_needs_the_same_examples():
    with pytest.raises(ValueError):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))


# --- bootstrap -----------------------------------------------------------------------------------

def test_bootstrap_contains_the_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.6
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(a.mean() - b.mean())
    assert lo <= diff <= hi and lo < hi
    assert paired_bootstrap(a, b) == (diff, lo, hi)  # same seed, same interval
    assert paired_bootstrap(a, b, seed=7) != (diff, lo, hi)
    assert paired_bootstrap(a, b, level=0.99)[1] <= lo  # wider at 99%


def test_bootstrap_of_identical_predictions_is_zero():
    a = np.random.default_rng(2).random(50) < 0.5
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)


def test_bootstrap_matches_resampling_the_examples():
    """Counts over distinct differences are the same distribution as drawing example indices."""
    rng = np.random.default_rng(3)
    a, b = rng.random(300) < 0.7, rng.random(300) < 0.6
    d = a.astype(float) - b.astype(float)
    means = d[rng.integers(0, 300, size=(20000, 300))].mean(axis=1)
    _, lo, hi = paired_bootstrap(a, b, resamples=20000)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])), abs=0.01)


# --- verdicts ------------------------------------------------------------------------------------

def test_verdicts_against_the_best_row():
    worse_c, best_c = correctness(1, 12, both=40, neither=7)  # best right on 12 the other misses, 1 the other way
    rows = [preds_with(worse_c), preds_with(best_c), None]
    accs = [float(worse_c.mean()), float(best_c.mean()), 0.9]
    out = against_best(accs[:2] + [None], rows, [True, True, True])
    assert [v.verdict for v in out] == [WORSE, BEST, NO_VERDICT]
    assert out[0].diff == pytest.approx(worse_c.mean() - best_c.mean()) and out[0].high < 0
    assert out[0].p == pytest.approx(binomtest(1, 13, 0.5).pvalue)
    assert "worse (" in out[0].text() and "p=" in out[0].text()
    # b = 3, c = 4: not distinguishable, and the interval straddles 0
    a3, b4 = correctness(3, 4, both=50, neither=3)
    v = compare(preds_with(a3), preds_with(b4))
    assert v.verdict == SAME and v.low < 0 < v.high
    # the best row has no predictions: nobody can be judged against it (no silent second-best)
    assert [x.verdict for x in against_best([0.5, 0.9], [rows[0], None], [True, True])] == [NO_VERDICT] * 2


def test_rows_on_other_examples_get_no_verdict():
    a, b = correctness(1, 12, both=40, neither=7)
    other_gold = np.ones(len(b), dtype=np.int64)
    assert compare(preds_with(a), preds_with(b, gold=other_gold)).verdict == NO_VERDICT
    assert compare(preds_with(a[:-1]), preds_with(b)).verdict == NO_VERDICT


def test_several_demonstration_seeds_use_the_share_right():
    """A row scored under two seeds: per example the share of seeds right; judged by the interval."""
    gold = np.zeros(60, dtype=np.int64)
    best = preds_with(np.ones(60, bool))
    p1, p2 = np.zeros(60, dtype=np.int64), np.r_[np.ones(30), np.zeros(30)].astype(np.int64)
    two = Predictions.of(LABELS, gold, [p1, p2], [np.eye(2)[p1], np.eye(2)[p2]], seeds=[5, 6])
    idx, g, share = two.correct_per_example()
    assert share.tolist() == [0.5] * 30 + [1.0] * 30 and np.array_equal(idx, np.arange(60))
    v = compare(two, best)
    assert v.p is None and v.verdict == WORSE and v.diff == pytest.approx(-0.25)


def test_baseline_is_never_best_and_failed_rows_say_dash():
    a, b = correctness(0, 10, both=20)
    res = [RunResult(name="majority_class", method="majority_class", task="t", backbone="-", seed=0,
                     accuracy=0.99, n_eval=30),
           RunResult(name="x", method="lora", task="t", backbone="b", seed=0, accuracy=float(b.mean()), n_eval=30),
           RunResult(name="y", method="lora", task="t", backbone="b", seed=0, accuracy=float(a.mean()), n_eval=30),
           RunResult(name="z", method="lora", task="t", backbone="b", seed=0, status="failed")]
    out = paired_verdicts(res, [preds_with(a), preds_with(b), preds_with(a), None])
    assert [v.verdict for v in out] == [WORSE, BEST, WORSE, NO_VERDICT]  # 0.99 baseline: still not best


def test_pooled_verdicts_over_seeds():
    a, b = correctness(0, 15, both=30)
    res, preds = [], []
    for seed in (0, 1):
        for name, c in (("good", b), ("bad", a)):
            res.append(RunResult(name=name, method="lora", task="t", backbone="b", seed=seed, accuracy=float(c.mean()),
                                 n_eval=len(c)))
            preds.append(preds_with(c))
    out = pooled_verdicts(res, preds)
    assert out["good"].verdict == BEST and out["bad"].verdict == WORSE and out["bad"].p is None
    assert pooled_verdicts(res, preds[:-1] + [None])["bad"].verdict == NO_VERDICT


# --- predictions.jsonl ---------------------------------------------------------------------------

def test_predictions_round_trip(tmp_path: Path):
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(7, 3)).astype(np.float32)
    gold = rng.integers(0, 3, size=7)
    p = Predictions.from_logits(["a", "b", "c|d"], gold, logits)
    assert np.allclose(p.probs.sum(1), 1) and np.array_equal(p.pred, logits.argmax(1))
    path = write_predictions(tmp_path / "row", p)
    assert path == tmp_path / "row" / PREDICTIONS_FILE
    back = read_predictions(path)
    assert back.labels == p.labels and back.seed is None
    for field in ("index", "gold", "pred", "probs"):
        assert np.array_equal(getattr(back, field), getattr(p, field)), field
    assert len(path.read_text().splitlines()) == 7


def test_predictions_round_trip_several_seeds_and_unknown_probs(tmp_path: Path):
    gold = np.array([0, 1, 1])
    probs = [np.array([[0.9, 0.1], [np.nan, np.nan], [0.2, 0.8]]), np.eye(2)[[0, 0, 1]]]
    p = Predictions.of(LABELS, gold, [np.array([0, 0, 1]), np.array([0, 0, 1])], probs, seeds=[3, 4])
    back = read_predictions(write_predictions(tmp_path, p))
    assert back.seed.tolist() == [3, 3, 3, 4, 4, 4] and back.index.tolist() == [0, 1, 2] * 2
    assert np.array_equal(back.probs, p.probs, equal_nan=True) and np.isnan(back.probs[1]).all()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_predictions_follow_the_umask_and_leave_no_temp_file(tmp_path: Path, mask: int):
    old = os.umask(mask)
    try:
        path = write_predictions(tmp_path, preds_with(np.ones(4, bool)))
        write_predictions(tmp_path, preds_with(np.zeros(4, bool)))  # over an existing file
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [x.name for x in tmp_path.iterdir()] == [PREDICTIONS_FILE]
    assert read_predictions(path).pred.tolist() == [1, 1, 1, 1]


def test_malformed_predictions_are_one_line_errors(tmp_path: Path):
    (tmp_path / PREDICTIONS_FILE).write_text('{"index": 0}\n')
    with pytest.raises(PeftlabError, match="cannot read"):
        read_predictions(tmp_path / PREDICTIONS_FILE)


# --- the comparison ------------------------------------------------------------------------------

def test_comparison_shows_interval_and_paired_verdict():
    a, b = correctness(1, 12, both=40, neither=7)
    res = [RunResult(name="lo", method="lora", task="t", backbone="b", seed=0, accuracy=float(a.mean()), n_eval=60),
           RunResult(name="hi", method="full", task="t", backbone="b", seed=0, accuracy=float(b.mean()), n_eval=60),
           RunResult(name="old", method="ia3", task="t", backbone="b", seed=0, accuracy=0.5, n_eval=60)]
    md = to_markdown(res, [preds_with(a), preds_with(b), None])
    assert "accuracy 95% CI" in md and "vs best (paired)" in md
    lo, hi = wilson_interval(b.sum(), 60)
    assert f"[{lo:.3f}, {hi:.3f}]" in md
    line = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "| best |" in line["hi"] and "worse (" in line["lo"] and "| - |" in line["old"]
    import csv
    import io

    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(to_csv(res, [preds_with(a), preds_with(b), None])))}
    assert rows["lo"]["vs_best"] == WORSE and float(rows["lo"]["vs_best_diff_high"]) < 0
    assert float(rows["hi"]["accuracy_ci_low"]) == pytest.approx(lo, abs=1e-4) and rows["old"]["vs_best"] == NO_VERDICT
