"""Heat maps over the X-ray: ``pneumo explain``.

The probability and decision shown come from the same ONNX path as ``pneumo predict``, so an overlay never
disagrees with a prediction. The map (:class:`pneumo.explain.cam.HeatMapper`) is by default occlusion sensitivity
through ONNX Runtime (no torch): how much hiding each region lowers the calibrated pneumonia log-odds, on an
absolute scale whose top (dark red) is a drop of :data:`pneumo.explain.occlusion.FULL_SCALE` or more, so a confident
normal shows (almost) nothing. ``method="cam"`` gives the old class activation map (each map scaled to its own
maximum; Grad-CAM on the PyTorch twin, :mod:`pneumo.training.grad_cam`, for graphs without it). Either way the map
shows what pushed the model towards pneumonia, for binary and subtype models alike, wherever it lies: it is never
cut to the lungs.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.explain.analyser import ImageAnalyser, ImageAnalysis
from pneumo.explain.cam import ALPHA_FLOOR, OCCLUSION, heatmap_rgba
from pneumo.imaging import ImageLoadError
from pneumo.inference import Predictor, open_model
from pneumo.labels import PNEUMONIA
from pneumo.modelfile import ModelFile, load_model_file


class Explainer:
    """Loads a model file once; explains images from paths or bytes (:class:`pneumo.explain.analyser.ImageAnalyser`,
    not fail-soft: ``pneumo explain`` exists for the heat map)."""

    def __init__(self, model: ModelFile, method: str = OCCLUSION, grad_cam: Callable[[ModelFile], Any] | None = None):
        self.model = model
        self.predictor = Predictor(model)
        self.images = ImageAnalyser(self.predictor, fail_soft=False, method=method, grad_cam=grad_cam)
        self.images.prepare()  # for a Grad-CAM fallback, fail here (no torch, no weights), not on the first image

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        method: str = OCCLUSION,
        grad_cam: Callable[[ModelFile], Any] | None = None,
    ) -> Explainer:
        """``grad_cam``: the PyTorch Grad-CAM for graphs without the class activation map (``method="cam"``), e.g.
        :class:`pneumo.training.grad_cam.GradCam`; without it such a graph's ``"cam"`` map is refused."""
        if model is not None and Path(model).suffix.lower() == ".onnx":
            return cls(open_model(model), method, grad_cam)
        return cls(load_model_file(model), method, grad_cam)

    def heatmap(self, image: np.ndarray) -> np.ndarray:
        """The heat map (input size, [0, 1]) for one image already at the model's input size."""
        return self.images.heatmap(image)[0]

    def explain(self, source: str | Path | bytes, name: str) -> ImageAnalysis:
        """The prediction, the display image and the heat map at its shape, from one decoding of ``source``."""
        return self.images.analyse(source, name)


def overlay_png(
    exp: ImageAnalysis,
    *,
    show_heatmap: bool = True,
    title: str | None = None,
    scale: str | None = None,
    empty: str | None = None,
) -> bytes:
    """The X-ray with the heat map over it and the probability and decision above it, as PNG bytes; ``scale``
    (what the top of the colour scale means, :attr:`pneumo.explain.cam.HeatMapper.scale`) is written under the
    title, or instead ``empty`` (:attr:`pneumo.explain.cam.HeatMapper.empty`) when the map draws nothing: an empty
    map of an image called pneumonia is not a broken one. A lung-field model's map has the field's edge dashed over
    it (``exp.field_edge``), with ``exp.field_note`` saying what the line means."""
    from matplotlib.figure import Figure

    p = exp.prediction
    headline = f"{p.prediction}  P(pneumonia) = {p.probability:.2f}  (threshold {p.threshold:.2f})"
    caption = title or Path(p.path).name
    if show_heatmap and empty and exp.heatmap is not None and float(exp.heatmap.max()) < ALPHA_FLOOR:
        scale = empty  # an empty map says why, where the scale would be: there is nothing to read it on
    if show_heatmap and scale:
        caption += f"   (heat: {scale})"
    # (text, font size, colour, bold), top to bottom in a band above the X-ray that grows with the lines
    lines = [(caption, 7 if scale else 9, "#333333", False)]
    lines.append((headline, 12, "#c62828" if p.prediction == PNEUMONIA else "#2e7d32", True))
    if p.in_domain is False:
        lines.append(("WARNING: unlike the X-rays this model was validated on; do not rely on it", 9, "#e65100", True))
    if show_heatmap and exp.field_note:
        lines.append((exp.field_note, 7, "#8e24aa", False))
    h, w = exp.image.shape
    width = 6.0  # inches; a line wraps before it would run off the picture (a glyph is ~0.55 of the font size wide)
    lines = [("\n".join(textwrap.wrap(text, int(0.96 * width * 72 / (0.55 * size)))), size, *rest)
             for text, size, *rest in lines]  # fmt: skip
    band = 0.15 + sum(size * 1.6 * (text.count("\n") + 1) for text, size, _, _ in lines) / 72
    height = width * h / w + band
    fig = Figure(figsize=(width, height), dpi=110)
    ax = fig.add_axes((0, 0, 1, (height - band) / height))
    ax.imshow(exp.image, cmap="gray", vmin=0, vmax=1)
    if show_heatmap:  # the page's and the Secondary Capture's overlay: jet colours, smoothly rising opacity
        ax.imshow(heatmap_rgba(exp.heatmap, exp.field_edge), interpolation="bilinear")
    ax.set_axis_off()
    top = 0.08  # inches from the top of the figure
    for text, size, colour, bold in lines:
        fig.text(0.02, 1 - top / height, text, fontsize=size, va="top", color=colour, weight="bold" if bold else None)
        top += size * 1.6 * (text.count("\n") + 1) / 72
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def explain_files(
    files: Sequence[Path],
    output: Path,
    model: str | Path | None = None,
    method: str = OCCLUSION,
    grad_cam: Callable[[ModelFile], Any] | None = None,
) -> tuple[list[Path], list[str]]:
    """Write ``<stem>_<method>.png`` (``x_occlusion.png``, ``x_cam.png``) for each file into ``output``, the heat map
    by ``method`` (:data:`pneumo.explain.cam.METHODS`); returns (written, one-line failures)."""
    explainer = Explainer.load(model, method, grad_cam)
    output.mkdir(parents=True, exist_ok=True)
    written, failures, used = [], [], set()
    for f in files:
        try:
            exp = explainer.explain(f, str(f))
        except ImageLoadError as exc:
            failures.append(str(exc))
            continue
        stem = f.stem
        while stem in used:  # same file name in two folders
            stem += "_"
        used.add(stem)
        target = output / f"{stem}_{method}.png"
        target.write_bytes(overlay_png(exp, scale=explainer.images.scale, empty=explainer.images.empty))
        written.append(target)
    return written, failures
