"""pneumo.explain.explainer: heat maps (occlusion by default, the old class activation map by name) are well-formed
and lie on what pushes towards pneumonia; occlusion maps are absolute; ``pneumo explain`` writes one PNG per
readable image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import dicom_bytes
from pneumo.cli import main
from pneumo.explain.cam import CAM, METHODS
from pneumo.explain.explainer import Explainer
from pneumo.modelfile import ModelFile, ModelMeta, Preprocessing
from pneumo.training.export import build_model_file
from pneumo.training.models import create_model


def _xray(seed: int = 0, h: int = 90, w: int = 120) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.25 + 0.4 * yy + 0.3 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.4) ** 2) / 0.01)
    return (np.clip(img + 0.05 * rng.standard_normal((h, w)), 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def explainer(tiny_model):
    return Explainer.load(tiny_model)


CELL = 16  # cnn-small's Grad-CAM layer (the last block, after its max-pool) has one cell per 16 x 16 input pixels


def _brightness_model(temperature: float = 1.0) -> ModelFile:
    """A cnn-small whose weights are set by hand, so that its Grad-CAM map is known exactly.

    Channel 0 of every block passes on ReLU(+pixel), channel 1 ReLU(-pixel) (centre taps, identity batch norm,
    all else zero): on an equalised image of a dark background (input -2) and one bright square (+2) that fills a
    Grad-CAM cell, the last block's channel 0 is 2 in that cell and 0 elsewhere, channel 1 the opposite. The
    head reads channel 0 as pneumonia and channel 1 as normal. After global average pooling and a linear head,
    Grad-CAM's channel weights are (pneumonia row - normal row) / cells = (+1, -1) / 16, so
    ReLU(A0 - A1) / 16 is 1/8 on the square's cell and 0 on every other: min-max scaled, one-hot on the square.
    """
    torch.manual_seed(0)
    net = create_model("cnn-small", 2).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        for i, block in enumerate(net.backbone.blocks):
            conv, bn = block[0], block[1]
            conv.weight[0, 0, 1, 1] = 1.0  # channel 0: +pixel, carried on
            if i == 0:
                conv.weight[1, 0, 1, 1] = -1.0  # channel 1: -pixel
            else:
                conv.weight[1, 1, 1, 1] = 1.0  # carried on
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # exactly the identity in eval mode
        net.head.weight[1, 0] = 1.0  # PNEUMONIA <- bright
        net.head.weight[0, 1] = 1.0  # NORMAL <- dark
    meta = ModelMeta(name="bright-is-pneumonia", arch="cnn-small", preprocessing=Preprocessing(image_size=4 * CELL),
                     temperature=temperature)  # fmt: skip
    return build_model_file(net, meta, {})


def _square(row: int, col: int, size: int = 4 * CELL) -> np.ndarray:
    img = np.full((size, size), 0.3, dtype=np.float32)
    img[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = 0.9
    return img


def test_heatmap_is_input_sized_and_unit_range(explainer):
    size = explainer.model.meta.preprocessing.image_size
    img = np.asarray(Image.fromarray(_xray()).resize((size, size)), dtype=np.float32) / 255
    cam = explainer.heatmap(img)
    assert cam.shape == (size, size) and cam.dtype == np.float32
    assert np.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("row", "col"), [(0, 2), (2, 1), (3, 3)])
def test_heatmap_lights_up_what_pushes_towards_pneumonia_and_follows_it(row, col, method):
    """The map is on the bright square wherever it lies (an untrained net's map has no such property)."""
    cam = Explainer(_brightness_model(), method).heatmap(_square(row, col))
    on = np.zeros(cam.shape, dtype=bool)
    on[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = True
    # CAM: a one-hot cell upsampled bilinearly x16 keeps 9/16 of its mass inside the cell (3/4 per axis), more at
    # an edge, where the map is clamped: more than half the map on the 1/16 of the image that the square covers.
    # Occlusion: one-cell windows (8 px here), so only the square's own four cells lower the odds when hidden; the
    # bilinear resize spreads part of that past its edge: a quarter of the map on the square (a uniform map would put
    # 1/16 there).
    share = float(cam[on].sum()) / max(float(cam.sum()), 1e-12)
    assert share > (0.5 if method == CAM else 0.25), f"{share:.1%} of the map lies on the square in ({row}, {col})"
    peak = np.unravel_index(np.argmax(cam), cam.shape)
    assert on[peak], f"the map peaks at {tuple(map(int, peak))}, off the bright square in cell ({row}, {col})"


def test_occlusion_map_is_absolute_a_confident_normal_shows_nothing():
    """Occlusion maps are on one scale for every image. Equalised, one bright cell reads -2 / +2 like any two-level
    image: pneumonia logit 2/16, normal 30/16, so z = -1.75, P = 1e-3 at temperature 0.25, far below the floor:
    an empty map, where the old map, scaled to its own maximum, paints the bright cell full strength. With 12 of
    the 16 cells bright (z = +1, P = 0.98), a window (2 x 2 occlusion cells of 8 px: one of the net's 16-px cells)
    over bright pixels under the mean grey (+1) drops the pneumonia logit by (2 - 1) / 16, the calibrated odds by
    4 / 16: a heat of exactly 0.25 on the absolute scale, whatever the image's own range."""
    from pneumo.explain.occlusion import OcclusionGrid

    explainer = Explainer(_brightness_model(temperature=0.25))
    explainer.images._mapper.grid = OcclusionGrid(span=2)  # the golden value below is derived for 2 x 2-cell windows
    normal = _square(1, 1)
    assert explainer.predictor.predict_arrays([normal], ["n"])[0].probability < 0.01
    assert explainer.heatmap(normal).max() == 0.0
    assert Explainer(_brightness_model(temperature=0.25), CAM).heatmap(normal).max() == pytest.approx(1.0)
    pneumonia = np.full((4 * CELL, 4 * CELL), 0.9, dtype=np.float32)
    pneumonia[2 * CELL :, : 2 * CELL] = 0.3  # 4 dark cells, 12 bright
    assert explainer.predictor.predict_arrays([pneumonia], ["p"])[0].probability > 0.95
    assert explainer.heatmap(pneumonia).max() == pytest.approx(0.25, abs=1e-4)


def test_an_empty_map_says_why_where_the_scale_would_be(explainer, monkeypatch):
    """A map that draws nothing (an image the model is sure of, whose evidence no single region holds) gets the
    mapper's note in its caption instead of the colour scale; a map with something drawn keeps the scale."""
    from matplotlib.figure import Figure

    from pneumo.explain.explainer import overlay_png

    texts: list[str] = []
    original = Figure.text
    monkeypatch.setattr(Figure, "text", lambda self, x, y, s, **kw: texts.append(" ".join(s.split()))
                        or original(self, x, y, s, **kw))  # a long caption wraps: compared unwrapped  # fmt: skip
    exp = explainer.explain(_png_bytes(_xray()), "x.png")
    scale, empty = explainer.images.scale, explainer.images.empty
    exp.heatmap = np.zeros_like(exp.heatmap)
    overlay_png(exp, scale=scale, empty=empty)
    assert empty in texts[0] and scale not in texts[0]
    exp.heatmap[:10, :10] = 0.5
    texts.clear()
    overlay_png(exp, scale=scale, empty=empty)
    assert scale in texts[0] and empty not in texts[0]


def _png_bytes(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def test_explain_keeps_aspect_ratio_and_agrees_with_predict(explainer, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(_xray()).save(path)
    exp = explainer.explain(path, str(path))
    assert exp.image.shape == exp.heatmap.shape == (90, 120)
    assert exp.prediction.probability == pytest.approx(explainer.predictor.predict_one(path, "x").probability)


def test_explain_cli_writes_pngs(tiny_model, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_xray(1)).save(src / "a.png")
    Image.fromarray(_xray(2)).save(src / "b.jpg")
    (src / "c.dcm").write_bytes(dicom_bytes(_xray(3, 64, 64).astype(np.uint16) * 16, Modality="CR"))
    (src / "d.png").write_bytes(b"broken")
    out = tmp_path / "out"
    assert main(["explain", str(src), "--model", str(tiny_model), "-o", str(out)]) == 3  # d.png is unreadable
    captured = capsys.readouterr()
    assert "d.png" in captured.err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a_occlusion.png", "b_occlusion.png", "c_occlusion.png"]  # named by the method
    for p in out.iterdir():
        assert p.stat().st_size > 0
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    assert main(["explain", str(src / "a.png"), "-m", str(tiny_model), "-o", str(tmp_path / "o2")]) == 0


def test_explain_real_dicom(dicom_dir, tiny_model, tmp_path):
    files = [p for p in sorted(dicom_dir.glob("*.dcm")) if "NoPixelData" not in p.name][:1]
    assert main(["explain", *map(str, files), "-m", str(tiny_model), "-o", str(tmp_path)]) == 0
    assert (tmp_path / f"{files[0].stem}_occlusion.png").stat().st_size > 0
