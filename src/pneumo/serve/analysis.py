"""One upload -> prediction, the X-ray as PNG for the browser (DICOM included) and, when asked, a Grad-CAM heat map.

Runs in a worker thread. The probability comes from the same ONNX path and the same decoding as ``pneumo predict``;
the PyTorch twin behind the heat map is loaded on first use and shared under a lock (Grad-CAM hooks are stateful).
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

from pneumo.imaging import ImageLoadError, load_display_image, load_image, resize_map
from pneumo.inference import Prediction, Predictor
from pneumo.modelfile import ModelFileError
from pneumo.serve.upload import maybe_headerless_dicom, sniff_format, unsupported_reason

log = logging.getLogger("pneumo.serve")

# Large enough to read on a tablet, small enough that a response stays a few hundred kB.
DISPLAY_MAX = 512
_HEATMAP_FLOOR = 0.2  # below this the map is left transparent so the X-ray stays readable


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
    """A [0, 1] heat map as a transparent RGBA PNG to lay over the X-ray: jet colours, opacity rising with heat."""
    from matplotlib import colormaps

    rgba = colormaps["jet"](np.clip(cam, 0, 1))
    rgba[..., 3] = 0.5 * np.clip((cam - _HEATMAP_FLOOR) / (1 - _HEATMAP_FLOOR), 0, 1) ** 0.7
    buf = io.BytesIO()
    Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


class Analyser:
    """Wraps a loaded Predictor; explains with a lazily loaded, lock-guarded Explainer."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._lock = threading.Lock()
        self._explainer = None
        self._explainer_error: str | None = None

    def decode(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(network input, display image); raises UnsupportedImage or UnreadableImage."""
        recognised = sniff_format(data) is not None
        if not recognised and not maybe_headerless_dicom(data):
            raise UnsupportedImage(unsupported_reason(data))
        try:
            net_input = load_image(data, self.predictor.size, name=name)
            display = load_display_image(data, DISPLAY_MAX, name=name)
        except ImageLoadError as exc:
            raise (UnreadableImage if recognised else UnsupportedImage)(str(exc)) from None
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
        with self._lock:
            explainer = self._load_explainer()
            if explainer is None:
                return None, self._explainer_error
            try:
                cam = explainer.heatmap(net_input)
            except Exception as exc:  # a heat map is an extra: its failure must not cost the prediction
                log_exception("heat map failed", exc)
                return None, "the heat map could not be computed for this image"
        return heatmap_rgba_png(resize_map(cam, shape)), None

    def _load_explainer(self):
        """The Explainer, loaded once; on failure ``None`` with the reason kept in ``_explainer_error``."""
        if self._explainer is not None or self._explainer_error is not None:
            return self._explainer
        try:
            from pneumo.explain import Explainer

            self._explainer = Explainer.load(self.predictor.model.path)
            log.info("heat-map model loaded")
        except ImportError:
            self._explainer_error = "heat maps need the 'explain' extra (torch, grad-cam, matplotlib) on the server"
        except (ModelFileError, ValueError):
            self._explainer_error = "heat maps need a .pneumo model file with PyTorch weights; this model has none"
        except Exception as exc:
            log_exception("heat-map model failed to load", exc)
            self._explainer_error = "heat maps are unavailable on this server (see the server log)"
        return self._explainer


def log_exception(what: str, exc: BaseException) -> None:
    """Where it failed (module, line, function per frame) and the exception type: no message and no source text,
    since either can carry a client's file name."""
    frames = "\n".join(
        f"  {Path(f.filename).name}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)
    )
    log.error("%s: %s\n%s", what, type(exc).__name__, frames)
