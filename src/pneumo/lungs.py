"""Where the lungs are, for the lung checks of the shift suite and for measuring heat maps: the atlas placed on the
frame as the training copies are framed, or each image's own mask.

The atlas (``lung_masks/atlas_224.png`` in the shared data, not part of this package) is the mean of the lung masks
of the training images, each squashed to 224 x 224 as the training copies were: a pixel's value is the share of
training images with lung there. The training copies are squashes of the originals too, so the atlas is placed on
any image by squashing it to the image's own size: pixel for pixel on a 224 x 224 copy, stretched on an original.
Above :data:`ATLAS_LEVEL` it stands for the lungs; it is a prior, not a mask of any one image (framing varies).

A per-image mask (255 = lung, at the image's own size) is found by the image's class folder and stem under a masks
folder (``lung_masks/val/PNEUMONIA/person1946_bacteria_4874.png`` for ``.../PNEUMONIA/person1946_bacteria_4874.jpeg``).

The region the lung checks hide (or keep) is the mask grown by ``grow`` of the image's side along each axis: the
per-image masks by :data:`MASK_GROWTH` (4 %, so the lung's edge goes with it), the atlas not at all (above 0.3 it
already spans more than one child's lungs). Growth is measured in shares of each side, so growing then squashing
gives what squashing then growing does.

Files are read through :func:`pneumo.imaging.load_image`, like every image. Nothing here is needed to predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from pneumo.errors import DataError
from pneumo.imaging import load_image, resize_map

ATLAS_LEVEL = 0.3  # atlas value above which a pixel counts as lung (39 % of the frame)
MASK_GROWTH = 0.04  # per-image masks are grown by this share of each side for the lung checks
_GROW_GRID = 256  # growth is computed on a square grid of this size (a squash: shares of each side become equal)
# The repository's sibling shared-data folder; a user's clone has none, and everything that needs it then skips.
DEFAULT_MASKS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lung_masks"
DEFAULT_ATLAS = DEFAULT_MASKS / "atlas_224.png"


class LungMaskError(DataError):
    """No atlas or no lung mask where one was asked for."""


@cache
def load_atlas(path: str | Path | None = None) -> np.ndarray:
    """The atlas (224 x 224 float32 in [0, 1]: the share of training images with lung at each pixel); default
    :data:`DEFAULT_ATLAS`. LungMaskError when it is not there."""
    path = Path(path or DEFAULT_ATLAS)
    if not path.is_file():
        raise LungMaskError(f"{path}: no lung atlas there (give the path of lung_masks/atlas_224.png)")
    atlas = load_image(path, name=str(path))
    atlas.setflags(write=False)  # cached and shared
    return atlas


def place_atlas(atlas: np.ndarray, shape: tuple[int, int], level: float = ATLAS_LEVEL) -> np.ndarray:
    """The atlas's lungs on an image of ``shape`` (height, width), framed as the training copies are: the atlas
    squashed to the image's size (bilinear), above ``level``. Bool, ``shape``."""
    return resize_map(atlas, shape) > level


def grow(mask: np.ndarray, by: float) -> np.ndarray:
    """``mask`` grown by ``by`` of its height down and of its width across (an ellipse, computed on a square grid
    of 256 px on which both shares are the same number of pixels), at its own shape. ``by = 0`` returns it as is."""
    mask = np.asarray(mask, dtype=bool)
    if by <= 0 or not mask.any():
        return mask
    small = resize_map(mask.astype(np.float32), (_GROW_GRID, _GROW_GRID)) > 0.5
    r = max(1, round(by * _GROW_GRID))
    padded = np.pad(small, r)
    out = np.zeros_like(small)
    for dy in range(-r, r + 1):
        half = int(np.sqrt(r * r - dy * dy))
        for dx in range(-half, half + 1):  # the disk's offsets: the union of shifted copies is the dilation
            out |= padded[r + dy : r + dy + _GROW_GRID, r + dx : r + dx + _GROW_GRID]
    return (resize_map(out.astype(np.float32), mask.shape) > 0.5) | mask


