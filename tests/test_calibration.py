"""Calibration figures (NLL, Brier, ECE, adaptive ECE) against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftlab.report.calibration import (adaptive_ece, brier, calibration_from, calibration_of, ece, equal_mass_bins,
                                        nll, reliability_bins)
from peftlab.results import Predictions, read_predictions, write_predictions

# four examples, two classes: confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.7 (right)
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
GOLD = np.array([0, 0, 0, 1])


def test_nll_and_brier_by_hand():
    # -log of the gold label's probability: 0.9, 0.2, 0.6, 0.7
    assert nll(PROBS, GOLD) == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.6) + math.log(0.7)) / 4)
    # sum over classes of (p - onehot)^2: 2*0.1^2, 2*0.8^2, 2*0.4^2, 2*0.3^2
    assert brier(PROBS, GOLD) == pytest.approx((0.02 + 1.28 + 0.32 + 0.18) / 4)
    assert brier(np.eye(2)[GOLD], GOLD) == 0.0 and nll(np.eye(2)[GOLD], GOLD) == pytest.approx(0.0)
    # a zero probability on the gold label is clipped, not infinite
    assert math.isfinite(nll(np.array([[1.0, 0.0]]), np.array([1]))) and nll(np.array([[1.0, 0.0]]), np.array([1])) > 30


def test_ece_equal_width_by_hand():
    # 15 bins of width 1/15: 0.6 in bin 8 (0.533, 0.6], 0.7 in bin 10 (0.667, 0.733],
    # 0.8 in bin 11 (0.733, 0.8], 0.9 in bin 13 (0.867, 0.933]: one example per bin, so
    # ECE = mean |correct - confidence| = (0.1 + 0.8 + 0.4 + 0.3) / 4
    assert ece(PROBS, GOLD) == pytest.approx((0.1 + 0.8 + 0.4 + 0.3) / 4)
    # two bins: [0, 0.5] empty, (0.5, 1] holds all four: |3/4 - 0.75| = 0
    assert ece(PROBS, GOLD, n_bins=2) == pytest.approx(0.0)
    # three bins: (1/3, 2/3] holds 0.6 (right): |1 - 0.6| = 0.4; (2/3, 1] holds 0.9, 0.8, 0.7 with 2 of 3 right:
    # |2/3 - 0.8| = 0.1333; weighted: 1/4 * 0.4 + 3/4 * 0.1333 = 0.2
    assert ece(PROBS, GOLD, n_bins=3) == pytest.approx(0.2)
    bins = reliability_bins(PROBS, GOLD, 3)
    assert [b.count for b in bins] == [0, 1, 3] and bins[2].accuracy == pytest.approx(2 / 3)
    assert bins[2].confidence == pytest.approx(0.8)


def test_adaptive_ece_equal_mass_by_hand():
    # sorted confidences 0.6 (right), 0.7 (right), 0.8 (wrong), 0.9 (right); two bins of two:
    # {0.6, 0.7}: |1 - 0.65| = 0.35; {0.8, 0.9}: |0.5 - 0.85| = 0.35 -> 0.35
    assert adaptive_ece(PROBS, GOLD, n_bins=2) == pytest.approx(0.35)
    # with 15 bins and 4 examples, each example is its own bin: the same as equal-width here
    assert adaptive_ece(PROBS, GOLD) == pytest.approx(0.4)
    assert [b.count for b in equal_mass_bins(PROBS, GOLD, 2)] == [2, 2]
    assert adaptive_ece(PROBS, GOLD, n_bins=2) != ece(PROBS, GOLD, n_bins=2)  # the two binnings differ


def test_no_probabilities_no_figures_and_before_after_round_trip(tmp_path):
    with_nan = PROBS.copy()
    with_nan[1] = np.nan  # a reasoning row's query whose chains named no label
    assert calibration_from(with_nan, GOLD) is None and calibration_of(None) is None
    raw = np.array([[0.6, 0.4], [0.45, 0.55], [0.55, 0.45], [0.5, 0.5]])
    preds = Predictions.of(["a", "b"], GOLD, [PROBS.argmax(1)], [PROBS], raw_probs=[raw])
    write_predictions(tmp_path, preds)
    back = read_predictions(tmp_path / "predictions.jsonl")
    assert np.array_equal(back.raw_probs, raw) and np.array_equal(back.probs, PROBS)
    cal = calibration_of(back)
    assert cal.ece == pytest.approx(0.4) and cal.before is not None
    assert cal.before.brier == pytest.approx(brier(raw, GOLD)) and cal.before.nll == pytest.approx(nll(raw, GOLD))
    plain = Predictions.of(["a", "b"], GOLD, [PROBS.argmax(1)], [PROBS])
    write_predictions(tmp_path, plain)
    assert read_predictions(tmp_path / "predictions.jsonl").raw_probs is None
    assert "probs_uncalibrated" not in (tmp_path / "predictions.jsonl").read_text()
