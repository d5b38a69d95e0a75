"""The validation record of a model file (pneumo.modelfile.validation): typed, versioned, and every old file loads
and is written back byte for byte."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

import pneumo.modelfile
from pneumo.modelfile import (
    META,
    VALIDATION_VERSION,
    ModelFile,
    ModelFileError,
    ModelMeta,
    Validation,
    bundled_model_path,
    load_model_file,
    save_model_file,
)

# A record as files made before the record was typed hold it: no version, keys in the order they were recorded
# (typed ones between unknown ones), unknown keys at the top and inside typed parts, a figure recorded as null.
OLD_RECORD = {
    "accuracy": 0.91,
    "some_later_tool": {"anything": [1, "two", None]},
    "roc_auc": 0.95,
    "n": 120,
    "n_pos": 80,
    "measured_on": "internal validation: /home/a/split.csv",
    "geometry_shift": {
        "worst": {"roc_auc": 0.9, "sensitivity": 0.85, "specificity": 0.8, "ece": 0.05, "extra_figure": 3},
        "zoom 0.8 (margin)": {"roc_auc": 0.9, "sensitivity": 0.85, "specificity": 0.8, "ece": 0.05},
    },
    "blocks": {"threshold": 0.5, "per_block": {"NORMAL IM 1-9": {"n": 9, "n_pneumonia": 0, "sensitivity": None}}},
    "cpu_ms_per_image": 2.21,
}


def _meta_text(validation: dict) -> str:
    """meta.json as save_model_file writes it, for a model whose record is ``validation`` as given (not typed)."""
    meta = json.loads(ModelMeta(arch="cnn-small").model_dump_json())
    meta["validation"] = validation
    return json.dumps(meta, indent=2)


def _file(tmp_path: Path, validation: dict, name: str = "m.pneumo") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(META, _meta_text(validation))
    return path


def _written_meta(tmp_path: Path, meta: ModelMeta, name: str) -> bytes:
    path = save_model_file(tmp_path / name, ModelFile(meta=meta))
    with zipfile.ZipFile(path) as zf:
        return zf.read(META)


def test_an_old_record_loads_with_its_unknown_keys(tmp_path):
    v = load_model_file(_file(tmp_path, OLD_RECORD)).meta.validation
    assert isinstance(v, Validation) and v.version == VALIDATION_VERSION  # no version: the first layout
    assert v.roc_auc == 0.95 and v.n == 120 and v.cpu_ms_per_image == 2.21
    assert v.geometry_shift["worst"].sensitivity == 0.85 and v.geometry_shift["worst"].extra_figure == 3
    assert v.blocks.per_block["NORMAL IM 1-9"].sensitivity is None and v.blocks.worst_specificity is None
    assert v.some_later_tool == {"anything": [1, "two", None]}
    assert v.where == "internal validation: split.csv"  # no folder of the training machine
    assert v.sensitivity is None and v.lung_checks is None  # not recorded


def test_an_old_record_is_written_back_byte_for_byte(tmp_path):
    """Exactly its keys, in their order: no version added, no typed key that was not recorded written as null."""
    meta = load_model_file(_file(tmp_path, OLD_RECORD)).meta
    first = _written_meta(tmp_path, meta, "a.pneumo")
    assert list(json.loads(first)["validation"]) == list(OLD_RECORD)
    assert json.loads(first)["validation"] == OLD_RECORD
    again = load_model_file(tmp_path / "a.pneumo").meta
    assert _written_meta(tmp_path, again, "b.pneumo") == first


def test_the_bundled_models_meta_json_round_trips_byte_for_byte():
    """The bundled model file was written by this code: read and written again, its meta.json is the same bytes
    (files written before the rename of ``preprocessing.tta`` load through the alias: tests/test_modelfile.py)."""
    with zipfile.ZipFile(bundled_model_path()) as zf:
        raw = zf.read(META).decode()
    assert '"content_scales"' in raw
    assert ModelMeta.model_validate_json(raw).model_dump_json(indent=2) == raw


@pytest.mark.parametrize(
    ("record", "where"),
    [({"sensitivity": "high"}, "validation.sensitivity"),
     ({"roc_auc": 1.5}, "validation.roc_auc"),
     ({"measured_on": 3}, "validation.measured_on"),
     ({"geometry_shift": {"worst": {"roc_auc": "x"}}}, "validation.geometry_shift.worst.roc_auc"),
     ({"blocks": [1, 2]}, "validation.blocks"),
     ({"operating_point": {"rules": {"pooled": {"threshold": -0.1}}}},
      "validation.operating_point.rules.pooled.threshold"),
     ({"version": 2}, "validation")],
)  # fmt: skip
def test_a_wrong_type_for_a_typed_key_is_refused_in_one_line(tmp_path, record, where):
    path = _file(tmp_path, record)
    with pytest.raises(ModelFileError) as exc:
        load_model_file(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: invalid model metadata: {where}") and "\n" not in message, message


def test_a_newer_record_says_to_upgrade(tmp_path):
    with pytest.raises(ModelFileError, match=r"validation record version 2 is newer .*upgrade pneumo"):
        load_model_file(_file(tmp_path, {"version": 2, "roc_auc": 0.9}))


def test_a_new_record_carries_its_version_and_keeps_the_order_it_was_made_in():
    v = Validation.model_validate({"version": VALIDATION_VERSION, "roc_auc": 0.9, "n": 10, "note": "x"})
    v.cpu_ms_per_image = 1.5  # as finalize records the timing after export: added at the end
    assert list(json.loads(v.model_dump_json())) == ["version", "roc_auc", "n", "note", "cpu_ms_per_image"]
    u = v.updated(domain={"method": "m", "held_out_flagged_not_pediatric": {"clean": 0.01}}, roc_auc=0.8)
    assert list(u.model_dump()) == ["version", "roc_auc", "n", "note", "cpu_ms_per_image", "domain"]
    assert u.roc_auc == 0.8 and u.domain.held_out_flagged_not_pediatric == {"clean": 0.01}
    with pytest.raises(ValueError, match="domain"):
        v.updated(domain={"held_out_flagged_not_pediatric": {"clean": 2.0}})  # validated anew


def test_a_figure_that_could_not_be_measured_is_null_in_the_file(tmp_path):
    meta = ModelMeta(arch="cnn-small", validation={"roc_auc": float("nan"), "accuracy": 0.5})
    text = _written_meta(tmp_path, meta, "nan.pneumo")
    assert json.loads(text)["validation"] == {"roc_auc": None, "accuracy": 0.5}
    assert math.isnan(meta.validation.roc_auc)
    assert load_model_file(tmp_path / "nan.pneumo").meta.validation.roc_auc is None


def test_finalisations_figures_make_a_typed_versioned_record():
    """What finalize and ensemble record (fit_operating_point's figures) is a valid record that says its version."""
    pytest.importorskip("torch")
    from pneumo.evaluation.calibration import OperatingRule
    from pneumo.training.finalize import fit_operating_point

    rng = np.random.default_rng(0)
    targets = np.array([0] * 20 + [1] * 20)
    logits = np.stack([np.zeros(40), np.where(targets > 0, 1.5, -1.5) + rng.standard_normal(40)], axis=1)
    shifted = {"zoom 0.8 (margin)": logits * 0.8, "border masked 15%": logits + rng.standard_normal((40, 2))}
    _, _, threshold, figures = fit_operating_point(logits, None, shifted, targets, OperatingRule(), "/a/split.csv")
    v = Validation.model_validate(figures)
    assert next(iter(json.loads(v.model_dump_json()))) == "version" and v.version == VALIDATION_VERSION
    assert v.operating_point.rule == "worst_case" and v.operating_point.rules["worst_case"].threshold == threshold
    assert set(v.geometry_shift) == {"worst", *shifted} and v.measured_on == "internal validation: split.csv"
    assert v.model_dump() == figures  # nothing lost, nothing added


# Every name another module or test imports from pneumo.modelfile (grep of src/, tests/, benchmarks/ when the module
# became a package): the package re-exports each.
IMPORTED_NAMES = (
    "ARRAYS", "BASE", "BORDER_HIDDEN_CHECK", "DEFAULT_IMAGE_SIZE", "DomainGuard", "META", "ModelFile",
    "ModelFileError", "ModelMeta", "ONNX", "Preprocessing", "Quantization", "ReferBand", "SITE", "SUFFIX",
    "SiteBase", "SiteCalibration", "SiteFigures", "SiteSample", "TASK_CLASSES", "base_model_bytes",
    "bundled_model_path", "load_model_file", "load_onnx_file", "measured_on_label", "meta_json", "onnx_session",
    "public_meta_json", "read_meta", "resolve_model_path", "save_model_file", "save_onnx_file", "save_site_file",
    "without_paths",
)  # fmt: skip


def test_the_package_re_exports_every_name_imported_from_it():
    missing = [n for n in IMPORTED_NAMES if not hasattr(pneumo.modelfile, n)]
    assert not missing and set(IMPORTED_NAMES) <= set(pneumo.modelfile.__all__), missing


def test_each_module_of_the_package_stays_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(pneumo.modelfile.__file__).parent.glob("*.py")}
    assert max(sizes.values()) <= 450, sizes
