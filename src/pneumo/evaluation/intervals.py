"""The one interval type and the one percentile bootstrap behind every interval Pneumo reports.

:class:`Interval` is a figure with its bounds; the files keep the shapes they always had, each from one method:
``metrics.json``'s ``ci`` and the model file's ``ci95`` hold ``[lo, hi]`` (:meth:`Interval.as_pair`), the site
reports ``{"value", "lo", "hi"}`` (:meth:`Interval.as_json`, stored and checked as
:class:`pneumo.modelfile.meta.Interval`), the text reports ``0.950  (95% CI 0.900-0.980)``
(:meth:`Interval.text`).

:func:`bootstrap` is the percentile bootstrap of evaluation (cases resampled within each class,
:func:`pneumo.evaluation.report.bootstrap_intervals`) and of ``pneumo adapt`` (patients resampled within each class,
:func:`pneumo.adapt.fit.figures_with_intervals`): both describe a resample as a vector of how often each case was
drawn, so the figures of many resamples are one call of a weighted-count function. :func:`wilson` is the interval
of a proportion of a fixed count. numpy and the standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Figures = Callable[[np.ndarray], Mapping[str, np.ndarray]]  # B x N case weights -> figure -> B values


@dataclass(frozen=True)
class Interval:
    """A figure ``value`` and its interval ``[lo, hi]`` (NaN bounds when there is none)."""

    value: float
    lo: float
    hi: float

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    @property
    def finite(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def as_pair(self) -> list[float]:
        """``[lo, hi]``: the shape of ``metrics.json``'s ``ci`` and the model file's ``ci95``."""
        return [float(self.lo), float(self.hi)]

    def as_json(self) -> dict[str, float]:
        """``{"value", "lo", "hi"}``: the shape of the site reports (``pneumo adapt``)."""
        return {"value": float(self.value), "lo": float(self.lo), "hi": float(self.hi)}

    def text(self) -> str:
        """The report line's figure: ``0.950  (95% CI 0.900-0.980)``, the value alone without finite bounds."""
        if not self.finite:
            return f"{self.value:.3f}"
        return f"{self.value:.3f}  (95% CI {self.lo:.3f}-{self.hi:.3f})"


def percentile_bounds(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """The ``alpha / 2`` and ``1 - alpha / 2`` percentiles of the finite ``values``; NaN for none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def bootstrap(
    figures: Figures,
    resamples: Iterable[np.ndarray],
    n: int,
    *,
    keys: Sequence[str] | None = None,
    keep: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = None,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """Percentile bootstrap at level ``1 - alpha``: each figure's value on the ``n`` cases as they are (weights
    all 1) and its bounds over ``resamples`` (B x n weight matrices: how often each case was drawn; several chunks
    bound the memory). ``keys``: the figures wanted (default: all that ``figures`` returns); ``keep``: which
    resamples count (e.g. those with both classes); non-finite replicates are skipped per figure."""
    point = figures(np.ones((1, n)))
    keys = list(point) if keys is None else list(keys)
    drawn: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for weights in resamples:
        m = figures(weights)
        ok = np.ones(len(weights), dtype=bool) if keep is None else keep(m)
        for k in keys:
            drawn[k].append(np.asarray(m[k])[ok])
    return {
        k: Interval(float(point[k][0]), *percentile_bounds(np.concatenate(v) if v else np.empty(0), alpha))
        for k, v in drawn.items()
    }


def wilson(k: int, n: int, alpha: float = 0.05) -> Interval:
    """Wilson score interval at level ``1 - alpha`` for ``k`` successes in ``n`` trials (value ``k / n``); NaN when
    ``n`` is 0. The closed form (Wilson 1927; what ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``
    gives, which the tests check), with the standard library's normal quantile, so that ``pneumo compare`` needs no
    scipy."""
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - alpha / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 or k = n the bound is exactly 0 or 1; rounding must not put it a hair inside.
    return Interval(p, 0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))
