"""Heat maps from the ONNX path, in numpy: occlusion sensitivity (the default) and class activation maps.

:class:`HeatMapper` is the one entry point for ``pneumo explain``, the web page and the DICOM Secondary Capture. Its
methods (:data:`METHODS`):

- ``"occlusion"`` (the default, :mod:`pneumo.explain.occlusion`): the drop in calibrated pneumonia log-odds when
  each 16-px cell of an 8 x 8 grid is replaced by the same region of the model file's four normal training films
  (the mean over the four; the image's mean grey for model files without them), for any ONNX graph (no torch); 64
  occluded copies and the image itself in one network run per filler. The scale is **absolute**: 1.0 (dark red,
  the top of the colour scale) is a drop of :data:`pneumo.explain.occlusion.FULL_SCALE` (1.0) log-odds or more, e.g.
  P(pneumonia) 0.73 -> 0.5 when the region is hidden; 0.5 (yellow-green) is half of that; the overlay is
  transparent below ``ALPHA_FLOOR`` (0.15 of it). Odds are counted from P = 0.05 up
  (:data:`pneumo.explain.occlusion.FLOOR`), so an image called normal with P below 0.05 shows nothing; the map is
  never cut to the lungs.
- ``"cam"``: the class activation map, the old method, a 4 x 4 grid at 128 px, each map min-max scaled to its
  own maximum (full red is only "the hottest cell of this image"). Kept for comparison (``benchmarks/lung_maps.py``)
  and labelled so on every picture: on the bundled model its hottest point fell in the lungs for none of the 8
  pneumonia originals (own masks) and none of 100 block-validation pneumonia images (atlas).

For a network whose head is global average pooling then a linear layer, Grad-CAM on the last convolutional block
is the class activation map: the head's weights applied to the last feature maps. Model files exported by this
version compute that map inside their ONNX graph (output ``cam``, see :class:`pneumo.training.export.WithCam`), for
the pneumonia log-odds that ``pneumo explain`` has always explained. Computing it in the graph, rather than shipping
the feature maps and a copy of the head's weights in ``arrays.npz``, keeps one source of truth: the map always uses
the weights that made the prediction, ``.onnx`` files written by ``pneumo export`` carry it too, and nothing new has
to be read without torch (``safetensors`` is not an inference dependency). Graphs without it (older model files,
architectures without the pooling head) can fall back to PyTorch Grad-CAM on the model file's weights for ``"cam"``:
the caller hands that in (``grad_cam=``, e.g. :class:`pneumo.training.grad_cam.GradCam`, as ``pneumo explain
--method cam`` does), so this inference-side module never imports training code.

The colour map and the overlay's opacity live here too, so every picture of a heat map looks the same.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from pneumo.choices import HEAT_METHODS
from pneumo.explain.field import paint_edge
from pneumo.explain.occlusion import FULL_SCALE, MEAN, NORMAL, OcclusionGrid, evidence, heat
from pneumo.graph_names import CAM_OUTPUT
from pneumo.imaging import resize_map
from pneumo.inference import Predictor
from pneumo.modelfile import OCCLUSION_REFERENCE, ModelFile, ModelFileError, load_model_file
from pneumo.preprocess import to_input

OCCLUSION, CAM = METHODS = HEAT_METHODS  # the heat-map methods a HeatMapper offers; the first is the default

# Opacity of the overlay: transparent below ALPHA_FLOOR, then a smoothstep (continuous, with a continuous slope)
# up to ALPHA_MAX at the hottest point. A step in opacity draws the map's iso-line as a hard edge; bilinear maps
# from a 4 x 4 or 5 x 5 grid then show as stair-stepped rectangles over the lungs.
ALPHA_FLOOR = 0.15
ALPHA_MAX = 0.55


def odds_drop(log_odds: float) -> int:
    """A drop in log-odds as the percentage by which it lowers the odds (what a caption can say)."""
    return round(100 * (1 - math.exp(-log_odds)))


# An occlusion map whose peak stays under ALPHA_FLOOR draws nothing; every picture of one says why, in these words.
# Said in odds, not log-odds: hiding a region that lowers the log-odds by ALPHA_FLOOR * FULL_SCALE (0.15) divides the
# odds by exp(0.15) = 1.16, i.e. lowers them by 14 %.
EMPTY_MAP = (
    "nothing drawn: no single region carries the result (hiding any one lowers the odds of pneumonia by less than "
    f"{odds_drop(ALPHA_FLOOR * FULL_SCALE)} %)"
)

# matplotlib's "jet" (its ``_jet_data`` segments), interpolated continuously: the serve path has no matplotlib.
_JET = (
    ((0.0, 0.35, 0.66, 0.89, 1.0), (0.0, 0.0, 1.0, 1.0, 0.5)),
    ((0.0, 0.125, 0.375, 0.64, 0.91, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)),
    ((0.0, 0.11, 0.34, 0.65, 1.0), (0.5, 1.0, 1.0, 0.0, 0.0)),
)


def has_cam(predictor: Predictor) -> bool:
    """Whether the predictor's ONNX graph outputs the class activation map."""
    return CAM_OUTPUT in {o.name for o in predictor.session.get_outputs()}


