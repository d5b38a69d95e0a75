"""pneumo.training.augment: batched training twins agree with the numpy inference path; each transform does its job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumo.modelfile import Preprocessing
from pneumo.preprocess import equalize, to_input
from pneumo.training.augment import AugmentConfig, augment_batch, equalize_batch, gaussian_blur, normalize_batch

OFF = {
    "rotation_deg": 0.0, "shear_deg": 0.0, "scale": (1.0, 1.0), "aspect": (1.0, 1.0), "translate": 0.0,
    "hflip_p": 0.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0, "blur_sharpen_p": 0.0,
    "resolution_loss_p": 0.0, "noise_p": 0.0, "border_erase_p": 0.0, "marker_p": 0.0,
}  # fmt: skip


def _images(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random images of different character: uniform noise, a smooth gradient, few grey levels, a flat one."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None] * np.ones((1, size), np.float32)
    imgs = [rng.random((size, size), dtype=np.float32) for _ in range(n - 3)]
    imgs.append(np.clip(0.2 + 0.5 * yy + 0.05 * rng.standard_normal((size, size)), 0, 1).astype(np.float32))
    imgs.append(rng.choice(np.array([0.1, 0.5, 0.9], np.float32), (size, size)))
    imgs.append(np.full((size, size), 0.37, np.float32))  # flat
    return np.stack(imgs)


def test_equalize_batch_matches_numpy_equalize():
    imgs = _images()
    got = equalize_batch(torch.from_numpy(imgs)[:, None]).numpy()[:, 0]
    for g, img in zip(got, imgs, strict=True):
        np.testing.assert_allclose(g, equalize(img), atol=1e-6, rtol=0)
    assert np.all(got[-1] == 0.5)  # the flat image


def test_normalize_batch_matches_to_input():
    imgs = _images()
    for cfg in (Preprocessing(image_size=32), Preprocessing(image_size=32, normalization="none", mean=0.4, std=0.3)):
        got = normalize_batch(torch.from_numpy(imgs)[:, None], cfg).numpy()
        np.testing.assert_allclose(got, to_input(list(imgs), cfg), atol=1e-5, rtol=0)


def _batch(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.from_numpy(_images(n, size, seed=1)[:, None]).clamp(0.01, 0.99)


def test_augment_batch_shape_range_changes_and_seeded():
    x = _batch()
    cfg = AugmentConfig()
    torch.manual_seed(5)
    a = augment_batch(x, cfg)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.isfinite(a).all()
    assert (a - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image changed
    torch.manual_seed(5)
    torch.testing.assert_close(augment_batch(x, cfg), a, rtol=0, atol=0)
    torch.manual_seed(6)
    assert not torch.allclose(augment_batch(x, cfg), a)
    assert torch.equal(x, _batch())  # the input is not modified in place


def test_augment_disabled_is_identity():
    x = _batch()
    assert torch.equal(augment_batch(x, AugmentConfig(enabled=False)), x)


def test_everything_off_is_identity():
    x = _batch()
    torch.testing.assert_close(augment_batch(x, AugmentConfig(**OFF)), x, atol=1e-5, rtol=0)


def test_hflip_alone_is_torch_flip():
    x = _batch()
    got = augment_batch(x, AugmentConfig(**{**OFF, "hflip_p": 1.0}))
    torch.testing.assert_close(got, torch.flip(x, dims=[-1]), atol=1e-5, rtol=0)


def test_gaussian_blur_sigma_zero_and_per_image_sigma():
    x = _batch(4)
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    sigma = torch.tensor([0.0, 0.5, 1.0, 2.0])
    y = gaussian_blur(x[:1].expand(4, -1, -1, -1).contiguous(), sigma)
    torch.testing.assert_close(y[0], x[0], atol=1e-5, rtol=0)  # each image gets its own sigma
    var = y.var(dim=(1, 2, 3))
    assert torch.all(var[1:] < var[:-1])  # more blur, less variance
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x[0].mean().expand(4), atol=2e-3, rtol=0)  # mass kept


@pytest.mark.parametrize("field", ["brightness", "contrast", "gamma", "noise_p", "rotation_deg", "blur_sharpen_p"])
def test_each_transform_alone_changes_images(field):
    value = {"noise_p": 1.0, "blur_sharpen_p": 1.0, "rotation_deg": 20.0}.get(field, 0.3)
    x = _batch()
    torch.manual_seed(0)
    y = augment_batch(x[:5], AugmentConfig(**{**OFF, field: value}))  # the first 5 are not flat
    assert (y - x[:5]).abs().amax() > 1e-3
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize(("sx", "sy"), [(0.8, 0.8), (1.25, 1.25), (0.85, 1.0), (1.0, 0.85), (0.9, 1.1)])
def test_rescale_content_is_the_numpy_twin_of_the_training_warp(sx, sy):
    """Test-time views (numpy, inference) resample exactly as the training augmentation (grid_sample) does."""
    from pneumo.preprocess import rescale_content
    from pneumo.training.augment import rescale_batch

    imgs = _images(4, size=40)
    got = np.stack([rescale_content(img, sx, sy) for img in imgs])
    ref = rescale_batch(torch.from_numpy(imgs)[:, None], sx, sy).numpy()[:, 0]
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    if sx < 1:  # a shrunk image's margin repeats its edge column
        np.testing.assert_allclose(got[:, :, 0], got[:, :, 1], atol=1e-6)


def test_flat_margins_or_repeated_edges_when_the_content_shrinks():
    """A shrunk image's margin is either its repeated edge or, with ``flat_margin_p``, one flat grey between black
    and the mean of its border (another framing shows a smaller chest in a wider, flat field)."""
    torch.manual_seed(0)
    x = _batch()
    shrink = {**OFF, "scale": (0.7, 0.7)}
    flat = augment_batch(x, AugmentConfig(**{**shrink, "flat_margin_p": 1.0}))
    border = torch.cat([x[:, 0, 0], x[:, 0, -1], x[:, 0, :, 0], x[:, 0, :, -1]], dim=1).mean(1)
    margin = flat[:, 0, :4, :]  # the top rows lie outside the shrunk content
    assert torch.allclose(margin, margin[:, :1, :1].expand_as(margin), atol=1e-6)  # one grey per image
    assert (margin[:, 0, 0] <= border + 1e-6).all() and (margin[:, 0, 0] >= 0).all()
    edge = augment_batch(x, AugmentConfig(**{**shrink, "flat_margin_p": 0.0}))
    torch.testing.assert_close(edge[:, 0, 0, 0], x[:, 0, 0, 0])  # the corner pixel repeated into the margin


def test_border_erase_greys_only_bands_at_the_edges():
    from pneumo.training.augment import random_border_erase

    torch.manual_seed(0)
    x = torch.rand(64, 1, 40, 40)
    cfg = AugmentConfig(border_erase_p=1.0, border_erase_max=0.2)
    out = random_border_erase(x, cfg)
    changed = (out != x).any(dim=0)[0]
    assert changed.any()
    assert not changed[8:32, 8:32].any()  # nothing deeper than 20 % of the frame
    # each erased image's changed pixels are one flat grey
    for i in range(64):
        diff = out[i, 0][out[i, 0] != x[i, 0]]
        assert diff.numel() == 0 or torch.allclose(diff, diff[0])
    assert torch.equal(random_border_erase(x, AugmentConfig(border_erase_p=0.0)), x)


def test_markers_are_pasted_near_the_edges_on_a_share_of_the_images():
    from pneumo.training.augment import random_markers

    torch.manual_seed(0)
    x = torch.full((200, 1, 64, 64), 0.3)
    out = random_markers(x, AugmentConfig(marker_p=0.5, marker_size=(0.06, 0.1)))
    touched = (out - x).abs().flatten(1).amax(1) > 0.05
    assert 0.3 < touched.float().mean() < 0.7  # about half of the images
    ink = (out - x).abs()[:, 0] > 0.05
    # a text's corner sits 60-90 % of the half-frame out from the middle on one axis: its ink always reaches into
    # the outer quarter of the frame (12.8 px of 64, plus the glyph canvas's margin and the font's leading: 16 px),
    # never lies wholly in the middle
    for i in np.flatnonzero(touched.numpy()):
        rows, cols = np.flatnonzero(ink[i].any(1).numpy()), np.flatnonzero(ink[i].any(0).numpy())
        assert min(rows[0], cols[0]) <= 16 or max(rows[-1], cols[-1]) >= 47, i
    assert torch.equal(random_markers(x, AugmentConfig(marker_p=0.0)), x)


def test_context_swap_replaces_only_outside_the_lung_field() -> None:
    from pneumo.training.augment import random_context_swap

    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone() / 4
    lungs = torch.zeros(1, 1, 8, 8)
    lungs[..., 2:6, 2:6] = 1.0
    out = random_context_swap(x, lungs, p=1.0)
    inside = lungs.bool().expand_as(x)
    assert torch.equal(out[inside], x[inside])  # the lungs are each image's own
    for i in range(4):  # outside: another image's, never its own
        outside = out[i, 0][~lungs[0, 0].bool()]
        assert torch.all(outside == outside[0]) and outside[0] != x[i, 0, 0, 0]
    assert torch.equal(random_context_swap(x, lungs, p=0.0), x)


def test_lung_field_reads_the_atlas_at_the_input_size(tmp_path) -> None:
    from PIL import Image

    from pneumo.training.augment import lung_field

    atlas = np.zeros((224, 224), np.uint8)
    atlas[40:180, 30:100] = 200  # one lung field, share 0.78 of the images
    Image.fromarray(atlas).save(tmp_path / "atlas.png")
    field = lung_field(tmp_path / "atlas.png", 64, level=0.5)
    assert field.shape == (1, 1, 64, 64)
    assert float(field[0, 0, 32, 18]) == pytest.approx(1.0) and float(field[0, 0, 5, 5]) == 0.0
    assert float(lung_field(tmp_path / "atlas.png", 64, level=0.9).max()) == 0.0  # above the field's share
