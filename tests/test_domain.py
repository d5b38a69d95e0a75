"""pneumo.domain: the guard on Gaussian features flags what it should, at the rate it promises."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.domain import domain_check, fit_domain_guard

DIM = 12


def _gaussian(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.5, 3.0, DIM)  # anisotropic, so the Mahalanobis part matters
    return rng.standard_normal((n, DIM)) * scales + 1.0 + shift * scales


@pytest.fixture(scope="module")
def guard():
    return fit_domain_guard(_gaussian(3000, 0), _gaussian(2000, 1), components=6, quantile=0.9)


def test_guard_metadata(guard):
    g, arrays = guard
    assert g.components == 6 and g.quantile == 0.9
    assert g.validation_flag_rate == pytest.approx(0.1, abs=0.01)
    assert arrays["domain_components"].shape == (6, DIM)
    assert np.all(np.diff(arrays["domain_val_distances"]) >= 0)  # sorted, for the score look-up
    assert all(a.dtype == np.float32 for a in arrays.values())


def test_fresh_in_distribution_flag_rate_matches_quantile(guard):
    g, arrays = guard
    in_domain, score = domain_check(_gaussian(4000, 2), g, arrays)
    assert 1 - in_domain.mean() == pytest.approx(1 - g.quantile, abs=0.03)
    assert np.median(score) == pytest.approx(0.5, abs=0.1)  # a typical image sits mid-way in the validation set


def test_far_features_are_all_flagged_with_score_zero(guard):
    g, arrays = guard
    in_domain, score = domain_check(_gaussian(200, 3, shift=10.0), g, arrays)
    assert not in_domain.any()
    assert np.all(score == pytest.approx(0.0, abs=1e-3))


def test_score_in_unit_interval_and_monotone_in_distance(guard):
    g, arrays = guard
    rng = np.random.default_rng(4)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    steps = np.linspace(0, 60, 121)
    # start at the training mean in raw feature space (the guard standardises internally)
    feats = arrays["domain_feature_mean"].astype(np.float64) + steps[:, None] * direction
    in_domain, score = domain_check(feats, g, arrays)
    assert np.all((score >= 0) & (score <= 1))
    assert np.all(np.diff(score) <= 0)  # further out, never more typical
    assert score[0] > 0.95 and score[-1] == 0.0
    assert in_domain[0] and not in_domain[-1]
    # once out, always out along a ray
    assert np.all(np.diff(in_domain.astype(int)) <= 0)


def test_guard_with_few_samples_and_high_dimension():
    # 20 training vectors in 64-D: the components are capped at n - 1, and nothing divides by zero.
    rng = np.random.default_rng(5)
    g, arrays = fit_domain_guard(rng.standard_normal((20, 64)), rng.standard_normal((10, 64)), components=32)
    assert g.components == 19
    in_domain, score = domain_check(rng.standard_normal((5, 64)), g, arrays)
    assert np.isfinite(score).all() and in_domain.dtype == bool
