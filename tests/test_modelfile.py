"""pneumo.modelfile: round trips, and every way a model file can be wrong ends as ModelFileError."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pneumo.evaluation.shifts import FRAMING_CHECKS, TRAINING_CHECKS
from pneumo.modelfile import (
    ARRAYS,
    BORDER_HIDDEN_CHECK,
    DEFAULT_IMAGE_SIZE,
    META,
    ONNX,
    ModelFile,
    ModelFileError,
    ModelMeta,
    Preprocessing,
    Validation,
    load_model_file,
    read_meta,
    resolve_model_path,
    save_model_file,
)


def _model(**meta) -> ModelFile:
    rng = np.random.default_rng(0)
    return ModelFile(
        meta=ModelMeta(arch="cnn-small", threshold=0.3, temperature=1.7, validation={"roc_auc": 0.9}, **meta),
        onnx=b"\x08\x07onnx-bytes" * 100,
        weights=bytes(range(256)) * 10,
        arrays={"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64)},
    )


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_round_trip(tmp_path):
    m = _model(task="subtype", class_names=["NORMAL", "BACTERIA", "VIRUS"])
    path = save_model_file(tmp_path / "sub" / "m.pneumo", m)
    assert path.is_file() and not list(tmp_path.rglob("*.tmp"))
    got = load_model_file(path)
    assert got.meta == m.meta
    assert got.onnx == m.onnx and got.weights == m.weights
    assert set(got.arrays) == {"a", "b"}
    for k, v in m.arrays.items():
        np.testing.assert_array_equal(got.arrays[k], v)
        assert got.arrays[k].dtype == v.dtype
    assert got.path == path
    assert got.meta.has_subtypes


def test_image_size_has_one_default_and_files_keep_their_own(tmp_path):
    """The default input size is the training default; a model file names its size, and that size is what loads."""
    from pneumo.config import TrainConfig

    assert Preprocessing().image_size == DEFAULT_IMAGE_SIZE == TrainConfig.model_fields["image_size"].default
    for size in (224, 96):
        path = save_model_file(tmp_path / f"m{size}.pneumo", _model(preprocessing=Preprocessing(image_size=size)))
        with zipfile.ZipFile(path) as zf:
            assert json.loads(zf.read(META))["preprocessing"]["image_size"] == size
        assert load_model_file(path).meta.preprocessing.image_size == size
    with zipfile.ZipFile(resolve_model_path(None)) as zf:  # the bundled model names its own size
        assert json.loads(zf.read(META))["preprocessing"]["image_size"] == read_meta().preprocessing.image_size == 128


def test_parts_limit_what_is_read(tmp_path):
    path = save_model_file(tmp_path / "m.pneumo", _model())
    only = load_model_file(path, parts=("onnx",))
    assert only.onnx is not None and only.weights is None
    assert read_meta(path).threshold == 0.3
    assert load_model_file(path, parts=()).onnx is None


def test_run_directory_resolves(tmp_path):
    save_model_file(tmp_path / "model.pneumo", _model())
    assert resolve_model_path(tmp_path) == tmp_path / "model.pneumo"
    assert load_model_file(tmp_path).meta.arch == "cnn-small"


def test_directory_without_model_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"no model\.pneumo"):
        load_model_file(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model_file(tmp_path / "nope.pneumo")


def test_zip_without_meta(tmp_path):
    path = _zip(tmp_path / "m.pneumo", {ONNX: b"x"})
    with pytest.raises(ModelFileError, match=r"no meta\.json"):
        load_model_file(path)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04 truncated"])
def test_not_a_zip(tmp_path, content):
    path = tmp_path / "m.pneumo"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="not a Pneumo model file"):
        load_model_file(path)


def test_truncated_model_file(tmp_path):
    path = save_model_file(tmp_path / "m.pneumo", _model())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model_file(path)


@pytest.mark.parametrize("meta", [b"{not json", b'{"arch": 3}', b"[]", b'{"arch": "x", "threshold": "high"}'])
def test_invalid_meta(tmp_path, meta):
    path = _zip(tmp_path / "m.pneumo", {META: meta})
    with pytest.raises(ModelFileError, match="invalid model metadata"):
        load_model_file(path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("threshold", "NaN"), ("threshold", 2.0), ("threshold", 0.0), ("temperature", 0), ("temperature", "Infinity"),
     ("calibration_bias", "NaN"), ("preprocessing.std", 0), ("preprocessing.mean", "NaN"),
     ("preprocessing.image_size", 0), ("preprocessing.image_size", -5), ("preprocessing.image_size", 20000),
     ("preprocessing.content_scales", [0.0]), ("domain_guard.cutoff", "NaN")],
)  # fmt: skip
def test_unsafe_meta_values_are_refused_with_one_line(tmp_path, field, value):
    """A value that would silently turn results into NORMAL (or crash, or exhaust memory) refuses the file."""
    import json

    meta = json.loads(_model().meta.model_dump_json())
    meta["domain_guard"] = {"components": 4, "cutoff": 3.0, "quantile": 0.98, "validation_flag_rate": 0.02}
    *parents, leaf = field.split(".")
    node = meta
    for p in parents:
        node = node[p]
    node[leaf] = value
    raw = json.dumps(meta).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity").encode()
    path = _zip(tmp_path / "m.pneumo", {META: raw})
    with pytest.raises(ModelFileError, match=rf"invalid model metadata: {field.replace('.', '[.]')}") as info:
        load_model_file(path)
    assert "\n" not in str(info.value)


def test_newer_format_is_refused(tmp_path):
    path = save_model_file(tmp_path / "m.pneumo", _model(format_version=99))
    with pytest.raises(ModelFileError, match="newer Pneumo"):
        load_model_file(path)


def test_object_arrays_are_never_unpickled(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, evil=np.array([{"a": 1}, None], dtype=object))  # np.savez pickles object arrays
    path = _zip(tmp_path / "m.pneumo", {META: _model().meta.model_dump_json().encode(), ARRAYS: buf.getvalue()})
    with pytest.raises(ModelFileError):
        load_model_file(path)


def test_corrupt_member_data(tmp_path):
    """Damage inside a compressed member (a bad disk, a partial copy) must still be a ModelFileError."""
    path = save_model_file(tmp_path / "m.pneumo", _model())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(ONNX)
    # the local header is 30 bytes + name + extra; scribble over the middle of the deflate stream
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 2, start + min(info.compress_size, 40)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError):
        load_model_file(path)


# What finalize records for a model trained with both threshold rules and the border-hidden check (the figures are
# made up; the keys are fit_operating_point's).
_RULES = {
    "worst_case": {
        "threshold": 0.62,
        "pooled": {"sensitivity": 0.981, "specificity": 0.95},
        "worst_framing": {"sensitivity": 0.972, "sensitivity_of": "zoom 1.25 (cropped)",
                          "specificity": 0.931, "specificity_of": "zoom 1.25 (cropped)"},
    },
    "pooled": {
        "threshold": 0.41,
        "pooled": {"sensitivity": 0.99, "specificity": 0.91},
        "worst_framing": {"sensitivity": 0.985, "sensitivity_of": "clean",
                          "specificity": 0.85, "specificity_of": "zoom 0.8 (margin)"},
    },
}  # fmt: skip
_CHECK = {"roc_auc": 0.961, "sensitivity": 0.95, "specificity": 0.9, "ece": 0.03, "decisions_flipped": 0.02}
_WHERE = "internal validation: split.csv"
# Per rule: how it chose its threshold, and its figures.
_SAID = {
    "worst_case": (
        "threshold 0.620 by the worst-case rule (the largest margin to sensitivity 0.98 / specificity 0.90 in the "
        "worst framing condition)",
        "sensitivity 0.972 / specificity 0.931 at worst (zoom 1.25 (cropped)); sensitivity 0.981 / specificity 0.950 "
        f"on validation pooled with its checked copies, {_WHERE}",
    ),
    "pooled": (
        "threshold 0.410 by the pooled rule (the highest threshold with sensitivity 0.98 on validation pooled with its "
        "checked copies)",
        "sensitivity 0.985 at worst (clean validation) / specificity 0.850 at worst (zoom 0.8 (margin)); sensitivity "
        f"0.990 / specificity 0.910 on validation pooled with its checked copies, {_WHERE}",
    ),
}
_BORDER_LINE = f"  ROC AUC with the image border hidden (outer 15 % flat grey): 0.987 against 0.993 clean ({_WHERE})"


def _new_meta(rule: str) -> ModelMeta:
    op = {**_RULES[rule]["pooled"], "rule": rule, "name": rule, "target_sensitivity": 0.98,
          "target_specificity": 0.9, "rules": _RULES}  # fmt: skip
    shift = {"worst": _CHECK, **{name: _CHECK for name in TRAINING_CHECKS}}
    shift[BORDER_HIDDEN_CHECK] = {**_CHECK, "roc_auc": 0.987}
    validation = {"roc_auc": 0.993, "sensitivity": 0.97, "specificity": 0.94, "operating_point": op,
                  "measured_on": "internal validation: /data/runs/split.csv", "geometry_shift": shift}  # fmt: skip
    return ModelMeta(arch="cnn-small", threshold=_RULES[rule]["threshold"], validation=validation)


@pytest.mark.parametrize(("in_force", "other"), [("worst_case", "pooled"), ("pooled", "worst_case")])
def test_figures_summary_says_both_threshold_rules_and_the_border_hidden_auc(in_force, other):
    lines = _new_meta(in_force).figures_summary()
    rule, figures = _SAID[in_force]
    other_rule, other_figures = _SAID[other]
    # After the older figures, the rule in force first, then the other one, the border-hidden AUC, the caveat.
    assert lines[-4:] == [
        f"  threshold rule in force: {rule}: {figures}",
        f"  the other rule, not in force: {other_rule} would give {other_figures}",
        _BORDER_LINE,
        "  expect lower figures on X-rays from other sites or periods",
    ]


def test_figures_summary_of_an_old_model_file_says_nothing_new():
    """A model file from before both rules and the border-hidden check (as g2s1 recorded them: the pooled
    operating point only, four framing checks under their old names): its figures are said as before."""
    meta = read_meta(None)
    v = meta.validation.model_dump(exclude={"blocks", "lung_checks"})  # recorded since then
    op = v["operating_point"]
    v["operating_point"] = {"sensitivity": op["sensitivity"], "specificity": op["specificity"]}
    old_names = dict(
        zip(FRAMING_CHECKS, ("zoom 0.8", "zoom 1.25", "squeeze across 0.85", "squeeze down 0.85"), strict=True)
    )
    v["geometry_shift"] = {old_names.get(k, k): r for k, r in v["geometry_shift"].items() if k != BORDER_HIDDEN_CHECK}
    meta = meta.model_copy(update={"validation": Validation.model_validate(v)})
    lines = meta.figures_summary()
    assert lines[0] == f"{meta.name} {meta.version}: threshold {meta.threshold:.4f}"
    assert lines[1].startswith("  sensitivity ") and lines[2].startswith("  worst case under framing shift: ")
    assert lines[-1] == "  expect lower figures on X-rays from other sites or periods"
    said = "\n".join(lines)
    for new in ("threshold rule", "not in force", "border hidden", "None", "nan"):
        assert new not in said, said


def test_the_border_hidden_check_is_still_one_of_the_training_checks():
    assert BORDER_HIDDEN_CHECK in TRAINING_CHECKS


def test_figures_summary_gives_the_worst_block_and_the_lung_checks():
    validation = {
        "measured_on": "internal validation (acquisition blocks): blocks.csv",
        "sensitivity": 0.95,
        "specificity": 0.93,
        "blocks": {
            "worst_specificity": {"value": 0.652, "block": "NORMAL NORMAL2-IM 1346-1423", "n": 23},
            "worst_sensitivity": {"value": 0.868, "block": "PNEUMONIA person_virus 803-863", "n": 38},
        },
        "lung_checks": {"block validation, atlas lungs": {"clean": 0.991, "lungs_hidden": 0.859, "only_lungs": 0.971}},
    }
    lines = ModelMeta(arch="cnn-small", threshold=0.6, validation=validation).figures_summary()
    assert any(
        "worst held-out acquisition block: specificity 0.652 (NORMAL NORMAL2-IM 1346-1423, 23 images; "
        "internal validation (acquisition blocks): blocks.csv)" in ln
        for ln in lines
    ), lines
    assert any("sensitivity 0.868 (PNEUMONIA person_virus 803-863" in ln for ln in lines)
    assert any(
        "lungs hidden 0.859, with only the lungs shown 0.971, clean 0.991 (block validation, atlas lungs;" in ln
        for ln in lines
    ), lines


def test_content_scales_written_as_tta_before_the_rename_still_load(tmp_path):
    """Model files made before the rename name the test-time content scales ``tta``: they load unchanged."""
    import json

    meta = json.loads(_model().meta.model_dump_json())
    meta["preprocessing"].pop("content_scales")
    meta["preprocessing"]["tta"] = [0.8, 1.0]
    meta["domain_guard"] = None
    path = _zip(tmp_path / "m.pneumo", {META: json.dumps(meta).encode()})
    assert load_model_file(path).meta.preprocessing.content_scales == [0.8, 1.0]
