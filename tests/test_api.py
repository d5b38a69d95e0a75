"""The Python API (``pneumo.load``, ``Model.predict`` / ``predict_many`` / ``explain``) gives what the CLI gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pneumo
from conftest import xray
from pneumo.cli import main
from pneumo.errors import ImageLoadError, InputError

FIELDS = ["probability", "prediction", "threshold", "domain", "in_domain", "domain_score", "error"]
SUBTYPES = ["p_normal", "p_bacterial", "p_viral"]


@pytest.fixture(scope="module")
def model():
    return pneumo.load()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("api")
    xray(0, 160).save(d / "a.png")
    xray(1, 120).save(d / "b.jpeg", quality=92)
    xray(2, 200).resize((200, 140)).save(d / "wide.png")
    return d


def _cli_rows(paths, tmp_path, *extra) -> dict[str, dict]:
    out = tmp_path / "cli.json"
    assert main(["predict", *map(str, paths), "-o", str(out), *extra]) == 0
    return {row["path"]: row for row in json.loads(out.read_text())}


def _assert_same(api, row):
    for field in FIELDS + [s for s in SUBTYPES if s in row]:
        got, want = getattr(api, field), row[field]
        if isinstance(want, float):
            assert got == pytest.approx(want, abs=1e-6), field
        else:
            assert got == want, field


def test_import_is_light_and_load_is_lazy():
    code = "import sys, pneumo; print(sorted(m for m in ('numpy', 'onnxruntime', 'pydantic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]"
    assert pneumo.Prediction.__name__ == "Prediction" and pneumo.Model.__name__ == "Model"
    with pytest.raises(AttributeError):
        pneumo.no_such_thing  # noqa: B018


def test_bundled_model(model):
    from pneumo.modelfile import read_meta

    meta = read_meta(None)
    assert model.name == meta.name and model.threshold == meta.threshold
    assert model.path == Path(pneumo.__file__).parent / "assets" / "default.pneumo"
    assert meta.name in repr(model)


def test_predict_equals_the_cli_row(model, images, tmp_path):
    """The same Prediction as ``pneumo predict``'s row, field by field, to 1e-6 (the JSON keeps full precision)."""
    paths = sorted(images.iterdir())
    rows = _cli_rows(paths, tmp_path)
    for p in paths:
        result = model.predict(p)
        assert isinstance(result, pneumo.Prediction) and result.path == str(p)
        _assert_same(result, rows[str(p)])
    for result in model.predict_many(paths):
        _assert_same(result, rows[result.path])
    tta_rows = _cli_rows(paths, tmp_path, "--tta")
    _assert_same(model.predict(paths[0], mirror=True), tta_rows[str(paths[0])])


def test_predict_equals_the_cli_row_on_real_xrays(model, fullres_dir, tmp_path):
    paths = sorted(fullres_dir.rglob("*.jpeg"))[::4]
    rows = _cli_rows(paths, tmp_path)
    for result in model.predict_many(paths):
        _assert_same(result, rows[result.path])
        assert result.domain in ("typical", "unusual_acquisition", "not_pediatric")


def test_arrays_and_bytes_give_the_files_result(model, images):
    """An array (uint8, uint16 or float in [0, 1]) or the file's bytes predicts as the file with those pixels."""
    png = images / "a.png"
    pixels = np.asarray(Image.open(png))
    by_file = model.predict(png)
    results = model.predict_many([pixels, png.read_bytes(), png])
    assert [r.path for r in results] == ["<array 0>", "<bytes 1>", str(png)]
    for r in results:
        assert r.probability == pytest.approx(by_file.probability, abs=1e-6)
        assert r.domain_score == pytest.approx(by_file.domain_score, abs=1e-6) and r.domain == by_file.domain
    # 16-bit pixels (uint16, or float in [0, 1], stored at 16 bits) predict as the 16-bit PNG file of those pixels:
    # the loader reads a 16-bit file as such, not as the 8-bit file it may have come from
    wide = pixels.astype(np.uint16) * 257
    Image.fromarray(wide.astype("<u2")).save(images / "a16.png")
    by_16 = model.predict(images / "a16.png")
    for r in model.predict_many([wide, pixels / 255.0]):
        assert r.probability == pytest.approx(by_16.probability, abs=1e-6) and r.domain == by_16.domain
    rgb = np.stack([pixels] * 3, axis=-1)
    assert model.predict(rgb).probability == pytest.approx(by_file.probability, abs=1e-6)


def test_unreadable_input(model, images):
    """predict raises (one image asked for, none to give); predict_many gives the CLI's error row."""
    with pytest.raises(ImageLoadError, match=r"not an image|text"):
        model.predict(b"this is text, not an X-ray")
    rows = model.predict_many([b"", images / "a.png"])
    assert rows[0].error and rows[0].probability is None and rows[1].error is None
    for bad in (np.zeros((4, 4, 4, 4)), np.full((8, 8), 2.0), np.zeros((8, 8), dtype=np.int64), 3.5):
        with pytest.raises(InputError):
            model.predict(bad)
    with pytest.raises(InputError):
        model.predict_many([images / "a.png"], batch_size=0)


def test_load_another_model_file_and_threshold(tiny_model, images, tmp_path):
    tiny = pneumo.load(tiny_model)
    assert tiny.name == "tiny-binary" and tiny.threshold == 0.5
    row = _cli_rows([images / "a.png"], tmp_path, "-m", str(tiny_model), "--threshold", "0.25")
    result = pneumo.load(tiny_model, threshold=0.25).predict(images / "a.png")
    assert result.threshold == 0.25
    _assert_same(result, row[str(images / "a.png")])


def test_explain_gives_the_heat_map_array(model, images):
    heat = model.explain(images / "wide.png")
    assert isinstance(heat, np.ndarray) and heat.shape == (140, 200)  # the display image's shape, aspect kept
    assert heat.dtype.kind == "f" and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1
    assert heat.max() > heat.min()  # a map, not a constant
    np.testing.assert_array_equal(model.explain((images / "wide.png").read_bytes()), heat)
