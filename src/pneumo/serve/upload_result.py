"""One upload -> prediction, the X-ray as PNG for the browser (DICOM included) and, when asked, a heat map.

Runs in a worker thread. Decoding, prediction and the heat map are :class:`pneumo.explain.analyser.ImageAnalyser`'s, as
for ``pneumo explain`` and the DICOM results: the same ONNX path and the same decoding as ``pneumo predict``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pneumo.explain.analyser import ImageAnalyser
from pneumo.explain.cam import ALPHA_FLOOR, heatmap_rgba
from pneumo.imaging import ImageLoadError, maybe_headerless_dicom, sniff_format
from pneumo.inference import Prediction, Predictor
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
    heatmap_note: str | None = None  # why a heat map draws nothing
    heatmap_field: str | None = None  # what the dashed lung-field edge on a field model's map means


def gray_png(image: np.ndarray) -> bytes:
    """A [0, 1] grayscale array as 8-bit PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def heatmap_rgba_png(cam: np.ndarray, edge: np.ndarray | None = None) -> bytes:
    """A [0, 1] heat map as a transparent RGBA PNG to lay over the X-ray: jet colours, opacity rising smoothly
    with heat, a lung-field model's field ``edge`` dashed (:func:`pneumo.explain.cam.heatmap_rgba`, numpy only)."""
    buf = io.BytesIO()
    Image.fromarray(heatmap_rgba(cam, edge), mode="RGBA").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


class Analyser:
    """The web page's side of :class:`pneumo.explain.analyser.ImageAnalyser`: uploads refused by name before decoding,
    the X-ray and the heat map as PNGs. Heat maps fail soft, with a reason the page shows."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.images = ImageAnalyser(predictor, log=log)

    def decode(self, data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(network input, display image); raises UnsupportedImage or UnreadableImage."""
        if sniff_format(data) is None and not maybe_headerless_dicom(data):  # GIF, PDF, text: refused by name
            raise UnsupportedImage(unsupported_reason(data))
        try:
            return self.images.decode(data, name)
        except ImageLoadError as exc:
            raise (UnsupportedImage if exc.kind == "unsupported" else UnreadableImage)(str(exc)) from None

    def analyse(self, data: bytes, name: str, explain: bool = False) -> Analysis:
        """Decode (once), predict and (optionally) explain one upload held in memory."""
        net_input, display = self.decode(data, name)
        a = self.images.analyse_decoded(net_input, display, name, heatmap=explain)
        result = Analysis(prediction=a.prediction, image_png=gray_png(a.image), explain_error=a.heatmap_error)
        if a.heatmap is not None:
            result.heatmap_png = heatmap_rgba_png(a.heatmap, a.field_edge)
            result.heatmap_field = a.field_note
            if float(np.max(a.heatmap)) < ALPHA_FLOOR:  # occlusion only: a "cam" map is scaled to its own maximum
                result.heatmap_note = self.images.empty
        return result
