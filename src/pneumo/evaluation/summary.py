"""The one summary of figures measured under several shift conditions: each condition's figures and, per figure, the
worst value over the conditions and which condition gave it.

Used by the shift suite (:func:`pneumo.evaluation.robustness.worst_case`), the operating point's worst framing
(:func:`pneumo.evaluation.calibration.worst_case_rates`) and the model file's ``geometry_shift`` (finalisation and
ensembles). A model is judged on the worst case, never on the mean, which hides one bad shift.

Two rules make the summary a function of the figures alone, not of the order the conditions arrive in:

- a figure that is not a finite number under a condition (an AUC of one class is NaN) is left out for that
  condition; a figure finite under no condition is left out of the worst case;
- a tie names the condition that comes first in ``order`` (the suite's declared order, when the caller passes it),
  then the others by name.

numpy only: :mod:`pneumo.config` imports the calibration that uses it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Lower is worse for these, higher for the others: the worst case takes each figure from its own worst condition.
HIGHER_IS_BETTER = ("accuracy", "sensitivity", "specificity", "roc_auc", "bacterial_vs_viral")
LOWER_IS_BETTER = (
    "ece",
    "decisions_flipped",
    "mean_abs_change",
    "flagged_out_of_domain",
    "flagged_not_pediatric",
    "flagged_unusual_acquisition",
    "subtype_flipped",
)
FIGURES = (*HIGHER_IS_BETTER, *LOWER_IS_BETTER)


@dataclass(frozen=True)
class ShiftSummary:
    """``per_condition``: the figures as measured; ``worst``: figure -> its worst value, in the order the figures
    were asked for; ``worst_of``: figure -> the condition that gave it."""

    per_condition: dict[str, dict[str, Any]]
    worst: dict[str, float]
    worst_of: dict[str, str]

    def as_worst_case(self) -> dict[str, Any]:
        """The shift suite's worst-case row: ``{"worst_of": {figure: condition}, figure: value, ...}``."""
        return {"worst_of": dict(self.worst_of), **self.worst}

    def as_table(self, key: str = "worst") -> dict[str, Any]:
        """The model file's ``geometry_shift`` shape: ``{"worst": {figure: value}, condition: figures, ...}``."""
        return {key: dict(self.worst), **self.per_condition}


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def shift_summary(
    per_condition: Mapping[str, Mapping[str, Any]], figures: Sequence[str] = FIGURES, *, order: Sequence[str] = ()
) -> ShiftSummary:
    """The worst of each of ``figures`` over ``per_condition`` (condition -> figures), lowest for
    :data:`HIGHER_IS_BETTER` and highest for :data:`LOWER_IS_BETTER`, naming its condition. Non-finite figures are
    skipped; ties go to the condition first in ``order``, then by name, so the answer does not depend on the order
    of ``per_condition``."""
    unknown = [f for f in figures if f not in HIGHER_IS_BETTER and f not in LOWER_IS_BETTER]
    if unknown:
        raise ValueError(f"no known direction (higher or lower is better) for {unknown}")
    rank = {name: i for i, name in enumerate(order)}

    def tie_key(name: str) -> tuple[int, str]:
        return (rank.get(name, len(rank)), name)

    worst: dict[str, float] = {}
    worst_of: dict[str, str] = {}
    for figure in figures:
        sign = 1.0 if figure in HIGHER_IS_BETTER else -1.0
        scored = [(sign * float(r[figure]), tie_key(n), n) for n, r in per_condition.items() if _finite(r.get(figure))]
        if scored:
            _, _, name = min(scored)
            worst[figure], worst_of[figure] = per_condition[name][figure], name
    return ShiftSummary({n: dict(r) for n, r in per_condition.items()}, worst, worst_of)
