"""pneumo.explain.field: a model that sees only its lung field has the field's edge dashed over every picture of its
heat map (``pneumo explain``, the web page, the DICOM Secondary Capture), in a colour outside the heat scale, with
words that say what it is; a model that sees the whole frame has neither."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import dicom_bytes, encode_png, make_tiny_model
from pneumo.explain.cam import heatmap_rgba, overlay_rgb
from pneumo.explain.field import EDGE_RGB, field_edge, field_note
from pneumo.inference import Predictor
from pneumo.modelfile import LUNG_FIELD, ModelFileError, check_arrays, load_model_file, save_model_file

SIZE = 64


def _field() -> np.ndarray:
    """Two lung fields on a 64-px input, ones inside, zeros outside (as the atlas field, without its feather)."""
    f = np.zeros((SIZE, SIZE), np.float32)
    f[12:52, 6:28] = f[12:52, 36:58] = 1.0
    return f


@pytest.fixture(scope="module")
def field_model(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("field") / "field.pneumo", image_size=SIZE)
    mf = load_model_file(path)
    return save_model_file(path, mf.model_copy(update={"arrays": {**mf.arrays, LUNG_FIELD: _field()}}))


def _xray_png(h: int = 150, w: int = 120) -> bytes:
    rng = np.random.default_rng(0)
    img = 0.3 + 0.4 * np.linspace(0, 1, h)[:, None] + 0.05 * rng.standard_normal((h, w))
    return encode_png((np.clip(img, 0, 1) * 255).astype(np.uint8))


def test_the_edge_is_a_dashed_line_just_inside_the_field_and_never_the_frame():
    shape = (150, 120)  # not the input's square: the edge is stretched as the heat map is
    edge = field_edge(_field(), shape)
    assert edge.shape == shape and edge.dtype == bool
    inside = Image.fromarray(_field()).resize((120, 150), Image.Resampling.BILINEAR)
    inside = np.asarray(inside) >= 0.5
    assert not (edge & ~inside).any()  # drawn inside the field, never outside it
    eroded = np.asarray(Image.fromarray(inside).filter(ImageFilter.MinFilter(3)))
    ring = inside & ~eroded  # the field's one-pixel inner contour
    assert edge.sum() > 0.3 * ring.sum()  # most of the way round ...
    assert (ring & ~edge).sum() > 0.3 * ring.sum()  # ... with gaps: dashed
    full = np.ones((SIZE, SIZE), np.float32)
    assert not field_edge(full, shape).any()  # a field that fills the frame has no edge: the frame is not one


def test_a_field_model_draws_its_edge_on_each_picture_and_says_so(field_model, tiny_model):
    from pneumo.explain.explainer import Explainer
    from pneumo.serve.upload_result import Analyser

    explainer = Explainer.load(field_model)
    note = field_note(explainer.model)
    assert note and "nothing (mean grey)" in note
    exp = explainer.explain(_xray_png(), "x.png")
    assert exp.field_edge is not None and exp.field_edge.shape == exp.image.shape and exp.field_edge.any()
    rgba = heatmap_rgba(exp.heatmap, exp.field_edge)
    assert (rgba[exp.field_edge][:, :3] == EDGE_RGB).all() and (rgba[exp.field_edge][:, 3] > 200).all()
    assert not (rgba[~exp.field_edge][:, :3] == EDGE_RGB).all(axis=1).any()  # the heat scale never reads as it
    burnt = overlay_rgb(exp.image, exp.heatmap, exp.field_edge)
    assert _magenta(burnt)[exp.field_edge].all() and not _magenta(burnt)[~exp.field_edge].any()

    page = Analyser(Predictor.load(field_model)).analyse(_xray_png(), "x.png", explain=True)
    assert page.heatmap_field == note
    drawn = np.asarray(Image.open(io.BytesIO(page.heatmap_png)))
    assert (drawn[..., :3] == EDGE_RGB).all(axis=2).sum() == exp.field_edge.sum()

    plain = Analyser(Predictor.load(tiny_model)).analyse(_xray_png(), "x.png", explain=True)
    assert plain.heatmap_field is None and field_note(load_model_file(tiny_model)) is None
    assert not (np.asarray(Image.open(io.BytesIO(plain.heatmap_png)))[..., :3] == EDGE_RGB).all(axis=2).any()


def test_the_secondary_capture_draws_the_edge_and_says_what_it_is(field_model, tiny_model, monkeypatch):
    from PIL import ImageDraw

    from pneumo.dicom.instance import DicomAnalyser

    written: list[str] = []
    original = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **kw: written.append(text)
                        or original(self, xy, text, *a, **kw))  # fmt: skip
    pixels = (np.clip(np.random.default_rng(1).normal(2000, 300, (160, 128)), 0, 4095)).astype(np.uint16)
    data = dicom_bytes(pixels, Modality="CR", BodyPartExamined="CHEST", StudyInstanceUID="1.2.3",
                       SeriesInstanceUID="1.2.3.4")  # fmt: skip
    sc = DicomAnalyser(Predictor.load(field_model)).analyse(data, "cr.dcm").sc.pixel_array
    assert any("dashed magenta line" in t for t in written)
    assert _magenta(sc).sum() > 50
    written.clear()
    sc = DicomAnalyser(Predictor.load(tiny_model)).analyse(data, "cr.dcm").sc.pixel_array
    assert not any("magenta" in t for t in written) and not _magenta(sc).any()


def _magenta(rgb: np.ndarray) -> np.ndarray:
    """Pixels within 40 of the edge colour on every channel (burnt in at EDGE_ALPHA over the gray X-ray)."""
    return (np.abs(rgb.astype(int) - EDGE_RGB) < 40).all(axis=2)


def test_a_field_of_the_wrong_shape_or_range_is_refused(field_model):
    mf = load_model_file(field_model)
    for bad in (np.ones((SIZE, SIZE + 1), np.float32), np.full((SIZE, SIZE), 2.0, np.float32)):
        with pytest.raises(ModelFileError, match="lung_field"):
            check_arrays({**mf.arrays, LUNG_FIELD: bad}, mf.meta, "m.pneumo")
