"""Linear CKA (peftlab.estimate.drift): the properties the comparison column relies on."""

from __future__ import annotations

import numpy as np
import pytest

from peftlab.estimate.drift import linear_cka


def test_cka_of_features_with_themselves_is_one() -> None:
    x = np.random.default_rng(0).normal(size=(64, 16))
    assert linear_cka(x, x) == pytest.approx(1.0)


def test_cka_invariant_to_rotation_and_isotropic_scaling() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x, 3.5 * x @ q) == pytest.approx(1.0)
    y = rng.normal(size=(80, 7))
    assert linear_cka(x @ q * 0.1, y) == pytest.approx(linear_cka(x, y))


def test_cka_of_independent_features_is_near_zero() -> None:
    rng = np.random.default_rng(2)
    assert linear_cka(rng.normal(size=(4000, 8)), rng.normal(size=(4000, 8))) < 0.02


def test_cka_rejects_mismatched_inputs_and_handles_constant_features() -> None:
    with pytest.raises(ValueError):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))
    assert linear_cka(np.ones((10, 3)), np.random.default_rng(3).normal(size=(10, 3))) == 0.0
