"""One shift summary (issue 28): the worst case per figure naming its condition, NaN-safe and the same for any order
of the conditions; the suite, the operating point's worst framing and the model file's ``geometry_shift`` use it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pneumo.evaluation.calibration import worst_case_rates
from pneumo.evaluation.robustness import worst_case
from pneumo.evaluation.shifts import SUITE, TRAINING_CHECKS
from pneumo.evaluation.summary import FIGURES, ShiftSummary, shift_summary

NAN = float("nan")
GEOMETRY_FIGURES = ("roc_auc", "sensitivity", "specificity", "ece", "decisions_flipped")


def _per_condition() -> dict[str, dict[str, float]]:
    return {
        "a": {"roc_auc": 0.99, "sensitivity": 0.90, "ece": 0.02, "decisions_flipped": 0.01},
        "b": {"roc_auc": NAN, "sensitivity": 0.80, "ece": 0.10, "decisions_flipped": NAN},
        "c": {"roc_auc": 0.95, "sensitivity": NAN, "ece": NAN, "decisions_flipped": 0.20},
        "d": {"roc_auc": 0.97, "sensitivity": 0.85, "ece": 0.05, "decisions_flipped": 0.03},
    }


def _items(s: ShiftSummary) -> tuple:
    return tuple(s.worst.items()), tuple(s.worst_of.items())


def test_the_summary_is_the_same_for_every_order_of_the_conditions_with_nan_present():
    per = _per_condition()
    expected = shift_summary(per)
    assert expected.worst == {"sensitivity": 0.80, "roc_auc": 0.95, "ece": 0.10, "decisions_flipped": 0.20}
    assert expected.worst_of == {"sensitivity": "b", "roc_auc": "c", "ece": "b", "decisions_flipped": "c"}
    for names in itertools.permutations(per):
        got = shift_summary({n: per[n] for n in names})
        assert _items(got) == _items(expected), names  # values, conditions and the figures' order
        assert got.as_worst_case() == expected.as_worst_case()


def test_ties_name_the_condition_first_in_order_then_by_name_whatever_the_dict_order():
    per = {"y": {"sensitivity": 0.8}, "x": {"sensitivity": 0.8}, "z": {"sensitivity": 0.9}}
    for names in itertools.permutations(per):
        shuffled = {n: per[n] for n in names}
        assert shift_summary(shuffled).worst_of == {"sensitivity": "x"}
        assert shift_summary(shuffled, order=("z", "y")).worst_of == {"sensitivity": "y"}


def test_a_figure_finite_nowhere_is_left_out_and_unknown_figures_are_refused():
    s = shift_summary({"a": {"roc_auc": NAN, "ece": None, "sensitivity": 0.5}, "b": {"roc_auc": NAN}})
    assert s.worst == {"sensitivity": 0.5} and s.worst_of == {"sensitivity": "a"}
    with pytest.raises(ValueError, match="direction"):
        shift_summary({"a": {"brightness": 1.0}}, ("brightness",))


def test_shapes_of_the_two_consumers():
    per = {n: {**r, "specificity": 0.9} for n, r in _per_condition().items()}
    s = shift_summary(per, GEOMETRY_FIGURES)
    table = s.as_table()
    assert list(table) == ["worst", *per] and list(table["worst"]) == list(GEOMETRY_FIGURES)
    row = s.as_worst_case()
    assert list(row) == ["worst_of", *GEOMETRY_FIGURES]
    assert list(FIGURES)[:4] == ["accuracy", "sensitivity", "specificity", "roc_auc"]


def test_the_suite_worst_case_is_the_summary_and_ties_follow_the_suite_order():
    per = _per_condition()
    assert worst_case(per) == shift_summary(per).as_worst_case()
    first, second = list(SUITE)[:2]
    tied = {second: {"roc_auc": 0.9}, first: {"roc_auc": 0.9}}
    assert worst_case(tied)["worst_of"] == {"roc_auc": first}  # declared first in the suite, not first in the dict


def test_worst_framing_rates_are_nan_safe_and_order_free():
    y = np.array([0, 0, 1, 1])
    probs = {
        "clean": np.array([0.1, 0.2, 0.8, 0.9]),
        "zoom": np.array([0.1, 0.7, 0.3, 0.9]),
        "squeeze": np.array([0.6, 0.2, 0.8, 0.9]),
    }
    expected = {"sensitivity": 0.5, "sensitivity_of": "zoom", "specificity": 0.5, "specificity_of": "squeeze"}
    for names in itertools.permutations(probs):
        assert worst_case_rates(y, {n: probs[n] for n in names}, 0.5) == expected
    # All sensitivities tie at 1: the condition named is the first in ``order``, whatever the dict order.
    tie = {k: np.array([0.1, 0.2, 0.8, 0.9]) for k in ("squeeze", "clean")}
    assert worst_case_rates(y, tie, 0.5, order=("clean", "squeeze"))["sensitivity_of"] == "clean"
    no_normals = worst_case_rates(np.ones(2), {"clean": np.array([0.9, 0.8])}, 0.5)
    assert no_normals["sensitivity"] == 1.0 and math.isnan(no_normals["specificity"])


# --- finalisation (training/finalize.py) -----------------------------------------------------------------------


def _bare_min_max_geometry_shift_summary(y, clean_prob, shifted, temperature, bias, threshold) -> dict:
    """What ``training.finalize.geometry_shift_summary`` computed before the one shift summary: the same figures per
    check and a bare min / max over them (order-dependent with a NaN, the same without one)."""
    from pneumo.decision import flip_rate, is_positive
    from pneumo.evaluation.metrics import binary_metrics
    from pneumo.probability import calibrated_probability

    out = {}
    for name, logits in shifted.items():
        p = calibrated_probability(logits, temperature, bias)
        m = binary_metrics(y, p, threshold)
        out[name] = {k: float(m[k]) for k in ("roc_auc", "sensitivity", "specificity", "ece")}
        out[name]["decisions_flipped"] = flip_rate(is_positive(p, threshold), is_positive(clean_prob, threshold))
    worst = {k: min(r[k] for r in out.values()) for k in ("roc_auc", "sensitivity", "specificity")}
    worst.update({k: max(r[k] for r in out.values()) for k in ("ece", "decisions_flipped")})
    return {"worst": worst, **out}


def test_finalize_geometry_shift_summary_is_the_shift_summary_without_nan():
    finalize = pytest.importorskip("pneumo.training.finalize")  # needs torch
    from pneumo.probability import calibrated_probability

    rng = np.random.default_rng(11)
    y = np.r_[np.zeros(30), np.ones(40)].astype(int)
    clean = rng.normal(size=(70, 2)) + np.c_[np.zeros(70), 2.0 * y]
    shifted = {name: clean + rng.normal(scale=0.3 + i / 4, size=clean.shape) for i, name in enumerate(TRAINING_CHECKS)}
    clean_prob = calibrated_probability(clean, 1.3, 0.2)
    args = (y, clean_prob, shifted, 1.3, 0.2, 0.55)
    current = finalize.geometry_shift_summary(*args)
    before = _bare_min_max_geometry_shift_summary(*args)
    assert current == before
    assert list(current) == list(before) and list(current["worst"]) == list(before["worst"])  # same JSON text
    # finalize's subtype worst case: min / max over the checks with subtype figures, as the summary gives them
    for i, name in enumerate(TRAINING_CHECKS):
        current[name].update(bacterial_vs_viral=0.9 - i / 50, subtype_flipped=i / 40)
    sub = shift_summary({n: current[n] for n in TRAINING_CHECKS}, ("bacterial_vs_viral", "subtype_flipped"))
    assert sub.worst == {
        "bacterial_vs_viral": min(current[n]["bacterial_vs_viral"] for n in TRAINING_CHECKS),
        "subtype_flipped": max(current[n]["subtype_flipped"] for n in TRAINING_CHECKS),
    }
