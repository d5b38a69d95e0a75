"""Comparison tables built from tiny model files (metadata only, no weights)."""

from __future__ import annotations

import csv
import json

import pytest

from pneumo.evaluation.compare import compare_runs, format_markdown, write_comparison, write_csv
from pneumo.modelfile import ModelFile, ModelFileError, ModelMeta, Preprocessing, save_model_file


@pytest.fixture
def two_models(tmp_path):
    a = save_model_file(
        tmp_path / "run_a" / "model.pneumo",
        ModelFile(
            meta=ModelMeta(
                arch="resnet18",
                params=11_200_000,
                preprocessing=Preprocessing(image_size=224),
                validation={
                    "accuracy": 0.91234,
                    "sensitivity": 0.985,
                    "specificity": 0.8,
                    "roc_auc": 0.97,
                    "f1": 0.93,
                    "ece": 0.021,
                    "cpu_ms_per_image": 12.34,
                    "geometry_shift": {"worst": {"roc_auc": 0.955, "specificity": 0.71}},
                },
                training={"train_seconds": 1800, "epochs": 10},
            )
        ),
    )
    b = save_model_file(
        tmp_path / "small.pneumo",
        ModelFile(
            meta=ModelMeta(
                arch="efficientnet_lite0",
                task="subtype",
                class_names=["NORMAL", "BACTERIA", "VIRUS"],
                params=3_400_000,
                preprocessing=Preprocessing(image_size=160),
                validation={"accuracy": 0.88, "sensitivity": 0.99, "roc_auc": float("nan")},  # no spec, f1, ece
            )
        ),
    )
    return a, b


def test_rows_from_run_directory_and_file(two_models):
    a, b = two_models
    rows = compare_runs([a.parent, b])
    assert [r["name"] for r in rows] == ["run_a", "small"]
    ra, rb = rows
    assert ra["arch"] == "resnet18" and ra["task"] == "binary" and ra["image_size"] == 224
    assert ra["accuracy"] == pytest.approx(0.91234)
    assert ra["train_minutes"] == pytest.approx(30.0)
    assert ra["epochs"] == 10 and ra["cpu_ms_per_image"] == pytest.approx(12.34)
    assert (ra["shift_worst_auc"], ra["shift_worst_specificity"]) == (0.955, 0.71)
    assert rb["task"] == "subtype" and rb["image_size"] == 160
    assert rb["specificity"] is None and rb["roc_auc"] is None and rb["train_minutes"] is None
    assert compare_runs([a])[0]["name"] == "run_a"  # model.pneumo named by its directory


def test_markdown_table(two_models):
    md = format_markdown(compare_runs(two_models))
    lines = md.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| name | arch | task | size | accuracy")
    row_a = [c.strip() for c in lines[2].strip("|").split("|")]
    row_b = [c.strip() for c in lines[3].strip("|").split("|")]
    assert row_a[:5] == ["run_a", "resnet18", "binary", "224", "0.912"]
    assert "11.2M" in row_a and "30.0" in row_a and "12.3" in row_a and "0.021" in row_a
    assert row_b[0] == "small" and "3.4M" in row_b and "0.990" in row_b
    # specificity, roc_auc, f1, ece, two worst-shift figures, the worst block, two lung checks, epochs, train minutes,
    # CPU ms
    assert row_b.count("—") == 12
    assert "0.955" in row_a and "0.710" in row_a  # the worst geometric shift of validation


def test_csv_and_write_comparison(two_models, tmp_path):
    rows = write_comparison(two_models, tmp_path / "out" / "cmp.md", tmp_path / "out" / "cmp.csv")
    assert (tmp_path / "out" / "cmp.md").read_text() == format_markdown(rows) + "\n"
    with (tmp_path / "out" / "cmp.csv").open() as f:
        got = list(csv.DictReader(f))
    assert got[0]["name"] == "run_a" and float(got[0]["accuracy"]) == pytest.approx(0.91234)
    assert got[1]["specificity"] == ""
    write_csv(rows, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "out" / "cmp.csv").read_text()


def test_evaluate_directory_as_source(tmp_path):
    d = tmp_path / "eval_test"
    d.mkdir()
    metrics = {"accuracy": 0.9, "sensitivity": 0.97, "specificity": None, "ece": 0.05, "model": {"arch": "tiny"}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    (row,) = compare_runs([d])
    assert row["name"] == "eval_test" and row["arch"] == "tiny" and row["metrics"] == "evaluate"
    assert row["accuracy"] == pytest.approx(0.9) and row["specificity"] is None
    assert "| eval_test | tiny | — | — | 0.900 | 0.970 | — |" in format_markdown([row])


def test_missing_model_is_an_actionable_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        compare_runs([tmp_path / "nope.pneumo"])
    with pytest.raises(ModelFileError, match="run directory"):
        compare_runs([tmp_path])


def test_rates_carry_wilson_intervals_from_their_counts(tmp_path):
    """With the counts known (n, n_pos, n_neg), accuracy, sensitivity and specificity show their 95 % Wilson
    interval in the Markdown cell and as columns of the CSV; 20 of 20 pneumonia caught is not "1.000-1.000"."""
    from pneumo.evaluation.report import proportion_ci

    d = tmp_path / "eval_small"
    d.mkdir()
    metrics = {"accuracy": 38 / 40, "sensitivity": 1.0, "specificity": 0.9, "n": 40, "n_pos": 20, "n_neg": 20}
    (d / "metrics.json").write_text(json.dumps(metrics))
    (row,) = compare_runs([d])
    assert (row["sensitivity_ci_low"], row["sensitivity_ci_high"]) == pytest.approx(proportion_ci(20, 20))
    assert (row["specificity_ci_low"], row["specificity_ci_high"]) == pytest.approx(proportion_ci(18, 20))
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx(proportion_ci(38, 40))
    md = format_markdown([row])
    assert "| 1.000 (0.839–1.000) |" in md and "| 0.900 (0.699–0.972) |" in md
    write_csv([row], tmp_path / "c.csv")
    with (tmp_path / "c.csv").open() as f:
        (got,) = list(csv.DictReader(f))
    assert float(got["sensitivity_ci_low"]) == pytest.approx(0.8389, abs=1e-4) and got["sensitivity"] == "1.0"
