"""One upload -> prediction, the X-ray as PNG for the browser (DICOM included) and, when asked, a Grad-CAM heat map.

Runs in a worker thread. The probability comes from the same ONNX path and the same decoding as ``pneumo predict``;
so does the heat map when the model file's graph has the class activation map (no torch); otherwise the PyTorch twin
behind a Grad-CAM heat map is loaded on first use and shared under a lock (Grad-CAM hooks are stateful).
"""

from __future__ import annotations

import io
import logging
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumo.cam import HeatMapper, heatmap_rgba
from pneumo.imaging import DISPLAY_MAX, ImageLoadError, load_image_and_display, maybe_headerless_dicom, sniff_format
from pneumo.inference import Prediction, Predictor
from pneumo.modelfile import ModelFileError
from pneumo.serve.upload import unsupported_reason

log = logging.getLogger("pneumo.serve")


class UnsupportedImage(Exception):
    """Content that is not an image format the service reads (415)."""


class UnreadableImage(Exception):
    """A supported format that cannot be decoded: truncated, damaged, no pixel data, too large (422)."""


@dataclass
class Analysis:
    prediction: Prediction
    image_png: bytes
    heatmap_png: bytes | None = None
    explain_error: str | None = None


def gray_png(image: np.ndarray) -> bytes:
    """A [0, 1] grayscale array as 8-bit PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def heatmap_rgba_png(cam: np.ndarray) -> bytes:
    """A [0, 1] heat map as a transparent RGBA PNG to lay over the X-ray: jet colours, opacity rising smoothly
    with heat (:func:`pneumo.cam.heatmap_rgba`, numpy only)."""
    buf = io.BytesIO()
    Image.fromarray(heatmap_rgba(cam), mode="RGBA").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


class Analyser:
    """Wraps a loaded Predictor; explains with a :class:`pneumo.cam.HeatMapper` (the ONNX map, or a lazily
    loaded PyTorch Grad-CAM for model files without it)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._lock = threading.Lock()
        self._mapper = HeatMapper(predictor)
        self._ready = False
        self._explainer_error: str | None = None

    def decode(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(network input, display image); raises UnsupportedImage or UnreadableImage."""
        if sniff_format(data) is None and not maybe_headerless_dicom(data):  # GIF, PDF, text: refused by name
            raise UnsupportedImage(unsupported_reason(data))
        try:
            net_input, display = load_image_and_display(data, self.predictor.size, DISPLAY_MAX, name=name)
        except ImageLoadError as exc:
            raise (UnsupportedImage if exc.kind == "unsupported" else UnreadableImage)(str(exc)) from None
        return net_input, display

    def analyse(self, data: bytes, name: str, explain: bool = False) -> Analysis:
        """Decode, predict and (optionally) explain one upload held in memory."""
        net_input, display = self.decode(data, name)
        prediction = self.predictor.predict_arrays([net_input], [name])[0]
        result = Analysis(prediction=prediction, image_png=gray_png(display))
        if explain:
            result.heatmap_png, result.explain_error = self._heatmap(net_input, display.shape)
        return result

    def _heatmap(self, net_input: np.ndarray, shape: tuple[int, int]) -> tuple[bytes | None, str | None]:
        if not self._prepare():
            return None, self._explainer_error
        try:  # no lock: ONNX Runtime runs concurrent maps; the Grad-CAM fallback locks inside the mapper
            cam = self._mapper.heatmap(net_input, shape)
        except Exception as exc:  # a heat map is an extra: its failure must not cost the prediction
            log_exception("heat map failed", exc)
            return None, "the heat map could not be computed for this image"
        return heatmap_rgba_png(cam), None

    def _prepare(self) -> bool:
        """Whether heat maps can be made, finding out once; on failure the reason is kept in ``_explainer_error``."""
        with self._lock:
            if not self._ready and self._explainer_error is None:
                self._ready = self._load_mapper()
        return self._ready

    def _load_mapper(self) -> bool:
        try:
            self._mapper.prepare()
            log.info("heat maps: %s", self._mapper.method)
            return True
        except ImportError:
            self._explainer_error = (
                "heat maps for this model file need the 'explain' extra (torch, grad-cam) on the server; "
                "a model file re-exported with `pneumo export` has them without torch"
            )
        except (ModelFileError, ValueError):
            self._explainer_error = "heat maps need a .pneumo model file with PyTorch weights; this model has none"
        except Exception as exc:
            log_exception("heat-map model failed to load", exc)
            self._explainer_error = "heat maps are unavailable on this server (see the server log)"
        return False


def log_exception(what: str, exc: BaseException) -> None:
    """Where it failed (module, line, function per frame) and the exception type: no message and no source text,
    since either can carry a client's file name."""
    frames = "\n".join(
        f"  {Path(f.filename).name}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)
    )
    log.error("%s: %s\n%s", what, type(exc).__name__, frames)
