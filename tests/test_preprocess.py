"""pneumo.preprocess and pneumo.probability: golden values on hand-made inputs, properties with hypothesis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pneumo.modelfile import Preprocessing
from pneumo.preprocess import averaged_views, equalize, normalize_intensity, to_input, views
from pneumo.probability import calibrated_probability, pneumonia_log_odds, softmax, subtype_probabilities


def test_equalize_golden():
    img = np.array([[0, 10, 10, 200]], dtype=np.float64) / 255
    # cdf over the occupied levels 0, 10, 200 is 1, 3, 4; (cdf - 1) / 3
    assert equalize(img) == pytest.approx(np.array([[0.0, 2 / 3, 2 / 3, 1.0]]), abs=1e-6)
    img = np.array([[0.2, 0.2, 0.2], [0.6, 0.6, 0.8], [0.8, 0.8, 0.8]])
    expected = np.array([[0.0, 0.0, 0.0], [1 / 3, 1 / 3, 1.0], [1.0, 1.0, 1.0]])
    assert equalize(img) == pytest.approx(expected, abs=1e-6)
    assert equalize(img).dtype == np.float32


def test_equalize_flat_image():
    assert np.all(equalize(np.full((4, 5), 0.3)) == 0.5)
    assert equalize(np.full((4, 5), 0.3)).shape == (4, 5)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, (6, 7), elements=st.floats(0, 1)))
def test_equalize_properties(img):
    out = equalize(img)
    q = np.rint(img * 255).ravel()
    o = out.ravel()
    assert np.all((o >= 0) & (o <= 1))
    if len(np.unique(q)) > 1:
        assert o.min() == 0.0 and o.max() == 1.0
        # strictly monotone in the quantised grey level
        order = np.argsort(q, kind="stable")
        qs, os_ = q[order], o[order]
        assert np.all(np.diff(os_)[np.diff(qs) > 0] > 0)
        assert np.all(np.diff(os_)[np.diff(qs) == 0] == 0)


def test_to_input_shape_uint8_and_normalisation():
    cfg = Preprocessing(image_size=16, normalization="none", mean=0.5, std=0.25)
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    x = to_input([img, img.astype(np.float32) / 255], cfg)
    assert x.shape == (2, 1, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], x[1], atol=1e-6)  # uint8 is scaled to [0, 1]
    np.testing.assert_allclose(x[0, 0], (img / 255 - 0.5) / 0.25, atol=1e-6)
    eq = Preprocessing(image_size=16)
    np.testing.assert_allclose(to_input([img], eq)[0, 0], (normalize_intensity(img / 255, eq) - 0.5) / 0.25, atol=1e-6)


@pytest.mark.parametrize("shape", [(15, 16), (16, 17), (17, 17), (16, 16, 1)])
def test_to_input_rejects_wrong_size(shape):
    with pytest.raises(ValueError, match="16x16"):
        to_input([np.zeros(shape, np.float32)], Preprocessing(image_size=16))


@pytest.mark.parametrize(
    ("tta", "n_views", "expected"),
    [
        ([], None, [0]),  # no test-time scales: the image as it is
        ([1.0], None, [0]),
        ([0.8, 1.0], None, [0, 1]),  # views are [1.0, 0.8]
        ([0.9, 1.1], None, [1, 2]),  # the image as it is is not among the averaged views
        ([1.1, 0.9, 1.1], None, [1, 2]),  # repeated scales are one view
        ([0.9, 1.1], 1, [0]),  # a batch prepared without tta: only the image as it is
        ([0.8, 1.0], 1, [0]),
    ],
)
def test_averaged_views(tta, n_views, expected):
    cfg = Preprocessing(image_size=32, content_scales=tta)
    assert averaged_views(cfg, n_views) == expected
    if n_views is None:
        assert all(views(cfg)[i] in (tta or [1.0]) for i in expected)


def test_calibrated_probability_two_class_is_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (50, 2))
    np.testing.assert_allclose(calibrated_probability(logits), softmax(logits)[:, 1], atol=1e-12)
    # golden: sigmoid((l1 - l0) / T + b)
    lg = np.array([[0.0, 2.0], [1.0, -1.0]])
    expected = 1 / (1 + np.exp(-(np.array([2.0, -2.0]) / 2.0 + 0.5)))
    np.testing.assert_allclose(calibrated_probability(lg, 2.0, 0.5), expected, atol=1e-12)


def test_probability_is_stable_for_extreme_logits():
    p = calibrated_probability(np.array([[0.0, 1e4], [1e4, 0.0]]))
    assert np.all(np.isfinite(p)) and p[0] == pytest.approx(1.0) and p[1] == pytest.approx(0.0)
    three = np.array([[-1e4, 1e4, 1e4]])
    assert np.isfinite(subtype_probabilities(three)).all()
    assert pneumonia_log_odds(three)[0] == pytest.approx(2e4 + np.log(2))


logit_rows = arrays(np.float64, st.tuples(st.integers(1, 8), st.just(3)), elements=st.floats(-30, 30))


@settings(max_examples=100, deadline=None)
@given(logit_rows, st.floats(0.2, 5.0), st.floats(-3.0, 3.0))
def test_subtype_probabilities_properties(logits, temperature, bias):
    sp = subtype_probabilities(logits, temperature, bias)
    p = calibrated_probability(logits, temperature, bias)
    assert sp.shape == (len(logits), 3)
    assert np.all(sp >= 0) and np.all(sp <= 1)
    np.testing.assert_allclose(sp.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(sp[:, 0], 1 - p, atol=1e-12)
    # bacterial : viral follows the model's own ratio of those two logits
    both = sp[:, 1] + sp[:, 2]
    ok = both > 1e-9
    expected = softmax(logits[:, 1:], temperature)[:, 0]
    np.testing.assert_allclose(sp[ok, 1] / both[ok], expected[ok], atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(logit_rows)
def test_calibrated_probability_uncalibrated_is_softmax_pneumonia_mass(logits):
    np.testing.assert_allclose(calibrated_probability(logits), 1 - softmax(logits)[:, 0], atol=1e-9)
