"""Calibration: softmax, temperature and bias fitting, ECE, reliability bins, threshold choice."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumo.errors import ConfigError, DataError
from pneumo.evaluation.calibration import choose_threshold, fit_calibration
from pneumo.evaluation.metrics import expected_calibration_error, operating_point, reliability_bins
from pneumo.probability import calibrated_probability, softmax


def test_softmax_matches_scipy_and_is_stable():
    logits = np.random.default_rng(0).normal(size=(50, 3)) * 5
    np.testing.assert_allclose(softmax(logits, 2.0), scipy.special.softmax(logits / 2.0, axis=1), atol=1e-12)
    big = softmax(np.array([[1000.0, -1000.0], [-1000.0, 1000.0]]))
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big, [[1, 0], [0, 1]], atol=1e-12)


def test_pneumonia_probability_is_one_minus_normal():
    assert calibrated_probability(np.array([[0.0, 0.0], [0.0, np.log(3.0)]])) == pytest.approx([0.5, 0.75])
    assert calibrated_probability(np.zeros((1, 3))) == pytest.approx([2 / 3])
    # temperature 2 on logit gap log 9 gives odds 3
    assert calibrated_probability(np.array([[0.0, np.log(9.0)]]), 2.0) == pytest.approx([0.75])


def test_ece_constant_predictor_on_balanced_labels_is_0_4():
    y = np.array([0, 1] * 50)
    assert expected_calibration_error(np.full(100, 0.9), y) == pytest.approx(0.4)


def test_ece_hand_made_two_bins():
    # bin of 0.1: observed rate 0.5 -> gap 0.4, half the cases; bin of 0.9: rate 1.0 -> gap 0.1, half the cases.
    prob = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(prob, y, n_bins=10) == pytest.approx(0.25)


def test_ece_of_perfectly_calibrated_data_is_near_zero():
    rng = np.random.default_rng(1)
    prob = rng.uniform(size=20_000)
    y = (rng.uniform(size=prob.size) < prob).astype(int)
    assert expected_calibration_error(prob, y) < 0.02
    # and a miscalibrated version of the same data is clearly worse
    assert expected_calibration_error(prob**3, y) > 0.1


def test_reliability_bins_counts_and_ranges():
    rng = np.random.default_rng(2)
    prob = np.r_[rng.uniform(size=500), 0.0, 1.0]
    y = rng.integers(0, 2, size=prob.size)
    rel = reliability_bins(prob, y, n_bins=10)
    assert rel["count"].sum() == prob.size
    assert len(rel["edges"]) == 11
    ok = rel["count"] > 0
    lo, hi = rel["edges"][:-1][ok], rel["edges"][1:][ok]
    assert np.all((rel["confidence"][ok] >= lo) & (rel["confidence"][ok] <= hi))
    assert np.all((rel["accuracy"][ok] >= 0) & (rel["accuracy"][ok] <= 1))


def _true_model(rng, n, c):
    """Logits of a calibrated model and labels drawn from its probabilities."""
    logits = rng.normal(scale=1.5, size=(n, c))
    p = softmax(logits)
    y_class = (rng.uniform(size=(n, 1)) > p.cumsum(axis=1)).sum(axis=1)
    return logits, y_class


def _binary_nll(logits, y, t, b):
    p = np.clip(calibrated_probability(logits, t, b), 1e-12, 1 - 1e-12)
    return float(-np.mean(np.where(y > 0, np.log(p), np.log(1 - p))))


@pytest.mark.parametrize("c", [2, 3])
def test_fit_calibration_undoes_overconfidence(c):
    logits, y_class = _true_model(np.random.default_rng(3), 4000, c)
    y = (y_class > 0).astype(int)
    over = 3.0 * logits
    t, b = fit_calibration(over, y)
    if c == 2:  # the binary log-odds is exactly three times too large, with no prior shift
        assert t == pytest.approx(3.0, rel=0.1) and b == pytest.approx(0.0, abs=0.1)
    before = expected_calibration_error(calibrated_probability(over), y)
    after = expected_calibration_error(calibrated_probability(over, t, b), y)
    assert after < before / 2
    assert _binary_nll(over, y, t, b) < _binary_nll(over, y, 1.0, 0.0)


def test_fit_calibration_recovers_a_prior_shift():
    # Class-balanced training shifts the log-odds by a constant; the bias must take it back out.
    logits, y_class = _true_model(np.random.default_rng(4), 6000, 2)
    y = (y_class > 0).astype(int)
    shifted = logits.copy()
    shifted[:, 1] -= 1.0
    t, b = fit_calibration(shifted, y)
    assert t == pytest.approx(1.0, rel=0.1) and b == pytest.approx(1.0, abs=0.15)


def test_fit_calibration_rejects_bad_shape():
    with pytest.raises(ValueError, match="N x C"):
        fit_calibration(np.zeros(5), np.zeros(5))


def test_choose_threshold_examples():
    y = np.array([1, 1, 1, 1, 0, 0])
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.65, 0.1])
    assert choose_threshold(y, prob, 0.75) == 0.7
    assert choose_threshold(y, prob, 1.0) == 0.6
    assert choose_threshold(y, prob, 0.2) == 0.9
    # 49 of 50 is exactly 0.98: the threshold may drop one positive, no more
    pos = np.linspace(0.01, 0.99, 50)
    assert choose_threshold(np.ones(50), pos, 0.98) == pytest.approx(pos[1])
    with pytest.raises(ValueError):
        choose_threshold(np.zeros(3), np.ones(3))


def test_choose_threshold_keeps_tied_positives():
    y = np.array([1, 1, 1, 1])
    prob = np.array([0.5, 0.5, 0.5, 0.9])
    t = choose_threshold(y, prob, 0.5)
    assert t == 0.5
    assert operating_point(y, prob, t)["sensitivity"] == 1.0


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.7, 0.9, 1.0]) | st.floats(0, 1), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    target=st.floats(0.01, 1.0),
)
def test_choose_threshold_is_highest_meeting_target(data, target):
    prob = np.array([p for p, _ in data])
    y = np.array([int(b) for _, b in data])
    if y.sum() == 0:
        y[0] = 1
    t = choose_threshold(y, prob, target)
    assert operating_point(y, prob, t)["sensitivity"] >= target
    # any higher threshold misses the target
    assert operating_point(y, prob, np.nextafter(t, np.inf))["sensitivity"] < target


def test_operating_point_counts():
    y = np.array([1, 1, 1, 0, 0, 0, 0])
    prob = np.array([0.9, 0.6, 0.2, 0.7, 0.3, 0.1, 0.05])
    op = operating_point(y, prob, 0.5)
    assert (op["tp"], op["fn"], op["fp"], op["tn"]) == (2, 1, 1, 3)
    assert op["sensitivity"] == pytest.approx(2 / 3)
    assert op["specificity"] == pytest.approx(3 / 4)
    assert op["ppv"] == pytest.approx(2 / 3)
    assert op["npv"] == pytest.approx(3 / 4)
    assert np.isnan(operating_point(np.zeros(3), np.ones(3), 0.5)["sensitivity"])


def test_calibration_import_stays_light():
    light = "print(sorted({'matplotlib', 'sklearn', 'torch'} & set(sys.modules)))"
    code = f"import sys, pneumo.evaluation.calibration; {light}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pneumonia_log_odds_is_one_formula_for_numpy_and_torch():
    """Training's AUC monitor and Grad-CAM's target run it on torch tensors, with gradients; predict on numpy."""
    torch = pytest.importorskip("torch")
    from pneumo.probability import pneumonia_log_odds

    logits = np.random.default_rng(0).normal(size=(20, 3)) * 4
    t = torch.tensor(logits, requires_grad=True)
    z = pneumonia_log_odds(t)
    np.testing.assert_allclose(z.detach().numpy(), pneumonia_log_odds(logits), rtol=1e-12)
    np.testing.assert_allclose(1 / (1 + np.exp(-pneumonia_log_odds(logits))), 1 - softmax(logits)[:, 0], rtol=1e-12)
    (grad,) = torch.autograd.grad(z.sum(), t)
    np.testing.assert_allclose(grad[:, 0].numpy(), -1.0)  # d z / d logit_normal
    assert pneumonia_log_odds(t[0]).shape == ()  # one sample's logits, as Grad-CAM passes them


def test_worst_case_threshold_keeps_the_largest_margin_in_the_worst_condition():
    from pneumo.evaluation.calibration import choose_threshold_worst_case, worst_case_rates

    # 10 pneumonia, 10 normal. Clean: positives 0.55..1.0, negatives 0.0..0.45. Zoomed: the lowest positive
    # falls to 0.5 and the two highest negatives rise to 0.62 and 0.72. With both targets 0.8, by hand, the
    # worst-condition margin min(sens - 0.8, spec - 0.8) is 0 for every cut in (0.35, 0.65] and negative outside
    # (at 0.35 zoomed specificity is 0.7; above 0.65 clean sensitivity is 0.7): the middle of that run is 0.5.
    y = np.array([1] * 10 + [0] * 10)
    clean = np.round(np.concatenate([np.linspace(0.55, 1.0, 10), np.linspace(0.0, 0.45, 10)]), 2)
    zoom = clean.copy()
    zoom[0], zoom[18], zoom[19] = 0.5, 0.62, 0.72
    probs = {"clean": clean, "zoom": zoom}
    t = choose_threshold_worst_case(y, probs, 0.8, 0.8)
    assert t == pytest.approx(0.5)
    rates = worst_case_rates(y, probs, t)
    assert rates == {"sensitivity": 1.0, "sensitivity_of": "clean", "specificity": 0.8, "specificity_of": "zoom"}
    # the pooled rule takes the highest cut with sensitivity 0.8 on both pooled: the 16th highest positive, 0.65
    assert choose_threshold(np.tile(y, 2), np.concatenate([clean, zoom]), 0.8) == pytest.approx(0.65)


def test_worst_case_threshold_refuses_one_class_and_bad_targets():
    from pneumo.evaluation.calibration import choose_threshold_worst_case

    with pytest.raises(DataError):
        choose_threshold_worst_case(np.ones(4), {"clean": np.linspace(0, 1, 4)}, 0.9, 0.9)
    with pytest.raises(ConfigError):
        choose_threshold_worst_case(np.array([0, 1]), {"clean": np.array([0.2, 0.8])}, 0.9, 1.5)
