"""One image through the model: decode once, predict, and a heat map that may fail without costing the prediction.

The service behind ``pneumo explain`` (:mod:`pneumo.explain.explainer`), the web page
(:mod:`pneumo.serve.upload_result`) and the DICOM results (:mod:`pneumo.dicom.instance`, ``pneumo predict
--dicom-out``, the DICOM node). One opening of the source gives the network input and the display image
(:func:`pneumo.imaging.load_image_and_display`); the probability comes from the same ONNX path as ``pneumo
predict``; the heat map from :class:`pneumo.explain.cam.HeatMapper` (occlusion sensitivity on an absolute scale by
default; ``method="cam"`` for the old class activation map), at the display image's shape.

A heat map is an extra for the server and the DICOM node: when it cannot be made, the result goes out without it
and says why (``heatmap_error``). ``pneumo explain`` exists for the heat map, so there (``fail_soft=False``) a
failure is an error.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.explain.cam import NO_CAM, OCCLUSION, HeatMapper, NoCamError
from pneumo.explain.field import field_note, model_field_edge
from pneumo.imaging import DISPLAY_MAX, load_image_and_display
from pneumo.inference import Prediction, Predictor, Source
from pneumo.modelfile import ModelFile, ModelFileError

# Why there is no heat map, in words for the person who asked for one.
NO_EXTRA = (
    "heat maps for this model file need the 'explain' extra (torch, grad-cam) installed here; "
    "a model file re-exported with `pneumo export` has them without torch"
)
NO_WEIGHTS = "heat maps need a .pneumo model file with PyTorch weights; this model has none"
UNAVAILABLE = "heat maps are unavailable here (see the log)"
FAILED = "the heat map could not be computed for this image"
SWITCHED_OFF = "heat maps are switched off"


@dataclass
class ImageAnalysis:
    """What one image gave: the prediction, the display image (aspect ratio kept, [0, 1]) and, when asked for and
    possible, the heat map at the display image's shape ([0, 1]; on the absolute scale of
    :class:`pneumo.explain.cam.HeatMapper` for occlusion maps); ``heatmap_error`` says why it is missing. With a map,
    a model that sees only its lung field also gives the field's edge (:mod:`pneumo.explain.field`)."""

    prediction: Prediction
    image: np.ndarray
    heatmap: np.ndarray | None = None
    heatmap_error: str | None = None
    field_edge: np.ndarray | None = None  # a lung-field model's field edge at the heat map's shape, to draw over it
    field_note: str | None = None  # what that edge means, in words (with the edge, and only with it)


