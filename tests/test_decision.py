"""pneumo.decision: the threshold rule, its range check, the REFER band and the flip rate; and that the callers
(predict, evaluate, the metrics, the CLI) decide through it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pneumo.cli import main
from pneumo.decision import (
    NORMAL_CODE,
    PNEUMONIA_CODE,
    REFER_CODE,
    check_threshold,
    decide,
    decision_codes,
    flip_rate,
    is_positive,
)
from pneumo.errors import ConfigError, PneumoError
from pneumo.evaluation.metrics import binary_metrics, confusion
from pneumo.evaluation.report import compute_evaluation

probabilities = st.floats(0.0, 1.0, allow_nan=False)


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, "0.25", np.float32(0.75)])
def test_check_threshold_accepts_probabilities(t):
    assert check_threshold(t) == float(t)
    assert isinstance(check_threshold(t), float)


@pytest.mark.parametrize("bad", [math.nan, -0.0001, 1.0001, math.inf, -math.inf, "half", None])
def test_check_threshold_refuses_the_rest(bad):
    with pytest.raises(ConfigError, match="--threshold must be") as info:
        check_threshold(bad, "--threshold")
    assert isinstance(info.value, PneumoError) and "\n" not in str(info.value)


def test_a_probability_at_the_threshold_is_positive():
    t = 0.37
    assert is_positive(t, t)
    assert not is_positive(np.nextafter(t, 0.0), t)
    assert decide(t, t) == "PNEUMONIA" and decide(np.nextafter(t, 0.0), t) == "NORMAL"
    assert is_positive(0.0, 0.0) and not is_positive(np.nextafter(1.0, 0.0), 1.0) and is_positive(1.0, 1.0)
    # float32 probabilities decide as their float64 values do: the threshold is not rounded to float32
    p32 = np.float32(0.3)
    assert bool(is_positive(p32, 0.3)) == (float(p32) >= 0.3)


@given(p=probabilities, t=probabilities)
def test_codes_and_labels_agree(p, t):
    code = int(decision_codes([p], t)[0])
    assert code == (PNEUMONIA_CODE if p >= t else NORMAL_CODE)
    assert decide(p, t) == ("PNEUMONIA" if p >= t else "NORMAL")


def test_refer_band_edges_are_inclusive():
    band = (0.2, 0.6)
    p = np.array([np.nextafter(0.2, 0.0), 0.2, 0.4, 0.6, np.nextafter(0.6, 1.0)])
    codes = decision_codes(p, 0.5, band)
    assert codes.tolist() == [NORMAL_CODE, REFER_CODE, REFER_CODE, REFER_CODE, PNEUMONIA_CODE]
    assert [decide(x, 0.5, band) for x in p] == ["NORMAL", "REFER", "REFER", "REFER", "PNEUMONIA"]
    # a band of one point refers that point only
    assert decision_codes([0.3, 0.3000001], 0.5, (0.3, 0.3)).tolist() == [REFER_CODE, PNEUMONIA_CODE]


def test_flip_rate():
    assert flip_rate([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert flip_rate([], []) == 0.0
    assert flip_rate(np.array([True, False]), np.array([True, False])) == 0.0


def test_metrics_and_evaluation_count_the_boundary_case_positive():
    """A case exactly at the threshold is a predicted positive in the confusion counts, in the weighted metrics
    (point estimate and bootstrap) and in the evaluation's per-case rows."""
    y = np.array([1, 0, 1, 0])
    prob = np.array([0.5, 0.5, 0.2, 0.1])
    assert confusion(y, prob, 0.5) == (1, 1, 1, 1)  # tn, fp, fn, tp
    m = binary_metrics(y, prob, 0.5)
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5 and m["confusion_matrix"] == [[1, 1], [1, 1]]
    ev = compute_evaluation(y=y, prob=prob, threshold=0.5, paths=None, n_boot=10)
    assert [r["prediction"] for r in ev.rows] == ["PNEUMONIA", "PNEUMONIA", "NORMAL", "NORMAL"]


@pytest.mark.parametrize("command", ["predict", "evaluate", "batch"])
@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan"])
def test_cli_refuses_a_bad_threshold_with_one_line(command, bad, tmp_path, capsys):
    """Every command with --threshold checks it the same way: one line, exit code 2, before any work."""
    (tmp_path / "a.png").write_bytes(b"")
    args = {
        "predict": ["predict", str(tmp_path / "a.png")],
        "evaluate": ["evaluate", str(tmp_path), "--out", str(tmp_path / "ev")],
        "batch": ["batch", str(tmp_path / "a.png"), "-o", str(tmp_path / "out.parquet")],
    }[command]
    assert main([*args, "--threshold", bad]) == 2
    err = capsys.readouterr().err
    assert "--threshold must be between 0 and 1" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev").exists() and not (tmp_path / "out.parquet").exists()
