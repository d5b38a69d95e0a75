"""pneumo.lungs: the atlas placed as the training copies are framed, per-image masks found by name, growth along
each axis, and the two heat-map measures (mass and hottest point on the lungs)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pneumo import lungs as lungs_mod
from pneumo.lungs import (
    DEFAULT_ATLAS,
    LungMaskError,
    LungSource,
    grow,
    hottest_inside,
    load_atlas,
    mass_inside,
    place_atlas,
)


def _atlas(tmp_path, value: int = 200):
    """A 224 x 224 atlas with a known lung block: rows 56-167, columns 28-195 at ``value`` / 255."""
    a = np.zeros((224, 224), np.uint8)
    a[56:168, 28:196] = value
    a[100:120, 100:124] = 40  # the mediastinum, below any sensible level
    path = tmp_path / "atlas_224.png"
    Image.fromarray(a).save(path)
    return path


def test_the_atlas_is_placed_by_squashing_it_to_the_frame(tmp_path):
    atlas = load_atlas(_atlas(tmp_path))
    on_copy = place_atlas(atlas, (224, 224))
    assert on_copy[56:168, 28:196].sum() == 112 * 168 - 20 * 24 and on_copy.sum() == 112 * 168 - 20 * 24
    # an original twice as tall as wide: the training copy squashed it, so the atlas stretches back the same way
    tall = place_atlas(atlas, (448, 224))
    rows = np.flatnonzero(tall.any(axis=1))
    assert abs(rows[0] - 112) <= 1 and abs(rows[-1] - 335) <= 1  # rows 56-167 doubled
    assert not place_atlas(atlas, (224, 224), level=0.9).any()  # 200 / 255 is below 0.9


def test_missing_atlas_is_refused_by_name(tmp_path):
    with pytest.raises(LungMaskError, match="no lung atlas"):
        load_atlas(tmp_path / "nowhere.png")
    with pytest.raises(LungMaskError):
        LungSource.from_atlas(tmp_path / "nowhere.png")


def test_growth_is_a_share_of_each_side():
    mask = np.zeros((400, 200), bool)
    mask[190:210, 90:110] = True
    grown = grow(mask, 0.1)
    rows, cols = np.flatnonzero(grown.any(axis=1)), np.flatnonzero(grown.any(axis=0))
    # 0.1 of the height is 40 px down, 0.1 of the width 20 px across; the 256-px working grid rounds by ~2 px
    assert abs(rows[0] - 150) <= 3 and abs(rows[-1] - 249) <= 3
    assert abs(cols[0] - 70) <= 3 and abs(cols[-1] - 129) <= 3
    assert grown[mask].all()  # growing never loses the mask
    assert not grown[150, 70] and grown[200, 70]  # a disk, not a box: the corner of the bounding box stays out
    np.testing.assert_array_equal(grow(mask, 0.0), mask)


def test_growing_commutes_with_squashing():
    """Growth in shares of each side: grow then squash is squash then grow (up to the working grid's pixel)."""
    from pneumo.imaging import resize_map

    mask = np.zeros((300, 150), bool)
    mask[60:200, 20:70] = True
    a = resize_map(grow(mask, 0.05).astype(np.float32), (100, 100)) > 0.5
    b = grow(resize_map(mask.astype(np.float32), (100, 100)) > 0.5, 0.05)
    assert (a != b).mean() < 0.02


def test_per_image_masks_are_found_by_class_and_stem(tmp_path):
    masks = tmp_path / "lung_masks" / "val"
    for cls in ("NORMAL", "PNEUMONIA"):
        (masks / cls).mkdir(parents=True)
    m = np.zeros((60, 40), np.uint8)
    m[10:50, 5:15] = 255
    Image.fromarray(m).save(masks / "PNEUMONIA" / "person1_bacteria_1.png")
    Image.fromarray(255 - m).save(masks / "NORMAL" / "person1_bacteria_1.png")  # same stem, other class
    img = tmp_path / "images" / "PNEUMONIA" / "person1_bacteria_1.jpeg"
    src = LungSource.from_masks([img], tmp_path / "lung_masks", growth=0.0)
    got = src.mask(img, (60, 40))
    np.testing.assert_array_equal(got, m > 0)  # the PNEUMONIA one, at the image's own size
    assert src.region(img, (60, 40)).sum() == got.sum()  # growth 0
    assert LungSource.from_masks([img], tmp_path / "lung_masks").region(img, (60, 40)).sum() > got.sum()
    with pytest.raises(LungMaskError, match="1 of 2 images have none"):
        LungSource.from_masks([img, tmp_path / "images" / "NORMAL" / "other.jpeg"], tmp_path / "lung_masks")


def test_mass_and_hottest_point():
    lungs = np.zeros((8, 8), bool)
    lungs[2:6, 1:4] = True
    heat = np.zeros((8, 8))
    heat[3, 2], heat[7, 7] = 3.0, 1.0
    assert mass_inside(heat, lungs) == pytest.approx(0.75)
    assert hottest_inside(heat, lungs) is True
    heat[7, 7] = 4.0
    assert hottest_inside(heat, lungs) is False
    assert mass_inside(-heat, lungs) is None and hottest_inside(np.zeros((8, 8)), lungs) is None
    # a plateau clamped at the frame's edge counts by its centroid, not its first (edge) pixel
    plateau = np.zeros((8, 8))
    plateau[3:5, 0:4] = 1.0
    assert hottest_inside(plateau, lungs) is True  # centroid (3.5, 1.5) -> (4, 2), inside; first pixel (3, 0) is not


def test_the_shared_atlas_overlaps_the_true_masks(shared_data):
    """On the 16 originals, the atlas (> 0.3) placed on each frame covers most of each image's own lungs."""
    if not DEFAULT_ATLAS.is_file():
        pytest.skip(f"no atlas at {DEFAULT_ATLAS}")
    paths = sorted((shared_data / "chest_xray_fullres" / "val").rglob("*.jpeg"))
    true = LungSource.from_masks(paths, shared_data / "lung_masks")
    atlas = LungSource.from_atlas()
    covered = [atlas.mask(p, (128, 128))[true.mask(p, (128, 128))].mean() for p in paths]
    assert len(paths) == 16 and np.median(covered) > 0.7, covered


def test_default_paths_sit_beside_the_repository():
    from conftest import REPO

    assert REPO.parent / "shared" / "data" / "lung_masks" / "atlas_224.png" == lungs_mod.DEFAULT_ATLAS
