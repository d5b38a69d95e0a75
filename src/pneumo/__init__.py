"""Pneumo: pneumonia detection in pediatric chest X-rays.

    import pneumo
    model = pneumo.load()                  # the bundled model; pneumo.load("site.pneumo") for another
    result = model.predict("scan.jpeg")    # probability, prediction, threshold, in_domain, ... as `pneumo predict`
    heat = model.explain("scan.jpeg")      # the heat map, float in [0, 1]

``import pneumo`` stays light: numpy and ONNX Runtime load with the first :func:`load`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pneumo._version import __version__

__all__ = ["Model", "Prediction", "__version__", "load"]

if TYPE_CHECKING:
    import os

    from pneumo.api import Model
    from pneumo.inference import Prediction


def load(model: str | os.PathLike | None = None, *, threshold: float | None = None) -> Model:
    """A :class:`Model` ready to predict: ``None`` for the bundled model, else a ``.pneumo`` file, a run
    directory or an exported ``.onnx``; see :func:`pneumo.api.load`."""
    from pneumo.api import load as _load

    return _load(model, threshold=threshold)


def __getattr__(name: str):
    # The classes of the public API, imported on first use so that `import pneumo` costs nothing.
    if name == "Model":
        from pneumo.api import Model

        return Model
    if name == "Prediction":
        from pneumo.inference import Prediction

        return Prediction
    raise AttributeError(f"module 'pneumo' has no attribute {name!r}")