def load_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A per-image lung mask file (255 = lung) as bool, at ``shape`` (height, width) if given (squashed)."""
    return load_image(path, shape, name=str(path)) > 0.5


def mask_index(root: str | Path | None = None) -> dict[tuple[str, str], Path]:
    """The per-image masks under ``root`` (default :data:`DEFAULT_MASKS`), keyed by (class folder, file stem);
    empty when the folder is absent."""
    root = Path(root or DEFAULT_MASKS)
    if not root.is_dir():
        return {}
    return {(p.parent.name, p.stem): p for p in sorted(root.rglob("*.png")) if p.parent != root}


@dataclass(frozen=True, eq=False)
class LungSource:
    """Where an image's lungs are: the atlas placed on its frame (``atlas``) or its own mask file (``files``, by
    image path). :meth:`mask` is the lungs (for measuring heat maps), :meth:`region` the mask grown by ``growth``
    (what the lung checks hide or keep). Build one with :meth:`from_atlas` or :meth:`from_masks`."""

    name: str
    atlas: np.ndarray | None = field(default=None, repr=False)
    files: dict[str, Path] | None = field(default=None, repr=False)
    level: float = ATLAS_LEVEL
    growth: float = 0.0

    @classmethod
    def from_atlas(cls, path: str | Path | None = None, level: float = ATLAS_LEVEL, growth: float = 0.0):
        """The atlas (default :data:`DEFAULT_ATLAS`) above ``level``; LungMaskError when the file is absent."""
        return cls(name="atlas", atlas=load_atlas(path), level=level, growth=growth)

    @classmethod
    def from_masks(cls, images: Sequence[str | Path], root: str | Path | None = None, growth: float = MASK_GROWTH):
        """Each of ``images``' own masks under ``root`` (default :data:`DEFAULT_MASKS`), matched by class folder
        and stem; LungMaskError unless every image has one (a check on a subset would not compare with the
        clean figures of the whole set)."""
        index = mask_index(root)
        files, missing = {}, []
        for img in map(Path, images):
            found = index.get((img.parent.name, img.stem))
            (missing.append(img) if found is None else files.__setitem__(str(img), found))
        if missing or not files:
            first = missing[0] if missing else "(no images)"
            raise LungMaskError(f"{first}: no lung mask under {Path(root or DEFAULT_MASKS)} "
                                f"({len(missing)} of {len(images)} images have none)")  # fmt: skip
        return cls(name="lung masks", files=files, growth=growth)

    def describe(self) -> str:
        """What the region is, in words, for a report."""
        what = f"atlas > {self.level:g}" if self.atlas is not None else "each image's own lung mask"
        return what + (f", grown by {self.growth:.0%} of the side" if self.growth > 0 else "")

    def mask(self, image: str | Path, shape: tuple[int, int]) -> np.ndarray:
        """The lungs of ``image`` (its path) on a frame of ``shape`` (height, width): bool."""
        if self.atlas is not None:
            return place_atlas(self.atlas, shape, self.level)
        try:
            return load_mask(self.files[str(image)], shape)
        except KeyError:
            raise LungMaskError(f"{image}: no lung mask for this image") from None

    def region(self, image: str | Path, shape: tuple[int, int]) -> np.ndarray:
        """What the lung checks hide (or keep) on ``image``: :meth:`mask` grown by :attr:`growth`."""
        return grow(self.mask(image, shape), self.growth)


def atlas_available(path: str | Path | None = None) -> bool:
    """Whether the atlas file is there (default :data:`DEFAULT_ATLAS`)."""
    return Path(path or DEFAULT_ATLAS).is_file()


def mass_inside(heat: np.ndarray, lungs: np.ndarray) -> float | None:
    """The share of a heat map's positive mass that lies on ``lungs`` (same shape); None for a map with none."""
    h = np.maximum(np.asarray(heat, dtype=np.float64), 0.0)
    total = h.sum()
    return None if total <= 0 else float(h[np.asarray(lungs, dtype=bool)].sum() / total)


def hottest_inside(heat: np.ndarray, lungs: np.ndarray) -> bool | None:
    """Whether the hottest point of a heat map lies on ``lungs`` (same shape); None for a map with nothing positive.
    A plateau of equal maxima (a bilinear map clamped at the frame's edge) counts by its centroid, not by its first
    pixel, which would always sit on the edge."""
    h = np.asarray(heat, dtype=np.float64)
    top = h.max()
    if top <= 0:
        return None
    ys, xs = np.nonzero(h >= top - 1e-6 * top)
    return bool(np.asarray(lungs, dtype=bool)[round(float(ys.mean())), round(float(xs.mean()))])