class ImageAnalyser:
    """Analyses images with one loaded :class:`Predictor`; safe to call from several threads.

    ``max_side`` bounds the display image; ``heatmaps=False`` never makes one (nor loads what it needs); with
    ``fail_soft`` (the default) a heat map that cannot be made is logged to ``log`` and left out, without it the
    exception propagates. ``method`` is the heat-map method (:data:`pneumo.explain.cam.METHODS`). What the heat maps
    need (torch and the weights, for the class activation map of graphs without it) is loaded on first use, once,
    or up front with :meth:`prepare`."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_side: int = DISPLAY_MAX,
        heatmaps: bool = True,
        fail_soft: bool = True,
        log: logging.Logger | None = None,
        method: str = OCCLUSION,
        grad_cam: Callable[[ModelFile], Any] | None = None,
    ):
        self.predictor = predictor
        self.max_side = max_side
        self.heatmaps = heatmaps
        self.fail_soft = fail_soft
        self.log = log or logging.getLogger("pneumo.explain.analyser")
        self._mapper = HeatMapper(predictor, method, grad_cam=grad_cam) if heatmaps else None
        self._lock = threading.Lock()
        self._ready = False
        self.unavailable: str | None = None if heatmaps else SWITCHED_OFF  # why no heat maps can be made

    @property
    def method(self) -> str | None:
        """``"occlusion"``, ``"onnx-cam"`` or ``"grad-cam"`` (:attr:`pneumo.explain.cam.HeatMapper.method`); None
        without heat maps."""
        return None if self._mapper is None else self._mapper.method

    @property
    def scale(self) -> str | None:
        """What the top of the colour scale means (:attr:`pneumo.explain.cam.HeatMapper.scale`); None without
        heat maps."""
        return None if self._mapper is None else self._mapper.scale

    @property
    def empty(self) -> str | None:
        """What a map with nothing drawn means (:attr:`pneumo.explain.cam.HeatMapper.empty`); None without heat
        maps or for the class activation map."""
        return None if self._mapper is None else self._mapper.empty

    def decode(self, source: Source, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(network input, display image) from one opening of ``source``; ImageLoadError when it cannot be read."""
        return load_image_and_display(source, self.predictor.size, self.max_side, name=name)

    def analyse(self, source: Source, name: str, *, heatmap: bool = True) -> ImageAnalysis:
        """Decode (once), predict and, with ``heatmap``, explain one image (a path or the file's bytes)."""
        net_input, display = self.decode(source, name)
        return self.analyse_decoded(net_input, display, name, heatmap=heatmap)

    def analyse_decoded(
        self,
        net_input: np.ndarray,
        display: np.ndarray,
        name: str,
        *,
        heatmap: bool = True,
        mirror: bool = False,
    ) -> ImageAnalysis:
        """As :meth:`analyse`, for an image already decoded by :meth:`decode` (``mirror``: as ``pneumo predict
        --tta``). A prediction that failed (no finite probability) gets no heat map: there is nothing to explain."""
        prediction = self.predictor.predict_arrays([net_input], [name], mirror=mirror)[0]
        result = ImageAnalysis(prediction=prediction, image=display)
        if heatmap and prediction.error is None:
            result.heatmap, result.heatmap_error = self.heatmap(net_input, display.shape)
            if result.heatmap is not None:
                result.field_edge = model_field_edge(self.predictor.model, display.shape)
                result.field_note = None if result.field_edge is None else field_note(self.predictor.model)
        return result

    def heatmap(
        self, net_input: np.ndarray, shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray | None, str | None]:
        """(heat map at ``shape`` in [0, 1], None) or, fail-soft, (None, why not)."""
        if not self.prepare():
            return None, self.unavailable
        if not self.fail_soft:
            return self._mapper.heatmap(net_input, shape), None
        try:  # no lock: ONNX Runtime runs concurrent maps; the Grad-CAM fallback locks inside the mapper
            return self._mapper.heatmap(net_input, shape), None
        except Exception as exc:  # a heat map is an extra: its failure must not cost the prediction
            log_exception(self.log, "heat map failed; the result goes without it", exc)
            return None, FAILED

    def prepare(self) -> bool:
        """Whether heat maps can be made, finding out once (:meth:`pneumo.explain.cam.HeatMapper.prepare`); when not,
        :attr:`unavailable` says why (fail-soft) or the exception propagates."""
        if self._mapper is None:
            return False
        with self._lock:
            if not self._ready and (self.unavailable is None or not self.fail_soft):
                self._ready = self._load_mapper()
        return self._ready

    def _load_mapper(self) -> bool:
        try:
            self._mapper.prepare()  # a no-op on the ONNX path; loads torch and the weights for the Grad-CAM fallback
        except Exception as exc:
            if not self.fail_soft:
                raise
            if isinstance(exc, NoCamError):
                self.unavailable = NO_CAM
            elif isinstance(exc, ImportError):
                self.unavailable = NO_EXTRA
            elif isinstance(exc, ModelFileError | ValueError):
                self.unavailable = NO_WEIGHTS
            else:
                self.unavailable = UNAVAILABLE
                log_exception(self.log, "the heat-map model failed to load", exc)
            self.log.warning("no heat maps (%s): %s", type(exc).__name__, self.unavailable)
            return False
        self.log.info("heat maps: %s", self._mapper.method)
        return True


def log_exception(log: logging.Logger, what: str, exc: BaseException) -> None:
    """Where it failed (module, line, function per frame) and the exception type: no message and no source text,
    since either can carry a patient's or a client's file name."""
    frames = "\n".join(
        f"  {Path(f.filename).name}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)
    )
    log.error("%s: %s\n%s", what, type(exc).__name__, frames)
