"""One rule for which files are inputs (pneumo.inputs), split records read once, and the Predictor's public seam
(prepare / predict_prepared) that batch and quantisation use instead of private methods."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest

import pneumo.inputs as inputs
from conftest import xray
from pneumo.errors import ImageLoadError
from pneumo.inputs import expand_inputs, files_below, is_image_name, scan_dataset, select_records, write_split_csv

SRC = Path(__file__).resolve().parents[1] / "src" / "pneumo"


def _tree(root: Path) -> Path:
    """A class folder with every kind of entry the rule decides on; returns the class folder."""
    cls = root / "ds" / "NORMAL"
    (cls / "sub").mkdir(parents=True)
    (cls / ".cache").mkdir()
    for rel in ["a.png", "B.JPEG", "noext", "sub/c.jpeg", ".hidden.png", "notes.txt", ".cache/d.png", "sub/e.dcm"]:
        (cls / rel).write_bytes(b"x")
    (cls / "dangling.png").symlink_to(root / "nowhere.png")  # kept: it gets a row saying it leads nowhere
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "f.png").write_bytes(b"x")
    (cls / "linked").symlink_to(elsewhere, target_is_directory=True)  # a linked folder is not entered
    if hasattr(os, "mkfifo"):
        os.mkfifo(cls / "pipe.png")  # not a file: reading it would wait forever
    return cls


EXPECTED = ["B.JPEG", "a.png", "dangling.png", "noext", "sub/c.jpeg", "sub/e.dcm"]


def test_one_rule_for_folders_predict_and_the_dataset_scan(tmp_path):
    """predict/batch's folder expansion and the dataset scan find the same files: image suffixes or none, never a
    hidden file, nothing below a hidden folder, no FIFO, no linked folder; dangling links are kept."""
    cls = _tree(tmp_path)
    files, missing = expand_inputs([str(cls)])
    assert missing == [] and [f.relative_to(cls).as_posix() for f in files] == EXPECTED
    assert files_below(cls) == files
    scanned = scan_dataset(cls.parent)
    assert [r.rel for r in scanned.records] == [f"NORMAL/{e}" for e in EXPECTED] and scanned.errors == []


def test_a_hidden_folder_named_as_input_is_walked_but_never_entered_from_above(tmp_path):
    cls = _tree(tmp_path)
    assert expand_inputs([str(cls / ".cache")])[0] == [cls / ".cache" / "d.png"]
    assert expand_inputs([str(cls / ".hidden.png")])[0] == [cls / ".hidden.png"]  # a file named: the loader decides
    assert all(".cache" not in f.parts for f in expand_inputs([str(tmp_path / "ds")])[0])


@pytest.mark.parametrize(
    ("name", "wanted"),
    [("a.png", True), ("A.JPG", True), ("scan", True), ("x.dcm", True), (".DS_Store", False), (".a.png", False),
     ("notes.txt", False), ("x.pdf", False)],
)  # fmt: skip
def test_image_name_rule(name, wanted):
    assert is_image_name(name) is wanted


def test_unlistable_folder_is_reported_not_raised(tmp_path):
    errors: list[tuple[str, str]] = []
    assert files_below(tmp_path / "missing", errors) == []
    assert len(errors) == 1 and errors[0][0] == str(tmp_path / "missing") and "cannot list folder" in errors[0][1]


def test_select_records_reads_the_split_csv_once_and_carries_blocks(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for label, names in {
        "NORMAL": ["IM-0001-0001.png", "IM-0002-0001.png"],
        "PNEUMONIA": ["person1_virus_1.png"],
    }.items():
        (root / label).mkdir(parents=True)
        for n in names:
            (root / label / n).write_bytes(b"x")
    records = scan_dataset(root).records
    write_split_csv(tmp_path / "split.csv", records, ["val", "train", "val"], ["NORMAL IM 1-1", "", "random"])
    calls = []
    real = inputs.read_split_csv
    monkeypatch.setattr(inputs, "read_split_csv", lambda p: calls.append(p) or real(p))
    recs, described = select_records(root, "val", tmp_path / "split.csv")
    assert len(calls) == 1 and described == "val rows of split.csv"
    assert [(r.rel, r.block) for r in recs] == [("NORMAL/IM-0001-0001.png", "NORMAL IM 1-1"),
                                                ("PNEUMONIA/person1_virus_1.png", "random")]  # fmt: skip
    train, _ = select_records(root, "train", tmp_path / "split.csv")
    assert [(r.rel, r.block) for r in train] == [("NORMAL/IM-0002-0001.png", "")]


def test_evaluate_folder_reads_the_split_csv_only_through_select_records():
    """Blocks come with the selected records: evaluation.run never opens the split CSV itself."""
    text = (SRC / "evaluation" / "run.py").read_text(encoding="utf-8")
    assert "read_split_csv" not in text


def _pneumo_imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pneumo"):
            mods.add(node.module)
        elif isinstance(node, ast.Import):
            mods.update(a.name for a in node.names if a.name.startswith("pneumo"))
    return mods


def test_nothing_climbs_for_its_inputs():
    """inputs sits low (errors, labels, imaging, atomic); quantize and batch take inputs and columns from low
    modules, not from evaluation.run or predict_io."""
    assert _pneumo_imports(SRC / "inputs.py") <= {"pneumo", "pneumo.errors", "pneumo.labels", "pneumo.imaging"}
    assert not {"pneumo.evaluation.run", "pneumo.predict_io"} & _pneumo_imports(SRC / "quantize.py")
    for module in ("parts.py", "run.py", "ray_engine.py"):
        assert "pneumo.predict_io" not in _pneumo_imports(SRC / "batch" / module), module


def test_no_private_predictor_calls_outside_inference():
    """Batch, quantisation and the rest use the public seam (prepare / predict_prepared), never the private
    methods behind it."""
    offenders = [
        f"{p.relative_to(SRC)}:{n.lineno}"
        for p in sorted(SRC.rglob("*.py"))
        if p.name != "inference.py"
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(n, ast.Attribute) and n.attr in ("_predict_inputs", "_decode", "_try_prepare")
        and p.parent.name != "imaging"  # imaging has its own module-level _decode
    ]  # fmt: skip
    assert offenders == []


# ---------------------------------------------------------------------------------------------------- the seam


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(5):
        xray(i, 80 + 8 * i).save(d / f"x{i}.png")
        paths.append(d / f"x{i}.png")
    (d / "bad.png").write_bytes(b"not an image")
    return [*paths, d / "bad.png"]


@pytest.mark.parametrize("mirror", [False, True])
def test_prepare_then_predict_prepared_is_predict_sources(tiny_model, images, mirror):
    from pneumo.inference import Predictor

    predictor = Predictor.load(tiny_model)
    good = images[:-1]
    x = np.stack([predictor.prepare(p) for p in good])
    assert x.shape == (len(good), 1, 64, 64) and x.dtype == np.float32
    seam = predictor.predict_prepared(x, [str(p) for p in good], mirror=mirror)
    stream = list(predictor.predict_sources(((str(p), p) for p in images), batch_size=2, mirror=mirror))
    assert [s.model_dump() for s in seam] == [s.model_dump() for s in stream[:-1]]
    assert stream[-1].error and stream[-1].probability is None
    with pytest.raises(ImageLoadError, match="scan-7"):
        predictor.prepare(images[-1].read_bytes(), "scan-7")


def test_prepare_gives_every_test_time_view(tiny_model, images):
    """A model with content scales gets one channel per view, in the order the network averages them."""
    from pneumo.imaging import load_image
    from pneumo.inference import Predictor
    from pneumo.modelfile import load_model_file
    from pneumo.preprocess import to_input, views

    mf = load_model_file(tiny_model)
    pre = mf.meta.preprocessing.model_copy(update={"content_scales": [0.9, 1.0]})
    predictor = Predictor(mf.model_copy(update={"meta": mf.meta.model_copy(update={"preprocessing": pre})}))
    x = predictor.prepare(images[0])
    assert x.shape == (len(views(pre)), 64, 64) == (2, 64, 64)
    np.testing.assert_array_equal(x, to_input([load_image(images[0], 64)], pre, content_scales=True)[0])


def test_ray_decoding_is_the_predictors_prepare(tiny_model, images):
    """The Ray engine's decoding task gives the same pixels as Predictor.prepare, and keeps a bad file's row."""
    pytest.importorskip("pyarrow")
    from pneumo.batch.ray_engine import decode_batch
    from pneumo.inference import Predictor

    predictor = Predictor.load(tiny_model)
    batch = {
        "index": np.arange(len(images)),
        "path": np.array([p.name for p in images], dtype=object),
        "source": np.array([str(p) for p in images], dtype=object),
    }
    out = decode_batch(batch, predictor.meta.preprocessing.model_dump_json())
    for j, p in enumerate(images[:-1]):
        np.testing.assert_array_equal(out["x"][j], predictor.prepare(p))
    assert out["error"][-1].startswith("bad.png") and not out["x"][-1].any()
