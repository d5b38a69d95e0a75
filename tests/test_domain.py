"""pneumo.domain: the guards on Gaussian features flag what they should, at the rate they promise; the two answers;
the arrays a model file carries are checked."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pneumo.domain import (
    DOMAINS,
    NOT_PEDIATRIC,
    PEDIATRIC,
    TYPICAL,
    UNUSUAL_ACQUISITION,
    _check,
    check_guard_arrays,
    classify_domain,
    domain_check,
    domain_rates,
    fit_domain_guard,
    fit_pediatric_guard,
)
from pneumo.modelfile import ModelFileError

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


# --- two answers: "not pediatric" (pediatric guard, fitted under framing shifts) and "unusual acquisition" ---

FRAMING = np.zeros(DIM)
FRAMING[:3] = 4.0  # what a framing shift does to the features: a few dimensions move together


@pytest.fixture(scope="module")
def two_guards():
    """An acquisition guard fitted on images as they are; a pediatric guard fitted on them and on framed copies."""
    clean, framed = _gaussian(3000, 10), _gaussian(3000, 11) + FRAMING
    acq, arrays = fit_domain_guard(clean, _gaussian(1000, 12), components=6, quantile=0.98)
    held_out = np.concatenate([_gaussian(1000, 13), _gaussian(1000, 14) + FRAMING])
    ped, ped_arrays = fit_pediatric_guard(np.concatenate([clean, framed]), held_out, components=6, quantile=0.99)
    return acq.model_copy(update={"pediatric": ped}), {**arrays, **ped_arrays}


def test_framing_is_unusual_far_is_not_pediatric_clean_is_typical(two_guards):
    guard, arrays = two_guards
    for feats, expected in [
        (_gaussian(500, 20), TYPICAL),
        (_gaussian(500, 21) + FRAMING, UNUSUAL_ACQUISITION),
        (_gaussian(500, 22, shift=10.0), NOT_PEDIATRIC),
    ]:
        domain, in_domain, score = classify_domain(feats, guard, arrays)
        assert np.mean(domain == expected) > 0.9, expected
        np.testing.assert_array_equal(in_domain, domain != NOT_PEDIATRIC)
        assert set(np.unique(domain)) <= set(DOMAINS) and np.all((score >= 0) & (score <= 1))


def test_score_and_in_domain_come_from_the_pediatric_guard(two_guards):
    guard, arrays = two_guards
    feats = _gaussian(300, 23) + FRAMING
    _, in_domain, score = classify_domain(feats, guard, arrays)
    ped_in, ped_score = _check(feats, guard.pediatric, arrays, PEDIATRIC)
    np.testing.assert_array_equal(in_domain, ped_in)
    np.testing.assert_array_equal(score, ped_score)


def test_a_guard_without_the_pediatric_part_answers_as_before(guard):
    # Model files made before the two answers: flagged means not pediatric (withheld), else typical.
    g, arrays = guard
    feats = np.concatenate([_gaussian(200, 30), _gaussian(50, 31, shift=10.0)])
    domain, in_domain, score = classify_domain(feats, g, arrays)
    old_in, old_score = domain_check(feats, g, arrays)
    np.testing.assert_array_equal(in_domain, old_in)
    np.testing.assert_array_equal(score, old_score)
    np.testing.assert_array_equal(domain, np.where(old_in, TYPICAL, NOT_PEDIATRIC))
    assert UNUSUAL_ACQUISITION not in domain


def test_valid_arrays_pass_the_check(two_guards, guard):
    check_guard_arrays(*two_guards, feature_dim=DIM)
    check_guard_arrays(*guard)


def _broken(arrays, name, value):
    return {**arrays, name: value} if value is not None else {k: v for k, v in arrays.items() if k != name}


@pytest.mark.parametrize(
    ("name", "how", "said"),
    [
        ("pediatric_components", "nan", "not all finite"),
        ("domain_scale", "inf", "not all finite"),
        ("pediatric_variances", "zero", "<= 0"),
        ("pediatric_feature_std", "zero", "<= 0"),
        ("pediatric_components", "transpose", "shape"),
        ("pediatric_mean", "drop", "missing"),
        ("pediatric_feature_std", "drop", "go together"),
        ("pediatric_val_distances", "reverse", "sorted"),
        ("domain_val_distances", "empty", "sorted"),
    ],
)
def test_broken_arrays_are_refused_with_one_line(two_guards, name, how, said):
    guard, arrays = two_guards
    a = arrays[name]
    value = {
        "nan": np.where(np.arange(a.size).reshape(a.shape) == 1, np.nan, a),
        "inf": np.full_like(a, np.inf),
        "zero": np.zeros_like(a),
        "transpose": a.T,
        "drop": None,
        "reverse": a[::-1],
        "empty": a[:0],
    }[how]
    with pytest.raises(ModelFileError, match=said) as exc:
        check_guard_arrays(guard, _broken(arrays, name, value), source="m.pneumo")
    assert str(exc.value).startswith("m.pneumo: invalid domain-guard arrays") and "\n" not in str(exc.value)


def test_feature_dimension_must_match_the_network(two_guards):
    with pytest.raises(ModelFileError, match=f"{DIM} features, the network gives {DIM + 1}"):
        check_guard_arrays(*two_guards, feature_dim=DIM + 1)


def test_domain_rates_counts_answered_rows_only():
    rows = [SimpleNamespace(domain=d) for d in [TYPICAL, NOT_PEDIATRIC, UNUSUAL_ACQUISITION, UNUSUAL_ACQUISITION]]
    rows.append(SimpleNamespace(domain=None))  # an error row: no answer, not in the denominator
    assert domain_rates(rows) == {"flagged_not_pediatric": 0.25, "flagged_unusual_acquisition": 0.5}
    empty = domain_rates([SimpleNamespace(domain=None)])
    assert all(np.isnan(v) for v in empty.values())
