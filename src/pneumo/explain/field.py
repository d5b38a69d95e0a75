"""The lung field's edge on the heat map of a model that sees only its lung field (``lung_field`` in the training
config).

Such a network multiplies its input by a fixed field: outside it, it sees mean grey, or with ``field_blur`` only the
image's block means (the exposure, not its detail). Hiding a region there changes little or nothing, so the heat map
stays pale outside the field **by construction**, not because that region holds no evidence: a reader must be told
where that boundary runs. Every picture of such a model's map (the page, ``pneumo explain``, the DICOM Secondary
Capture) draws the field's edge as a dashed line in :data:`EDGE_RGB`, a colour outside the heat map's jet scale, and
says what it means (:func:`field_note`). The field comes from the model file (``arrays.npz``, :data:`LUNG_FIELD`);
numpy only.
"""

from __future__ import annotations

import numpy as np

from pneumo.imaging import resize_map
from pneumo.modelfile import LUNG_FIELD, ModelFile

EDGE_RGB = (255, 0, 255)  # magenta: jet runs blue, cyan, yellow, red; no heat reads as this
EDGE_ALPHA = 0.9
FIELD_LEVEL = 0.5  # the field is feathered over a few pixels; its edge is where it is half on
DASH_PX = 6  # at a 512-px display image; scaled with the image


def field_edge(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask at ``shape`` (height, width), true on a dashed line along the edge of ``field`` (input size,
    [0, 1]) stretched to ``shape`` as the heat map is. The line is drawn just inside the field, about one pixel per
    256 of the longer side wide; the frame's own border is never an edge."""
    h, w = shape
    inside = resize_map(np.asarray(field, dtype=np.float32), (h, w)) >= FIELD_LEVEL
    width = max(1, round(max(h, w) / 256))
    core = inside.copy()
    for _ in range(width):  # erode by one pixel in each of the four directions; the frame's border stays inside
        eroded = core.copy()
        eroded[1:, :] &= core[:-1, :]
        eroded[:-1, :] &= core[1:, :]
        eroded[:, 1:] &= core[:, :-1]
        eroded[:, :-1] &= core[:, 1:]
        core = eroded
    dash = max(2, round(DASH_PX * max(h, w) / 512))
    yy, xx = np.indices((h, w))
    return inside & ~core & ((yy // dash + xx // dash) % 2 == 0)


def model_field_edge(model: ModelFile, shape: tuple[int, int]) -> np.ndarray | None:
    """The field edge (:func:`field_edge`) of a model file's input field at ``shape``; None for a model that sees
    the whole frame (or a file finalised before the field was recorded)."""
    field = model.arrays.get(LUNG_FIELD)
    return None if field is None else field_edge(field, shape)


def field_note(model: ModelFile) -> str | None:
    """What the dashed line means, in words for a caption; None without a field."""
    if LUNG_FIELD not in model.arrays:
        return None
    blur = int(model.meta.arch_kwargs.get("field_blur") or 0)
    outside = f"only {blur}-px block means (the exposure)" if blur else "nothing (mean grey)"
    return f"dashed magenta line: the lung field; outside it the model sees {outside}, so the map is pale there"


def paint_edge(rgb: np.ndarray, alpha: np.ndarray | None, edge: np.ndarray | None) -> None:
    """Draw ``edge`` (H x W bool) into ``rgb`` (H x W x 3 float in [0, 1]) and, for an overlay, its opacity
    ``alpha`` (H x W), in place."""
    if edge is None:
        return
    if edge.shape != rgb.shape[:2]:
        raise ValueError(f"field edge {edge.shape} and picture {rgb.shape[:2]} differ in shape")
    rgb[edge] = np.asarray(EDGE_RGB, dtype=np.float32) / 255.0
    if alpha is not None:
        alpha[edge] = EDGE_ALPHA
