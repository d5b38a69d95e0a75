"""Occlusion sensitivity through ONNX Runtime, in numpy: where hiding part of the image lowers the pneumonia odds.

The image is cut into a ``cells`` x ``cells`` grid (8 x 8 by default: 16-px cells at 128 px). A window of ``span``
x ``span`` cells (a quarter of the side by default) slides over it one cell at a time, never past the frame, and each
position is filled with the image's mean grey (in the network's input space, after the intensity normalisation, so
the rest of the image is untouched); all the occluded copies and the image itself go through the model's ONNX
session in one run. A window's evidence is the drop it causes in the **calibrated** pneumonia log-odds (``z / T +
b``: the log-odds behind the probability ``pneumo predict`` reports, so the scale means the same for every model
file), counted above the log-odds of P(pneumonia) = :data:`FLOOR` only: changes among odds that already say "clearly
normal" are no evidence for pneumonia. A cell's evidence is the mean over the windows that cover it (one to
``span**2``), a smoothing that costs nothing.

The scale is absolute, never each map's own maximum: :func:`heat` maps a drop of :data:`FULL_SCALE` or more to 1
(the top of the colour scale), 0 or a rise (evidence for NORMAL) to 0. An image the model calls normal with P below
:data:`FLOOR` shows nothing; one just above it shows at most its distance to it (without the floor, the bundled
model's confident normals showed cues it reads on every image - shoulders, the laterality letter - at full strength:
7 of the 8 normal originals peaked above half the scale at P <= 0.3). A map is never masked or cropped to the lungs,
so evidence the model reads outside them shows where it is.

The map is of the image as it is (content scale 1.0), as the class activation map was: test-time views serve the
probability, not the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo.imaging import resize_map
from pneumo.probability import pneumonia_log_odds

CELLS = 8  # evidence grid per side
SPAN = 1  # window side in cells: one cell (16 px at 128 px); measured better on the lungs than 2 cells
# The drop of the calibrated pneumonia log-odds drawn at the top of the colour scale: 1.0 is, e.g., P(pneumonia)
# 0.73 -> 0.5 when the window is hidden. Measured on the bundled model (benchmarks/lung_maps.py prints it): the
# hottest cell of a validation pneumonia image drops the odds by a median 0.4 and 1.0 at the 90th percentile; at
# 2.0 most pneumonia maps would fall under the overlay's transparent floor.
FULL_SCALE = 1.0
FLOOR = 0.05  # P(pneumonia) below which the odds carry no evidence for pneumonia (see the module)


@dataclass(frozen=True)
class OcclusionGrid:
    """The evidence grid (``cells`` per side) and the occluding window (``span`` cells per side, ``stride`` one
    cell). ``cells - span + 1`` windows per side: 49 network runs per map by default."""

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

    def occluded(self, x: np.ndarray) -> np.ndarray:
        """``x`` (1 x H x W, the network's input for one image) and its occluded copies: (1 + positions**2) x 1 x
        H x W, the image itself first, then the windows row by row."""
        ey, ex = self.edges(x.shape[-2]), self.edges(x.shape[-1])
        fill = np.float32(x.mean())  # the image's mean grey, as the network sees it
        n = self.positions
        batch = np.repeat(x[None], 1 + n * n, axis=0)
        for k in range(n * n):
            a, b = divmod(k, n)
            batch[1 + k, :, ey[a] : ey[a + self.span], ex[b] : ex[b + self.span]] = fill
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


def evidence(
    run,
    x: np.ndarray,
    temperature: float = 1.0,
    bias: float = 0.0,
    grid: OcclusionGrid | None = None,
    floor: float | None = FLOOR,
) -> np.ndarray:
    """The occlusion evidence (``cells`` x ``cells`` float32, signed: the drop in calibrated pneumonia log-odds
    ``z / temperature + bias``, each side counted from the log-odds of ``floor`` up (None: no floor); positive
    where hiding the region lowers the odds) of one image. ``x`` is its network input (1 x H x W); ``run(batch) ->
    logits`` is one ONNX session run over the whole batch."""
    grid = grid or OcclusionGrid()
    z = pneumonia_log_odds(np.asarray(run(grid.occluded(np.asarray(x, dtype=np.float32))))) / temperature + bias
    if floor is not None:
        z = np.maximum(z, np.log(floor / (1.0 - floor)))
    drops = (z[0] - z[1:]).reshape(grid.positions, grid.positions)
    return grid.cell_means(drops)


def heat(cells: np.ndarray, shape: tuple[int, int], full_scale: float = FULL_SCALE) -> np.ndarray:
    """Evidence (:func:`evidence`) as a heat map at ``shape`` (height, width), float32 in [0, 1] on the absolute
    scale: 1 at a drop of ``full_scale`` calibrated log-odds or more, 0 where hiding the region does not lower the
    odds. Bilinear between cell centres, so the grid does not show as blocks."""
    scaled = np.clip(np.asarray(cells, dtype=np.float32) / full_scale, 0.0, 1.0)
    return np.clip(resize_map(scaled, shape), 0.0, 1.0).astype(np.float32)
