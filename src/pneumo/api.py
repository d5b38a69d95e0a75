"""The Python API: ``pneumo.load()`` gives a :class:`Model` that predicts and explains, as the CLI does.

    >>> import pneumo
    >>> model = pneumo.load()                        # the bundled model; or pneumo.load("site.pneumo")
    >>> p = model.predict("scan.jpeg")               # doctest: +SKIP
    >>> p.probability, p.prediction, p.in_domain     # doctest: +SKIP

A result is the :class:`pneumo.inference.Prediction` of a ``pneumo predict`` row (same fields, same numbers):
one model, one preprocessing, one ONNX Runtime path. Arrays go through the same loader as files, encoded
losslessly in memory as a PNG would be, so an array and the PNG of the same pixels give the same result.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pneumo.errors import ImageLoadError, InputError
from pneumo.inference import Prediction, Predictor, open_model

if TYPE_CHECKING:
    from pneumo.explain.explainer import Explainer
    from pneumo.modelfile import ModelMeta

Image = str | os.PathLike | bytes | np.ndarray


def _png_bytes(array: np.ndarray) -> bytes:
    """An image array as lossless PNG bytes: 2-D grayscale (uint8, uint16, or float in [0, 1], which is stored
    at 16 bits) or H x W x 3 / 4 uint8 colour, which the loader turns grey as it does a colour file."""
    from PIL import Image as PILImage

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.dtype == np.uint8:
        im = PILImage.fromarray(a)  # RGB or RGBA
    elif a.ndim != 2:
        raise InputError(f"an image array must be 2-D grayscale or H x W x 3/4 uint8 colour, not shape {a.shape}")
    elif a.dtype == np.uint8:
        im = PILImage.fromarray(a)  # L
    elif a.dtype == np.uint16:
        im = PILImage.fromarray(a.astype("<u2"))  # I;16
    elif np.issubdtype(a.dtype, np.floating) or a.dtype == bool:
        f = a.astype(np.float64)
        if not np.all(np.isfinite(f)) or f.min() < 0 or f.max() > 1:
            raise InputError("a floating-point image array must hold finite values in [0, 1]")
        im = PILImage.fromarray(np.round(f * 65535).astype("<u2"))
    else:
        raise InputError(f"an image array must be uint8, uint16 or float in [0, 1], not {a.dtype}")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _source(image: Image, index: int) -> tuple[str, str | os.PathLike | bytes]:
    """(name, what the loader reads) for a path, a file's bytes or an array; the name is what ``predict``
    shows for a path (``str(path)``), ``<array N>`` / ``<bytes N>`` otherwise."""
    if isinstance(image, np.ndarray):
        return f"<array {index}>", _png_bytes(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return f"<bytes {index}>", bytes(image)
    if isinstance(image, str | os.PathLike):
        return str(image), image
    raise InputError(f"cannot predict a {type(image).__name__}: give a path, the file's bytes or an image array")


class Model:
    """A loaded model file: :meth:`predict`, :meth:`predict_many` and :meth:`explain`.

    Thread-safe for prediction (ONNX Runtime sessions are). Make it with :func:`load`."""

    def __init__(self, predictor: Predictor, source: str | os.PathLike | None = None):
        self.predictor = predictor
        self._source = source
        self._explainer: Explainer | None = None
        self._lock = threading.Lock()

    @property
    def meta(self) -> ModelMeta:
        """The model file's metadata: name, version, preprocessing, threshold, validation figures."""
        return self.predictor.meta

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def threshold(self) -> float:
        """The operating threshold in force: PNEUMONIA at or above it."""
        return self.predictor.threshold

    @property
    def path(self) -> Path | None:
        return self.predictor.model.path

    def __repr__(self) -> str:
        return f"<pneumo.Model {self.name} {self.meta.version}, threshold {self.threshold:.4f}>"

    def predict(self, image: Image, *, mirror: bool = False) -> Prediction:
        """One image (a path, the file's bytes, or an array) -> its :class:`Prediction`, the row ``pneumo
        predict`` writes for it. ``tta`` as ``pneumo predict --tta``. Raises :class:`pneumo.errors.ImageLoadError`
        when the image cannot be read (:meth:`predict_many` returns an error row instead)."""
        name, source = _source(image, 0)
        result = self.predictor.predict_one(source, name, mirror=mirror)
        if result.error:
            raise ImageLoadError(result.error)
        return result

    def predict_many(self, images: Iterable[Image], *, mirror: bool = False, batch_size: int = 64) -> list[Prediction]:
        """Many images (paths, bytes or arrays, mixed) -> one :class:`Prediction` each, in order; an unreadable
        image gets a row whose ``error`` says why, as in ``pneumo predict``. Decoding overlaps inference."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        sources = (_source(image, i) for i, image in enumerate(images))
        return list(self.predictor.predict_sources(sources, batch_size=batch_size, mirror=mirror))

    def explain(self, image: str | os.PathLike | bytes) -> np.ndarray:
        """The heat map of one image (a path or the file's bytes): float in [0, 1] at the display image's shape
        (aspect ratio kept, the longer side at most 512 px), what ``pneumo explain`` lays over the X-ray; high
        where the image pushed the model towards pneumonia."""
        from pneumo.explain.explainer import Explainer

        with self._lock:  # the heat-map model loads once, on first use
            if self._explainer is None:
                self._explainer = Explainer.load(self._source)
        name, source = _source(image, 0)
        return self._explainer.explain(source, name).heatmap


def load(model: str | os.PathLike | None = None, *, threshold: float | None = None) -> Model:
    """A model ready to predict: ``None`` for the bundled model, else a ``.pneumo`` file (a site file from
    ``pneumo adapt`` too), a run directory or an exported ``.onnx``. ``threshold`` overrides the model's own, as
    ``pneumo predict --threshold`` does. Raises :class:`pneumo.errors.ModelFileError` for a missing or damaged
    file."""
    return Model(Predictor(open_model(model), threshold=threshold), model)
