"""The validation record of a model file (``meta.json``'s ``validation``): what the model measured, and on what.

Typed and versioned, read by attribute. Every key a record holds today keeps its place: the typed ones are checked
(a rate is a number in [0, 1], a count a number, a label a string), and any other key is kept as it is, so files
made before the record was typed, and keys added by later tools, still load. A record is written back with exactly
the keys it was read or made with, in their order: an old file's ``meta.json`` comes out byte for byte as it went
in, and a key nobody recorded is never written as ``null``.

A figure that could not be measured (an AUC on one class) is NaN in memory and ``null`` in the file, as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_serializer, model_validator

# The record's layout. Files made before it was versioned have no ``version`` and read as 1; they are written back
# without one (their bytes stay the same), while records made now carry it.
VALIDATION_VERSION = 1


def _rate(x: float | None) -> float | None:
    if x is not None and not math.isnan(x) and not 0.0 <= x <= 1.0:
        raise ValueError(f"a rate must be between 0 and 1, not {x}")
    return x


Rate = Annotated[float | None, AfterValidator(_rate)]  # None: recorded as null (could not be measured)
# Counts stay the type they were written as: a reader uses a count only when it is a whole int (pneumo.serve.app).
Count = int | float | None


class _Record(BaseModel):
    """A part of the record, read by attribute: unknown keys kept; written back with its own keys only, in their
    order."""

    model_config = ConfigDict(extra="allow")
    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: Any) -> Any:
        record = handler(data)
        if isinstance(data, Mapping):
            record._order = list(data)
        return record

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Any):  # unannotated: the JSON schema stays the fields', not "any"
        if not isinstance(self, _Record):  # a plain dict set by model_copy(update=...), which validates nothing
            return self
        data = handler(self)
        names = self._names()
        return {k: data[k] for k in names if k in data}

    def _names(self) -> list[str]:
        """The keys this record holds: those it was read with, in order, then those set since."""
        extra = self.__pydantic_extra__ or {}
        held = self.model_fields_set | extra.keys()
        first = [k for k in self._order if k in held]
        return first + [k for k in (*type(self).model_fields, *extra) if k in held and k not in first]


class ShiftFigures(_Record):
    """One check of validation (or ``worst``, the worst case over them): figures at the threshold in force."""

    roc_auc: Rate = None
    sensitivity: Rate = None
    specificity: Rate = None
    ece: Rate = None
    decisions_flipped: Rate = Field(default=None, description="share of decisions that differ from the clean ones")
    bacterial_vs_viral: Rate = None
    subtype_flipped: Rate = None


class Rates(_Record):
    sensitivity: Rate = None
    specificity: Rate = None


class WorstFraming(Rates):
    """A rule's rates in the worst framing condition, each naming its condition (``clean`` for the images as
    they are)."""

    sensitivity_of: str | None = None
    specificity_of: str | None = None


class RuleFigures(_Record):
    """What one threshold rule chose and what it gives."""

    threshold: Rate = None
    pooled: Rates | None = Field(default=None, description="on validation pooled with its checked copies")
    worst_framing: WorstFraming | None = None


class OperatingPoint(Rates):
    """The operating point in force (pooled rates at the threshold), the rule that chose it and both rules'
    figures; files made before both rules were recorded have the pooled rates only."""

    rule: str | None = None
    target_sensitivity: Rate = None
    target_specificity: Rate = None
    rules: dict[str, RuleFigures] | None = None


class BlockRow(_Record):
    n: Count = None
    n_pneumonia: Count = None
    accuracy: Rate = None
    sensitivity: Rate = None
    specificity: Rate = None
    mean_probability: Rate = None


class WorstBlock(_Record):
    value: Rate = None
    block: str | None = None
    n: Count = None


class BlockFigures(_Record):
    """Per held-out acquisition block (a block split's validation) and the worst block of each rate."""

    threshold: Rate = None
    per_block: dict[str, BlockRow] | None = None
    worst_specificity: WorstBlock | None = None
    worst_sensitivity: WorstBlock | None = None


class LungCheck(_Record):
    """ROC AUC clean, with the lungs hidden and with only the lungs shown, on one set of images."""

    clean: Rate = None
    lungs_hidden: Rate = None
    only_lungs: Rate = None
    n: Count = None


class DomainRecord(_Record):
    """How the 'not a pediatric chest X-ray' guard was fitted (``pneumo.domain_fit``) and what it flags."""

    method: str | None = None
    fitted_on: str | None = None
    cutoff_set_on: str | None = None
    held_out_flagged_not_pediatric: dict[str, Rate] | None = None


class Validation(_Record):
    """The figures a model was validated with, each read by attribute; None: not recorded in this file."""

    version: Annotated[int, Field(ge=1)] = VALIDATION_VERSION
    measured_on: str | None = Field(default=None, description="the images the figures were measured on")
    accuracy: Rate = None
    sensitivity: Rate = None
    specificity: Rate = None
    precision: Rate = None
    npv: Rate = None
    f1: Rate = None
    roc_auc: Rate = None
    pr_auc: Rate = None
    ece: Rate = None
    brier: Rate = None
    threshold: Rate = None
    n: Count = None
    n_pos: Count = None
    n_neg: Count = None
    ci95: dict[str, list[float | None]] | None = Field(default=None, description="95 % interval [low, high]")
    ece_before_calibration: Rate = None
    operating_point_fitted_on: str | None = None
    operating_point: OperatingPoint | None = None
    geometry_shift: dict[str, ShiftFigures] | None = Field(
        default=None, description="per check of the shift suite that steers training, and 'worst'"
    )
    subtype_accuracy: Rate = None
    bacterial_vs_viral_accuracy: Rate = None
    blocks: BlockFigures | None = None
    cpu_ms_per_image: Annotated[float, Field(ge=0.0)] | None = None
    domain: DomainRecord | None = None
    lung_checks: dict[str, LungCheck] | None = Field(default=None, description="per set of images measured on")

    @model_validator(mode="after")
    def _known_version(self) -> Validation:
        if self.version > VALIDATION_VERSION:
            raise ValueError(
                f"validation record version {self.version} is newer than this Pneumo reads ({VALIDATION_VERSION}); "
                "upgrade pneumo"
            )
        return self

    @property
    def where(self) -> str:
        """What the figures were measured on, without the training machine's folders."""
        return measured_on_label(self.measured_on) if isinstance(self.measured_on, str) else "validation"

    def updated(self, **keys: Any) -> Validation:
        """This record with ``keys`` set (added at the end when new), validated anew."""
        return Validation.model_validate({**self.model_dump(), **keys})


def measured_on_label(where: str) -> str:
    """``"internal validation: /a/b/split.csv"`` (as older model files record it) -> ``"... : split.csv"``."""
    label, sep, split = where.partition(": ")
    return f"{label}{sep}{Path(split).name}" if sep and ("/" in split or "\\" in split) else where
