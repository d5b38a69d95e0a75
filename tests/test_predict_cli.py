"""``pneumo predict`` in-process: good and bad files side by side, exit codes, CSV / JSON, thresholds, real data."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from conftest import dicom_bytes, png_header_only, xray
from pneumo.cli import main
from pneumo.imaging import load_image
from pneumo.modelfile import load_model_file
from pneumo.preprocess import to_input
from pneumo.probability import calibrated_probability

HEADER = ["path", "probability", "prediction", "threshold", "domain", "in_domain", "domain_score", "error"]
SUBTYPE_HEADER = [*HEADER, "p_normal", "p_bacterial", "p_viral"]


GOOD = ["a_good.png", "b_good.jpg", "c_noext"]
BAD = ["d_empty.png", "e_truncated.jpg", "f_text.jpeg", "g_bomb.png", "h_nopixels.dcm"]


@pytest.fixture
def mixed(tmp_path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    xray(0, 80).save(d / "a_good.png")
    xray(1, 80).save(d / "b_good.jpg", quality=90)
    xray(2, 80).save(d / "c_noext", "PNG")  # no extension: the content decides
    (d / "d_empty.png").write_bytes(b"")
    buf = io.BytesIO()
    xray(3, 200).save(buf, "JPEG", quality=95)
    (d / "e_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "f_text.jpeg").write_text("this is not a JPEG\n")
    (d / "g_bomb.png").write_bytes(png_header_only(30000, 30000))  # 900 MP of grey over a few bytes
    (d / "h_nopixels.dcm").write_bytes(dicom_bytes(None, Modality="CR", PatientID="anon"))
    xray(4, 80).save(d / "sub" / "i_nested.png")
    xray(5, 80).save(d / ".hidden.png")  # hidden: skipped
    (d / "notes.txt").write_text("skipped: not an image suffix")
    return d


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def _predict(*args) -> int:
    return main(["predict", *map(str, args)])


def test_mixed_folder_csv(mixed, tiny_model, tmp_path, capsys):
    out = tmp_path / "x.csv"
    assert _predict(mixed, "--model", tiny_model, "--output", out) == 3  # some unreadable, rest still written
    header, rows = _read_csv(out)
    assert header == HEADER
    names = [Path(r["path"]).name for r in rows]
    assert names == [*GOOD, *BAD, "i_nested.png"]  # sub/i_nested.png sorts after h_nopixels.dcm
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # stable, sorted order
    by_name = {Path(r["path"]).name: r for r in rows}
    for n in [*GOOD, "i_nested.png"]:
        r = by_name[n]
        assert r["error"] == "" and 0 <= float(r["probability"]) <= 1
        assert r["prediction"] in {"PNEUMONIA", "NORMAL"} and r["in_domain"] in {"true", "false"}
        assert float(r["threshold"]) == pytest.approx(0.5)
    for n in BAD:
        r = by_name[n]
        assert r["error"] and r["probability"] == "" and r["prediction"] == "" and r["domain_score"] == ""
        assert n in r["error"]  # the message names the file
    assert "decompression bomb" in by_name["g_bomb.png"]["error"]
    captured = capsys.readouterr()
    assert "5 unreadable" in captured.out
    assert "Traceback" not in captured.out + captured.err


def test_mixed_folder_json_has_the_same_fields(mixed, tiny_model, tmp_path):
    csv_out, json_out = tmp_path / "x.csv", tmp_path / "x.json"
    assert _predict(mixed, "-m", tiny_model, "-o", csv_out) == 3
    assert _predict(mixed, "-m", tiny_model, "-o", json_out) == 3
    items = json.loads(json_out.read_text())
    _, rows = _read_csv(csv_out)
    assert [list(i) for i in items] == [HEADER] * len(rows)
    assert [i["path"] for i in items] == [r["path"] for r in rows]
    for i, r in zip(items, rows, strict=True):
        if r["error"]:
            assert i["probability"] is None and i["prediction"] is None and i["error"] == r["error"]
        else:
            assert i["probability"] == pytest.approx(float(r["probability"]), abs=1e-6)
            assert i["in_domain"] is (r["in_domain"] == "true")


def test_probabilities_are_calibrated(mixed, tiny_model, tmp_path):
    out = tmp_path / "x.csv"
    _predict(mixed, "-m", tiny_model, "-o", out)
    _, rows = _read_csv(out)
    good = [r for r in rows if not r["error"]]
    mf = load_model_file(tiny_model)
    pre = mf.meta.preprocessing
    x = to_input([load_image(r["path"], pre.image_size) for r in good], pre)
    logits = ort.InferenceSession(mf.onnx, providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})[0]
    expected = calibrated_probability(logits, mf.meta.temperature, mf.meta.calibration_bias)
    np.testing.assert_allclose([float(r["probability"]) for r in good], expected, atol=2e-6)


def test_all_good_exits_zero_and_prints_a_table(mixed, tiny_model, capsys):
    assert _predict(mixed / "a_good.png", mixed / "c_noext", "-m", tiny_model) == 0
    out = capsys.readouterr().out
    assert "a_good.png" in out and "2 files:" in out


def test_subtype_model_columns(mixed, tiny_subtype_model, tmp_path):
    out = tmp_path / "x.csv"
    assert _predict(mixed, "-m", tiny_subtype_model, "-o", out) == 3
    header, rows = _read_csv(out)
    assert header == SUBTYPE_HEADER
    for r in rows:
        if r["error"]:
            assert r["p_normal"] == r["p_bacterial"] == r["p_viral"] == ""
        else:
            parts = [float(r[c]) for c in ("p_normal", "p_bacterial", "p_viral")]
            assert sum(parts) == pytest.approx(1.0, abs=1e-5)
            assert parts[0] == pytest.approx(1 - float(r["probability"]), abs=1e-5)
    js = tmp_path / "x.json"
    _predict(mixed, "-m", tiny_subtype_model, "-o", js)
    assert list(json.loads(js.read_text())[0]) == SUBTYPE_HEADER


@pytest.mark.parametrize(
    "args",
    [["/nonexistent/file.png"], ["/nonexistent/*.png"], ["--threshold", "1.5", "{img}"], ["{empty_dir}"]],
    ids=["missing-file", "glob-matches-nothing", "bad-threshold", "no-images"],
)
def test_usage_errors_exit_2(args, mixed, tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [a.format(img=mixed / "a_good.png", empty_dir=tmp_path / "empty") for a in args]
    assert _predict(*args, "-m", tiny_model) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_missing_model_exits_1(mixed, tmp_path, capsys):
    assert _predict(mixed / "a_good.png", "-m", tmp_path / "no.pneumo") == 1
    assert "no such model file" in capsys.readouterr().err


def test_threshold_extremes(mixed, tiny_model, tmp_path):
    for t, expected in (("0.0", "PNEUMONIA"), ("1.0", "NORMAL")):
        out = tmp_path / f"t{t}.csv"
        _predict(mixed, "-m", tiny_model, "--threshold", t, "-o", out)
        _, rows = _read_csv(out)
        good = [r for r in rows if not r["error"]]
        assert good and all(r["threshold"] == f"{float(t):.6f}" for r in rows)
        assert all(r["prediction"] == expected for r in good if float(r["probability"]) < 1.0)


def test_globs(mixed, tiny_model, tmp_path):
    out = tmp_path / "x.csv"
    assert _predict(str(mixed / "*_good.*"), str(mixed / "**" / "i_*.png"), "-m", tiny_model, "-o", out) == 0
    _, rows = _read_csv(out)
    assert [Path(r["path"]).name for r in rows] == ["a_good.png", "b_good.jpg", "i_nested.png"]


def test_tta_and_batch_size(mixed, tiny_model, tmp_path):
    results = {}
    for name, extra in {"b1": ["--batch-size", "1"], "b16": ["--batch-size", "16"], "tta": ["--tta"]}.items():
        out = tmp_path / f"{name}.csv"
        assert _predict(mixed, "-m", tiny_model, "-o", out, *extra) == 3
        results[name] = _read_csv(out)[1]
    assert results["b1"] == results["b16"]  # byte-for-byte the same rows
    probs = {k: [r["probability"] for r in v if not r["error"]] for k, v in results.items()}
    assert probs["tta"] != probs["b16"] and len(probs["tta"]) == len(probs["b16"])


def test_pneumo_help_is_light():
    code = "import sys; from pneumo.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("False")
    assert "predict" in out.stdout


# --- real data (skips when ../shared/data is absent) ---


def test_real_fullres_images(fullres_dir, tiny_model, tmp_path):
    out = tmp_path / "x.csv"
    assert _predict(fullres_dir, "-m", tiny_model, "-o", out) == 0
    _, rows = _read_csv(out)
    assert len(rows) == 16 and all(not r["error"] for r in rows)


def test_real_dicoms(dicom_dir, tiny_model, tmp_path):
    import pydicom.data

    d = tmp_path / "dcm"
    d.mkdir()
    for f in dicom_dir.glob("*.dcm"):
        shutil.copy(f, d / f.name)
    extra = []
    for name in ("RG1_UNCR.dcm", "RG1_J2KI.dcm", "RG3_UNCR.dcm"):
        p = pydicom.data.get_testdata_file(name, download=False)
        if p:
            shutil.copy(p, d / f"pydicom_{name}")
            extra.append(f"pydicom_{name}")
    out = tmp_path / "x.csv"
    assert _predict(d, "-m", tiny_model, "-o", out) == 3  # Issue56-NoPixelData.dcm cannot be predicted
    _, rows = _read_csv(out)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == len(list(dicom_dir.glob("*.dcm"))) + len(extra)
    assert by_name["Issue56-NoPixelData.dcm"]["error"] and by_name["Issue56-NoPixelData.dcm"]["probability"] == ""
    for name, r in by_name.items():
        if name != "Issue56-NoPixelData.dcm":
            assert not r["error"], r["error"]
            assert 0 <= float(r["probability"]) <= 1


def test_predict_files_behind_the_predict_command(mixed, tiny_model, tmp_path):
    """``predict_files`` gives one result per file in input order at the threshold asked for, passes every result
    through the progress wrapper with the file count, and writes the file the command writes."""
    from pneumo.inputs import expand_inputs
    from pneumo.predict_io import predict_files

    files, _ = expand_inputs([str(mixed)])
    seen = {"n": 0}

    def progress(stream, total):
        seen["total"] = total
        for r in stream:
            seen["n"] += 1
            yield r

    run = predict_files(files, model=tiny_model, threshold=0.25, output=tmp_path / "lib.csv", progress=progress)
    assert [r.path for r in run.results] == [str(f) for f in files]
    assert seen == {"n": len(files), "total": len(files)}
    assert all(r.threshold == 0.25 for r in run.results) and not run.subtypes and run.notes == []
    assert sorted(Path(r.path).name for r in run.results if r.error) == sorted(BAD)
    assert _predict(mixed, "-m", tiny_model, "--threshold", 0.25, "-o", tmp_path / "cli.csv") == 3
    assert (tmp_path / "lib.csv").read_text() == (tmp_path / "cli.csv").read_text()


# --- output conventions: -o -, --format, names, --batch-size ---


def test_dash_writes_csv_to_stdout_and_json_with_format(mixed, tiny_model, tmp_path, capfd):
    """``-o -`` puts exactly the CSV of ``-o x.csv`` on stdout (the summary goes to stderr, so the stream can be
    piped); ``--format json`` exactly the JSON file."""
    assert _predict(mixed, "-m", tiny_model, "-o", tmp_path / "x.csv") == 3
    assert _predict(mixed, "-m", tiny_model, "-o", tmp_path / "x.json") == 3
    capfd.readouterr()
    assert _predict(mixed, "-m", tiny_model, "-o", "-") == 3
    got = capfd.readouterr()
    assert got.out == (tmp_path / "x.csv").read_text()
    assert "5 unreadable" in got.err and "Traceback" not in got.err
    assert _predict(mixed, "-m", tiny_model, "-o", "-", "--format", "json") == 3
    assert capfd.readouterr().out == (tmp_path / "x.json").read_text()
    assert _predict(mixed, "-m", tiny_model, "--format", "json") == 3  # --format alone: stdout too
    assert json.loads(capfd.readouterr().out) == json.loads((tmp_path / "x.json").read_text())


@pytest.mark.parametrize(
    "args",
    [["-o", "{tmp}/res.xlsx"], ["-o", "{tmp}/res"], ["--out", "{tmp}/res.csv", "--format", "json"],
     ["--batch-size", "0"], ["--batch-size", "0", "--dicom-out", "{tmp}/dcm"], ["--format", "xlsx"]],
    ids=["xlsx", "no-extension", "format-contradicts-name", "batch-size-0", "batch-size-0-dicom-out", "bad-format"],
)  # fmt: skip
def test_output_and_batch_usage_errors_exit_2_before_any_work(args, mixed, tmp_path, capsys):
    """Refused as usage errors (exit 2, no traceback) before the model is even looked at: the model given does
    not exist, which would be exit 1; and nothing is written."""
    args = [a.format(tmp=tmp_path) for a in args]
    assert _predict(mixed / "a_good.png", "-m", tmp_path / "no-such.pneumo", *args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("error" in err.lower())
    assert not any(tmp_path.glob("res*")) and not (tmp_path / "dcm").exists()


def test_predict_files_refuses_batch_size_0(mixed, tiny_model):
    from pneumo.errors import InputError
    from pneumo.predict_io import predict_files

    with pytest.raises(InputError, match="batch-size"):
        predict_files([mixed / "a_good.png"], model=tiny_model, batch_size=0)


def _table_text(preds, subtypes=False) -> str:
    from rich.console import Console

    from pneumo.predict_io import render_table

    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render_table(preds, subtypes))
    return console.export_text()


def test_table_marks_out_of_domain_decisions_in_the_decision_cell():
    """A decision not to rely on carries its warning in its own cell (the line under it), whether the model
    gives the three-way ``domain`` or only ``in_domain``; an unusual acquisition gets a note, not a withdrawal."""
    from pneumo.inference import Prediction

    def row(name, **kw):
        return Prediction(path=name, probability=0.9, prediction="PNEUMONIA", threshold=0.5, domain_score=0.01, **kw)

    preds = [
        row("kid.png", domain="typical", in_domain=True),
        row("adult.png", domain="not_pediatric", in_domain=False),
        row("odd.png", domain="unusual_acquisition", in_domain=True),
        row("old-model.png", in_domain=False),  # a model file without the three-way answer
        row("no-guard.png"),
    ]
    lines = _table_text(preds).splitlines()

    def cells_of(name):
        i = next(k for k, line in enumerate(lines) if name in line)
        return lines[i] + "\n" + lines[i + 1]  # the decision cell's second line is on the next table line

    assert "DO NOT RELY" in cells_of("adult.png") and "not pediatric" in cells_of("adult.png")
    assert "DO NOT RELY" in cells_of("old-model.png") and "OUT" in cells_of("old-model.png")
    assert "unusual image" in cells_of("odd.png") and "DO NOT RELY" not in cells_of("odd.png")
    for name in ("kid.png", "no-guard.png"):
        assert "DO NOT RELY" not in cells_of(name) and "unusual" not in cells_of(name)
    assert "ok 0.01" in cells_of("kid.png")


def test_a_glob_through_a_link_loop_predicts_each_file_once(tmp_path):
    from pneumo.inputs import expand_inputs

    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"x")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    files, missing = expand_inputs([str(folder / "**" / "*.png")])
    assert files == [folder / "x.png"] and missing == []
    files, _ = expand_inputs([str(folder), str(folder / "loop" / "x.png")])
    assert files == [folder / "x.png"]
