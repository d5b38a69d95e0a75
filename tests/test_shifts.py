"""The shift suite's declaration: occlusion conditions, the controls, and the checks derived for training."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pneumo.evaluation.robustness import predict_perturbed
from pneumo.evaluation.shifts import (
    BORDER,
    CONTROLS,
    FRAMING_CHECKS,
    LUNG_CHECKS,
    MARKER_BAND,
    PERTURBATIONS,
    SUITE,
    TRAINING_CHECKS,
    box_mask,
    checked_copies,
    checked_copy,
    hide_lungs,
    lung_copies,
    lung_png,
    marker_mask,
    only_lungs,
)
from pneumo.inference import Predictor


def _chest(
    size: int = 224, seed: int = 0, letter_at: tuple[int, int] | None = (10, 8)
) -> tuple[Image.Image, np.ndarray]:
    """A smooth, noisy chest-like image (dark lungs, brighter middle) with a grey letter "R" burnt in at
    ``letter_at``; returns the image and the letter's pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = 70 + 60 * np.exp(-((xx - 0.5) ** 2) / 0.01) + 40 * yy + 6 * rng.standard_normal((size, size))
    im = Image.fromarray(np.clip(a, 0, 200).astype(np.uint8))
    letter = np.zeros((size, size), bool)
    if letter_at is not None:
        ink = Image.new("L", im.size, 0)
        ImageDraw.Draw(ink).text(letter_at, "R", fill=255, font=ImageFont.load_default(size=size // 14))
        letter = np.asarray(ink) > 128
        b = np.asarray(im).copy()
        b[letter] = 235
        im = Image.fromarray(b)
    return im, letter


def test_the_training_checks_are_derived_from_the_suite():
    assert TRAINING_CHECKS and all(SUITE[k].steers for k in TRAINING_CHECKS)
    assert set(FRAMING_CHECKS) < set(TRAINING_CHECKS)
    assert all(SUITE[k].family == "geometry" for k in FRAMING_CHECKS)
    assert "border masked 15%" in TRAINING_CHECKS  # the checkpoint must not reward reading the frame's edges
    # a control (low AUC is right there) never steers training nor enters the worst case
    assert set(CONTROLS).isdisjoint(PERTURBATIONS) and set(CONTROLS).isdisjoint(TRAINING_CHECKS)
    # nor does a lung check: each is declared once, in its own family
    assert list(LUNG_CHECKS) == ["lungs hidden", "only the lungs"]
    assert set(LUNG_CHECKS).isdisjoint(PERTURBATIONS) and set(LUNG_CHECKS).isdisjoint(TRAINING_CHECKS)
    assert all(SUITE[k].family == "lungs" for k in LUNG_CHECKS)
    assert set(SUITE) == set(PERTURBATIONS) | set(CONTROLS) | set(LUNG_CHECKS)


def test_border_and_lung_box_masks_are_complements():
    im, _ = _chest(letter_at=None)
    a = np.asarray(im)
    inside = box_mask(a.shape)
    d = round(224 * BORDER)
    assert inside[d, d] and not inside[d - 1, d] and inside[223 - d, 223 - d] and not inside[224 - d, 223 - d]
    border = np.asarray(SUITE["border masked 15%"].perturb(im))
    lungs = np.asarray(SUITE["lung box masked"].perturb(im))
    grey = round(float(a.mean()))
    assert (border[inside] == a[inside]).all() and (border[~inside] == grey).all()
    assert (lungs[~inside] == a[~inside]).all() and (lungs[inside] == grey).all()


def test_marker_mask_finds_a_burnt_in_letter_near_the_edge_and_nothing_in_the_middle():
    im, letter = _chest(letter_at=(10, 8))
    found = marker_mask(im)
    assert found[letter].mean() >= 0.9  # the letter is hidden
    assert found.mean() < 0.02  # and little else
    masked = np.asarray(SUITE["markers masked"].perturb(im))
    assert masked[letter].max() < 200  # no bright stroke of it is left
    # the same letter on the lungs is anatomy-sized detail the condition must not touch
    middle, letter_mid = _chest(letter_at=(100, 100))
    assert not marker_mask(middle)[letter_mid].any()
    assert not box_mask((224, 224), MARKER_BAND)[10, 8]  # (the edge letter lies in the band searched)


def test_checked_copies_are_what_the_suite_feeds_the_model(tmp_path, tiny_model):
    """The copies that steer training and the operating point give the same probabilities as the suite's own path
    (file decoded, perturbed, re-encoded, loaded by the predictor)."""
    paths = []
    for s in range(3):
        paths.append(tmp_path / f"x{s}.png")
        _chest(96, seed=s)[0].save(paths[-1])
    predictor = Predictor.load(tiny_model)
    size = predictor.meta.preprocessing.image_size
    copies = checked_copies(paths, size)
    assert list(copies) == list(TRAINING_CHECKS)
    for name, imgs in copies.items():
        assert imgs.shape == (3, size, size) and imgs.dtype == np.uint8
        suite, _ = predict_perturbed(predictor, paths, SUITE[name].perturb)
        ours = predictor.predict_arrays([im.astype(np.float32) / 255 for im in imgs], [str(p) for p in paths])
        np.testing.assert_allclose([p.probability for p in ours], suite, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", TRAINING_CHECKS)
def test_every_check_changes_the_image(tmp_path, name):
    path = tmp_path / "x.png"
    _chest(64, letter_at=None)[0].save(path)
    clean = checked_copies([path], 64, ())
    assert clean == {}
    moved = checked_copy(path, name, 64).astype(int)
    assert np.abs(moved - np.asarray(Image.open(path))).mean() > 0.5


# -- the lung checks ----------------------------------------------------------------------------------------------


def _lung_region(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    region = np.zeros(shape, bool)
    region[h // 5 : 4 * h // 5, w // 8 : 3 * w // 8] = True
    region[h // 5 : 4 * h // 5, 5 * w // 8 : 7 * w // 8] = True
    return region


def test_lungs_hidden_and_only_the_lungs_split_the_image_under_one_flat_grey():
    im, _ = _chest(letter_at=None)
    a = np.asarray(im)
    region = _lung_region(a.shape)
    grey = round(float(a.mean()))
    hidden, only = np.asarray(hide_lungs(im, region)), np.asarray(only_lungs(im, region))
    assert np.all(hidden[region] == grey) and np.array_equal(hidden[~region], a[~region])
    assert np.all(only[~region] == grey) and np.array_equal(only[region], a[region])


class _Source:
    """A stand-in for pneumo.lungs.LungSource: a fixed region at any size, and a record of what was asked."""

    def __init__(self):
        self.asked = []

    def region(self, path, shape):
        self.asked.append((str(path), shape))
        return _lung_region(shape)


def test_lung_png_takes_the_region_at_the_files_own_size(tmp_path):
    im, _ = _chest(size=160, letter_at=None)
    im = im.resize((120, 160))  # a portrait original: the region is asked for at (height, width)
    path = tmp_path / "x.png"
    im.save(path)
    src = _Source()
    got = np.asarray(Image.open(io.BytesIO(lung_png(path, "lungs hidden", src))))
    assert src.asked == [(str(path), (160, 120))]
    np.testing.assert_array_equal(got, np.asarray(hide_lungs(im, _lung_region((160, 120)))))
    copies = lung_copies([path, path], 32, _Source())
    assert set(copies) == set(LUNG_CHECKS) and copies["only the lungs"].shape == (2, 32, 32)
    assert copies["only the lungs"].dtype == np.uint8
