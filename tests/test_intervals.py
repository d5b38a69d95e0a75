"""One interval type and one bootstrap (issue 28): the shapes each file writes, the bootstrap's arithmetic, and the
figures of evaluation and ``pneumo adapt`` unchanged by going through them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pneumo.adapt.fit import figures_with_intervals, patient_bootstrap_weights, weighted_figures
from pneumo.evaluation.intervals import Interval, bootstrap, percentile_bounds, wilson
from pneumo.evaluation.report import (
    bootstrap_ci,
    bootstrap_intervals,
    confidence_intervals,
    metric_intervals,
    multiclass_metrics,
    proportion_ci,
)

NAN = float("nan")


def _sample():
    """The seeded sample the golden values below were measured on with the code before the interval type."""
    rng = np.random.default_rng(3)
    y = (rng.random(60) < 0.4).astype(int)
    prob = np.clip(0.35 * y + 0.65 * rng.random(60), 0, 1).round(2)
    return y, prob, np.arange(60) // 2, (prob >= 0.5).astype(int)


def test_interval_shapes_are_the_ones_the_files_hold():
    iv = Interval(0.9, 0.8, 0.95)
    assert iv.as_json() == {"value": 0.9, "lo": 0.8, "hi": 0.95}  # site reports
    assert list(iv.as_json()) == ["value", "lo", "hi"]
    assert iv.as_pair() == [0.8, 0.95] and isinstance(iv.as_pair(), list)  # metrics.json ci, model file ci95
    assert iv.bounds == (0.8, 0.95) and isinstance(iv.bounds, tuple)
    assert iv.text() == "0.900  (95% CI 0.800-0.950)"  # report.txt
    assert Interval(0.9, NAN, NAN).text() == "0.900" and not Interval(0.9, NAN, 1.0).finite
    with pytest.raises(dataclasses.FrozenInstanceError):
        iv.lo = 0.0  # type: ignore[misc]


def test_bootstrap_is_the_percentiles_of_the_resampled_figure():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    w = rng.integers(0, 3, size=(200, 40)).astype(float)

    def mean(weights):
        return {"mean": weights @ x / weights.sum(axis=1), "n": weights.sum(axis=1)}

    iv = bootstrap(mean, [w[:70], w[70:]], x.size, keys=["mean"])  # chunks give what one matrix gives
    assert list(iv) == ["mean"]
    assert iv["mean"].value == pytest.approx(x.mean())
    assert iv["mean"].bounds == percentile_bounds(w @ x / w.sum(axis=1))
    assert iv["mean"].bounds == tuple(np.percentile(w @ x / w.sum(axis=1), [2.5, 97.5]))
    kept = bootstrap(mean, [w], x.size, keep=lambda m: m["n"] > 40)
    assert kept["mean"].bounds == percentile_bounds((w @ x / w.sum(axis=1))[w.sum(axis=1) > 40])
    assert set(kept) == {"mean", "n"}


def test_bootstrap_skips_non_finite_replicates_and_has_nan_bounds_without_any():
    def figure(weights):
        out = weights[:, 0].copy()
        out[1::2] = np.nan  # every other replicate; the point (one row) stays
        return {"f": out}

    w = np.arange(1, 11, dtype=float)[:, None] * np.ones((10, 3))
    assert bootstrap(figure, [w], 3)["f"].bounds == percentile_bounds(w[::2, 0])
    assert percentile_bounds(w[::2, 0]) == pytest.approx((1.2, 8.8))
    none = bootstrap(figure, [], 3)["f"]
    assert none.value == 1.0 and math.isnan(none.lo) and math.isnan(none.hi)


def test_evaluation_and_site_intervals_keep_their_values():
    """Golden values from the three bootstrap loops before they became one (seeded, so exact)."""
    y, prob, patients, dec = _sample()
    ci = bootstrap_ci(y, prob, 0.5, n_boot=300, seed=5)
    assert ci["roc_auc"] == pytest.approx((0.8288917824074074, 0.9688078703703703), abs=1e-12)
    assert ci["ece"] == pytest.approx((0.16932499999999998, 0.2919208333333333), abs=1e-12)
    plain = bootstrap_ci(y, prob, 0.5, n_boot=300, seed=5, stratified=False)
    assert plain["roc_auc"] == pytest.approx((0.8354142857142858, 0.9710329805935166), abs=1e-12)
    site = figures_with_intervals(y, prob, dec, patients, n_boot=300, seed=5)
    assert site["sensitivity"] == pytest.approx({"value": 0.75, "lo": 0.5714285714285714, "hi": 0.9149456521739129})
    assert site["roc_auc"] == pytest.approx({"value": 0.9120370370370371, "lo": 0.8335714285714285, "hi": 0.96875})


def test_every_interval_goes_through_the_one_type():
    y, prob, patients, dec = _sample()
    ivs = metric_intervals(y, prob, 0.5, n_boot=100, seed=1)
    assert all(isinstance(iv, Interval) for iv in ivs.values())
    assert confidence_intervals(y, prob, 0.5, n_boot=100, seed=1) == {k: iv.bounds for k, iv in ivs.items()}
    boot = bootstrap_intervals(y, prob, 0.5, n_boot=100, seed=1)
    assert ivs["roc_auc"] == boot["roc_auc"]  # the point value travels with the bounds
    tp = int(((prob >= 0.5) & (y == 1)).sum())
    assert ivs["sensitivity"] == wilson(tp, int(y.sum()))
    assert ivs["sensitivity"].value == pytest.approx(tp / y.sum())
    weights = patient_bootstrap_weights(y, patients, 100, 2)
    site = bootstrap(lambda w: weighted_figures(y, prob, dec, w), [weights], y.size)
    expected = {k: v.as_json() for k, v in site.items()}
    assert figures_with_intervals(y, prob, dec, patients, n_boot=100, seed=2) == expected
    m = multiclass_metrics(np.array([0, 1, 2, 1]), np.eye(3)[[0, 1, 2, 2]], ["NORMAL", "BACTERIA", "VIRUS"])
    assert m["accuracy_ci"] == wilson(3, 4).bounds == proportion_ci(3, 4)
    assert isinstance(m["accuracy_ci"], tuple)


def test_wilson_edges():
    assert wilson(5, 5).hi == 1.0 and wilson(0, 5).lo == 0.0
    none = wilson(0, 0)
    assert all(math.isnan(v) for v in (none.value, none.lo, none.hi))