def normalised_map(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A raw map (h x w, any sign) -> ReLU -> bilinear resize to ``shape`` -> min-max to [0, 1], float32.

    The steps and the 1e-7 in the denominator are pytorch-grad-cam's (``scale_cam_image``); min-max scaling
    commutes with the resize (bilinear weights sum to 1), so resizing once, straight to ``shape``, gives its
    result without the intermediate input-size map. A map with nothing positive is all zeros."""
    cam = resize_map(np.maximum(np.asarray(raw, dtype=np.float32), 0.0), shape)
    cam = cam - cam.min()
    return np.clip(cam / (1e-7 + cam.max()), 0.0, 1.0).astype(np.float32)


def jet(heat: np.ndarray) -> np.ndarray:
    """RGB colours (... x 3, float32 in [0, 1]) of ``heat`` in [0, 1] under matplotlib's "jet" colour map."""
    h = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    return np.stack([np.interp(h, xs, ys).astype(np.float32) for xs, ys in _JET], axis=-1)


def overlay_alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity of the overlay for ``heat`` in [0, 1]: 0 up to ``ALPHA_FLOOR``, a smoothstep up to ``ALPHA_MAX``
    at 1. Its slope is at most ``1.5 * ALPHA_MAX / (1 - ALPHA_FLOOR)`` and continuous, so the overlay fades in."""
    s = np.clip((np.asarray(heat, dtype=np.float32) - ALPHA_FLOOR) / (1.0 - ALPHA_FLOOR), 0.0, 1.0)
    return (ALPHA_MAX * s * s * (3.0 - 2.0 * s)).astype(np.float32)


def _colours(heat: np.ndarray, edge: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    colour, alpha = jet(heat), overlay_alpha(heat)
    paint_edge(colour, alpha, edge)
    return colour, alpha


def heatmap_rgba(heat: np.ndarray, edge: np.ndarray | None = None) -> np.ndarray:
    """The heat map as an RGBA image (H x W x 4, uint8) to lay over the X-ray: jet colours, smooth opacity; with
    ``edge`` (a lung-field model's, :func:`pneumo.explain.field.field_edge`) the field's edge dashed over it."""
    colour, alpha = _colours(heat, edge)
    return np.round(np.concatenate([colour, alpha[..., None]], axis=-1) * 255).astype(np.uint8)


def overlay_rgb(image: np.ndarray, heat: np.ndarray, edge: np.ndarray | None = None) -> np.ndarray:
    """The grayscale X-ray (H x W in [0, 1]) with the heat map (same shape), and a lung field's ``edge`` if given,
    composited over it, H x W x 3 uint8: what a burnt-in picture (a DICOM Secondary Capture) shows."""
    if np.shape(image) != np.shape(heat):
        raise ValueError(f"image {np.shape(image)} and heat map {np.shape(heat)} differ in shape")
    gray = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)[..., None]
    colour, alpha = _colours(heat, edge)
    return np.round(((1.0 - alpha[..., None]) * gray + alpha[..., None] * colour) * 255).astype(np.uint8)


NO_CAM = (
    "the graph has no class activation map; `pneumo explain --method cam` computes it with PyTorch Grad-CAM, or "
    "re-export the model with `pneumo export`"
)


class NoCamError(ModelFileError):
    """``"cam"`` asked of a graph without the map, and no Grad-CAM handed in (:class:`HeatMapper`)."""


class HeatMapper:
    """Heat maps of one loaded model by ``method`` (:data:`METHODS`): occlusion sensitivity on an absolute scale
    (the default, any ONNX graph, no torch), or the class activation map (``"cam"``: from the ONNX graph when it has
    it, else the PyTorch Grad-CAM the caller hands in as ``grad_cam``, a factory ``ModelFile -> object with
    heatmap(image)``).

    ``heatmap`` is safe to call from several threads (ONNX Runtime sessions are; the Grad-CAM fallback, whose
    hooks hold per-call state, runs under a lock). The fallback loads torch and the weights on first use, or
    up front with :meth:`prepare`.
    """

    def __init__(
        self,
        predictor: Predictor,
        method: str = OCCLUSION,
        grid: OcclusionGrid | None = None,
        grad_cam: Callable[[ModelFile], Any] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown heat-map method {method!r} (one of {', '.join(METHODS)})")
        self.predictor = predictor
        self.kind = method
        self.grid = grid or OcclusionGrid()
        self.onnx_cam = has_cam(predictor)
        self._grad_cam_factory = grad_cam
        self._grad_cam = None
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        """``"occlusion"``, ``"onnx-cam"`` (numpy, no torch) or ``"grad-cam"`` (the PyTorch fallback of ``"cam"``)."""
        if self.kind == OCCLUSION:
            return OCCLUSION
        return "onnx-cam" if self.onnx_cam else "grad-cam"

    @property
    def scale(self) -> str:
        """What the top of the colour scale means, in words (for a caption)."""
        if self.kind == OCCLUSION:
            return f"dark red = hiding it lowers the odds of pneumonia by {odds_drop(FULL_SCALE)} % or more"
        return (
            "class activation map, for comparison only: dark red = this image's hottest cell (each map scaled to its "
            "own maximum)"
        )

    @property
    def empty(self) -> str | None:
        """What a map with nothing drawn (peak under ``ALPHA_FLOOR``) means, in words (occlusion only; None for
        ``"cam"``, whose maps are scaled to their own maximum)."""
        if self.kind != OCCLUSION:
            return None
        return EMPTY_MAP

    def prepare(self) -> None:
        """Load what :meth:`heatmap` needs. For ``"cam"`` without the ONNX map: ImportError without torch /
        pytorch-grad-cam, ModelFileError or ValueError for a model file without PyTorch weights."""
        if self.method == "grad-cam":
            with self._lock:
                self._fallback()

    def evidence(self, image: np.ndarray) -> np.ndarray:
        """The occlusion evidence of one image at the model's input size (:func:`pneumo.explain.occlusion.evidence`:
        ``cells`` x ``cells``, the drop in calibrated pneumonia log-odds per cell, signed), on the unaltered view."""
        x = to_input([image], self.predictor.meta.preprocessing)[0]
        session, meta = self.predictor.session, self.predictor.meta
        reference = self.predictor.model.arrays.get(OCCLUSION_REFERENCE)
        fill = MEAN if reference is None else NORMAL  # model files finalised before the reference: mean grey
        return evidence(lambda b: session.run(["logits"], {"image": b})[0], x, meta.temperature,
                        meta.calibration_bias, self.grid, fill=fill, reference=reference)  # fmt: skip

    def raw_map(self, image: np.ndarray) -> np.ndarray:
        """The class activation map (h x w float32, before ReLU) of one image at the model's input size, on the
        unaltered view (content scale 1.0: test-time views are for the probability, not for the picture)."""
        x = to_input([image], self.predictor.meta.preprocessing)
        (cam,) = self.predictor.session.run([CAM_OUTPUT], {"image": x})
        return cam[0]

    def heatmap(self, image: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The heat map of the pneumonia log-odds for ``image`` (2-D in [0, 1] at the model's input size, as
        :func:`pneumo.imaging.load_image` returns it), float32 in [0, 1] at ``shape`` (height, width; default
        the input size), e.g. the display image's shape: the map is stretched back to the image's aspect ratio.
        Occlusion: on the absolute scale (see the module); ``"cam"``: scaled to the map's own maximum."""
        shape = tuple(shape or np.shape(image))
        if self.kind == OCCLUSION:
            return heat(self.evidence(image), shape)
        if self.onnx_cam:
            return normalised_map(self.raw_map(image), shape)
        with self._lock:
            cam = self._fallback().heatmap(image)
        return np.clip(resize_map(cam, shape), 0.0, 1.0).astype(np.float32)

    def _fallback(self):
        if self._grad_cam is None:
            if self._grad_cam_factory is None:
                raise NoCamError(f"{self.predictor.model.path or 'this model'}: {NO_CAM}")
            self._grad_cam = self._grad_cam_factory(self._with_weights(self.predictor.model))
        return self._grad_cam

    @staticmethod
    def _with_weights(model: ModelFile) -> ModelFile:
        if model.weights is not None:
            return model
        if model.path is None or model.path.suffix.lower() == ".onnx":
            raise ModelFileError(f"{model.path or 'this model'}: an ONNX graph without a heat-map output and no "
                                 "PyTorch weights; re-export it with `pneumo export`")  # fmt: skip
        return load_model_file(model.path)
