"""Occlusion sensitivity through ONNX Runtime, in numpy: where hiding part of the image lowers the pneumonia odds.

The image is cut into a ``cells`` x ``cells`` grid (8 x 8 by default: 16-px cells at 128 px). A window of ``span``
x ``span`` cells (one cell by default) slides over it one cell at a time, never past the frame, and each position
is filled (:data:`FILLERS`: the model file's normal films, or the image's mean grey; in the network's input space,
after the intensity normalisation, so the rest of the image is untouched); all the occluded copies and the image
itself go through the model's ONNX session in one run per filler.
A window's evidence is the drop it causes in the **calibrated** pneumonia log-odds (``z / T + b``: the
log-odds behind the probability ``pneumo predict`` reports, so the scale means the same for every model file),
counted above the log-odds of P(pneumonia) = :data:`FLOOR` only: changes among odds that already say "clearly
normal" are no evidence for pneumonia. A cell's evidence is the mean over the windows that cover it (one to
``span**2``). Several grids (e.g. 16-px and 32-px windows) can be combined: each pixel's evidence is then the mean
of its cell's evidence on each grid, in one network run; a blurred copy of the image can replace the flat grey
(:data:`FILLERS`).

A hidden window is filled with what a normal film shows there (``"normal"``): the model file carries four NORMAL
training images as the network sees them (:func:`normal_reference`, written by finalisation), each window is
filled from each in turn, and the evidence is the mean over the four (4 x 65 images through the network, about
0.46 s per map on 2 cores). A region then shows in proportion to how far it departs from a normal film in a way
the model reads as pneumonia. Flat grey, the filler of model files without the reference, is itself a change the
model can read: a grey patch over a dark lung resembles an opacity. Both were
chosen by measurement (``benchmarks/lung_maps.py --occlusion``, issue 30, each time by a rule written before
measuring): the 16-px window with flat grey over eight other layouts (over four models, (mass + hottest point in
the lungs) / 2 on the pneumonia originals with their own masks 0.369, against 0.359 with a blurred filler, 0.338 at
an 8-px stride, 0.298 with 32-px windows averaged in, 0.242 for a factorial design), then four normal images over
flat grey and over the mean normal image (over five models 0.499 against 0.384 and 0.368; on block validation with
the atlas 0.635 against 0.579 and 0.628). An image the model is sure of can still give a map that draws
nothing (24 % of the bundled model's validation pneumonia maps): no single region moves its odds by 0.15, because its
evidence is spread over many regions or repeated in several. The map then shows nothing rather than a peak
made up by rescaling, and the caption says why (:attr:`pneumo.explain.cam.HeatMapper.empty`).

The scale is absolute, never each map's own maximum: :func:`heat` maps a drop of :data:`FULL_SCALE` or more to 1
(the top of the colour scale), 0 or a rise (evidence for NORMAL) to 0. An image the model calls normal with P below
:data:`FLOOR` shows nothing; one just above it shows at most its distance to it (without the floor, the bundled
model's confident normals showed cues it reads on every image - shoulders, the laterality letter - at full
strength: 7 of the 8 normal originals peaked above half the scale at P <= 0.3). A map is never masked or cropped to
the lungs, so evidence the model reads outside them shows where it is.

The map is of the image as it is (content scale 1.0), as the class activation map was: test-time views serve the
probability, not the picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pneumo.imaging import resize_map
from pneumo.preprocess import to_input
from pneumo.probability import pneumonia_log_odds

CELLS = 8  # evidence grid per side
SPAN = 1  # window side in cells: one cell (16 px at 128 px); measured better on the lungs than 2 cells or both
# The drop of the calibrated pneumonia log-odds drawn at the top of the colour scale: 1.0 is, e.g., P(pneumonia)
# 0.73 -> 0.5 when the window is hidden. Measured on the bundled model (benchmarks/lung_maps.py prints it): the
# hottest cell of a validation pneumonia image drops the odds by a median 0.4 and 1.0 at the 90th percentile; at
# 2.0 most pneumonia maps would fall under the overlay's transparent floor.
FULL_SCALE = 1.0
FLOOR = 0.05  # P(pneumonia) below which the odds carry no evidence for pneumonia (see the module)
MEAN, BLUR, NORMAL = "mean", "blur", "normal"
# What fills a hidden window: the image's mean grey, the image blurred, or the model file's reference (NORMAL training
# images as the network sees them, :func:`normal_reference`; used whenever the model file has them).
FILLERS = (MEAN, BLUR, NORMAL)
REFERENCE_IMAGES = 256  # images per batch when the mean reference is computed (bounded memory)
# The model file's fillers: 0 = the mean normal image; K = K normal training images (K runs per map). 4: measured
# (the module's docstring; docs/experiments.md, "The normal filler").
REFERENCE_SAMPLES = 4
BLUR_PX = 8  # the blurred filler is the image at 1/8 of its side, scaled back up (bilinear)


@dataclass(frozen=True)
class OcclusionGrid:
    """The evidence grid (``cells`` per side) and the occluding window (``span`` cells per side, ``stride`` one
    cell). ``cells - span + 1`` windows per side: 64 occluded copies per map by default, which go through the
    network in one run with the image itself."""

    cells: int = CELLS
    span: int = SPAN

    def __post_init__(self):
        if not 1 <= self.span <= self.cells:
            raise ValueError(f"a window of {self.span} cells does not fit a grid of {self.cells}")

    @property
    def positions(self) -> int:
        """Window positions per side."""
        return self.cells - self.span + 1

    def edges(self, size: int) -> np.ndarray:
        """Pixel edges of the cells along a side of ``size`` pixels (``cells + 1`` of them)."""
        if size < self.cells:
            raise ValueError(f"an image of {size} px cannot hold {self.cells} cells")
        return np.round(np.linspace(0, size, self.cells + 1)).astype(int)

    def occluded(self, x: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
        """``x`` (1 x H x W, the network's input for one image) and its occluded copies: (1 + positions**2) x 1 x
        H x W, the image itself first, then the windows row by row, each filled from ``fill`` (an array of ``x``'s
        shape; default the image's mean grey, as the network sees it)."""
        x = np.asarray(x, dtype=np.float32)
        fill = filler(x, MEAN) if fill is None else np.asarray(fill, dtype=np.float32)
        return np.concatenate([x[None], self._windows(x, fill)])

    def _windows(self, x: np.ndarray, fill: np.ndarray) -> np.ndarray:
        ey, ex = self.edges(x.shape[-2]), self.edges(x.shape[-1])
        n = self.positions
        batch = np.repeat(x[None], n * n, axis=0)
        for k in range(n * n):
            a, b = divmod(k, n)
            window = (slice(None), slice(ey[a], ey[a + self.span]), slice(ex[b], ex[b + self.span]))
            batch[k][window] = fill[window]
        return batch

    def cell_means(self, drops: np.ndarray) -> np.ndarray:
        """Per cell, the mean drop of the windows covering it: ``positions x positions`` -> ``cells x cells``."""
        total = np.zeros((self.cells, self.cells), dtype=np.float64)
        count = np.zeros_like(total)
        for a in range(self.positions):
            for b in range(self.positions):
                total[a : a + self.span, b : b + self.span] += drops[a, b]
                count[a : a + self.span, b : b + self.span] += 1
        return (total / count).astype(np.float32)


def filler(x: np.ndarray, kind: str = MEAN, reference: np.ndarray | None = None) -> np.ndarray:
    """What fills a hidden window, for the network input ``x`` (1 x H x W): its mean grey everywhere (``"mean"``),
    ``x`` blurred (``"blur"``: shrunk to 1/:data:`BLUR_PX` of its side and scaled back up), which removes texture
    and edges but keeps each region's brightness, or ``reference`` (``"normal"``: H x W, what a normal film shows
    there on average, :func:`normal_reference`)."""
    x = np.asarray(x, dtype=np.float32)
    if kind == NORMAL:
        if reference is None or np.shape(reference) != x.shape[-2:]:
            got = "none" if reference is None else "x".join(map(str, np.shape(reference)))
            raise ValueError(f"the normal filler needs a reference of {x.shape[-2]}x{x.shape[-1]}, got {got}")
        return np.asarray(reference, dtype=np.float32)[None]
    if kind == MEAN:
        return np.full_like(x, x.mean())
    if kind == BLUR:
        h, w = x.shape[-2:]
        small = resize_map(x[0], (max(1, round(h / BLUR_PX)), max(1, round(w / BLUR_PX))))
        return resize_map(small, (h, w))[None].astype(np.float32)
    raise ValueError(f"unknown occlusion filler {kind!r} (one of {', '.join(FILLERS)})")


def evidence(
    run,
    x: np.ndarray,
    temperature: float = 1.0,
    bias: float = 0.0,
    grid: OcclusionGrid | Sequence[OcclusionGrid] | None = None,
    floor: float | None = FLOOR,
    fill: str = MEAN,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """The occlusion evidence of one image: float32, signed, the drop in calibrated pneumonia log-odds
    ``z / temperature + bias``, each side counted from the log-odds of ``floor`` up (None: no floor); positive
    where hiding the region lowers the odds. ``cells`` x ``cells`` for one grid; for several (multi-scale), on the
    finest grid, each cell the mean of its evidence on every grid (their cell counts must divide the finest's).
    ``x`` is its network input (1 x H x W); ``run(batch) -> logits`` is one ONNX session run over the whole batch;
    ``fill`` is the filler (:data:`FILLERS`; ``reference`` for ``"normal"``: H x W, or K x H x W for K reference
    images, the evidence then the mean of each one's, at K network runs)."""
    if fill == NORMAL and reference is not None and np.ndim(reference) == 3:  # several references: their mean
        maps = [evidence(run, x, temperature, bias, grid, floor, fill, ref) for ref in np.asarray(reference)]
        return np.mean(maps, axis=0).astype(np.float32)
    grids = [grid or OcclusionGrid()] if grid is None or isinstance(grid, OcclusionGrid) else list(grid)
    finest = max((g.cells for g in grids), default=0)
    if not grids or any(finest % g.cells for g in grids):
        raise ValueError(f"grids of {[g.cells for g in grids]} cells do not nest")
    x = np.asarray(x, dtype=np.float32)
    patches = filler(x, fill, reference)
    batch = np.concatenate([x[None], *(g._windows(x, patches) for g in grids)])
    z = pneumonia_log_odds(np.asarray(run(batch))) / temperature + bias
    if floor is not None:
        z = np.maximum(z, np.log(floor / (1.0 - floor)))
    out, start = np.zeros((finest, finest), dtype=np.float64), 1
    for g in grids:
        n = g.positions
        cells = g.cell_means((z[0] - z[start : start + n * n]).reshape(n, n))
        start += n * n
        k = finest // g.cells
        out += np.kron(cells, np.ones((k, k)))  # a coarse cell's evidence on each of its fine cells
    return (out / len(grids)).astype(np.float32)


def heat(cells: np.ndarray, shape: tuple[int, int], full_scale: float = FULL_SCALE) -> np.ndarray:
    """Evidence (:func:`evidence`) as a heat map at ``shape`` (height, width), float32 in [0, 1] on the absolute
    scale: 1 at a drop of ``full_scale`` calibrated log-odds or more, 0 where hiding the region does not lower the
    odds. Bilinear between cell centres, so the grid does not show as blocks."""
    scaled = np.clip(np.asarray(cells, dtype=np.float32) / full_scale, 0.0, 1.0)
    return np.clip(resize_map(scaled, shape), 0.0, 1.0).astype(np.float32)


def _network_views(images: np.ndarray, preprocessing):
    """``images`` (N x H x W uint8) as the network sees them, float32 chunks of at most :data:`REFERENCE_IMAGES`."""
    for start in range(0, len(images), REFERENCE_IMAGES):
        yield to_input(np.asarray(images[start : start + REFERENCE_IMAGES]), preprocessing)[:, 0].astype(np.float32)


def normal_reference(images: np.ndarray, preprocessing, samples: int | None = None, seed: int = 0) -> np.ndarray:
    """The ``"normal"`` fillers of a model, K x H x W float32 as the network sees them (``images``: its NORMAL
    training images, N x H x W uint8 at the input size, through :func:`pneumo.preprocess.to_input`). With ``samples``
    0 the mean image (K = 1: a region replaced by it looks as an average normal film looks there); with ``samples``
    K, K of the images drawn with ``seed`` (the map is then the mean over K plausible normal films, at K runs).
    Default :data:`REFERENCE_SAMPLES`. Written into the model file by finalisation."""
    samples = REFERENCE_SAMPLES if samples is None else samples
    if len(images) == 0:
        raise ValueError("no normal training image to average")
    if samples > 0:
        pick = np.sort(np.random.default_rng(seed).choice(len(images), min(samples, len(images)), replace=False))
        return to_input(np.asarray(images[pick]), preprocessing)[:, 0].astype(np.float32)
    total = sum(part.astype(np.float64).sum(0) for part in _network_views(images, preprocessing))
    return (total / len(images)).astype(np.float32)[None]


def synthetic_reference(
    images: np.ndarray, preprocessing, samples: int = REFERENCE_SAMPLES, components: int = 32, seed: int = 0
) -> np.ndarray:
    """``samples`` fillers drawn from a Gaussian model of ``images`` (NORMAL training images, N x H x W uint8 at the
    input size) as the network sees them: their mean plus their top ``components`` principal directions, each weighted
    by a seeded standard-normal number times that direction's spread. K x H x W float32, as
    :func:`normal_reference`; an aggregate of all the films, like the lung atlas, and none of them: no child's image
    goes into the model file. Measured and not shipped (docs/experiments.md, "Synthetic normal fillers"): with 32
    components the maps land on the lungs less often than with four real films (over five models, (mass + hottest
    point) / 2 on block validation 0.601 against 0.635; on the pneumonia originals with their own masks 0.415
    against 0.499), and worse still with 128."""
    if len(images) < 2:
        raise ValueError("a model of normal films needs at least two of them")
    x = np.concatenate(list(_network_views(images, preprocessing)))
    n, shape = len(x), x.shape[1:]
    mean = x.mean(0, dtype=np.float64)
    centred = (x.reshape(n, -1) - mean.reshape(1, -1)).astype(np.float64)
    # the principal directions from the N x N Gram matrix (N films, far fewer than pixels)
    values, vectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(values)[::-1][: min(components, n - 1)]
    values = np.maximum(values[order], 0.0)
    directions = (vectors[:, order].T @ centred) / np.sqrt(np.maximum(values, 1e-12))[:, None]  # unit rows
    spread = np.sqrt(values / (n - 1))
    weights = np.random.default_rng(seed).standard_normal((samples, len(order))) * spread
    films = mean.reshape(1, -1) + weights @ directions
    return films.reshape(samples, *shape).astype(np.float32)
