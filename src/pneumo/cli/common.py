"""What the commands share: the two consoles, the option types, the choices and the ``[default: …]`` texts.

Light on purpose (typer, rich and :mod:`pneumo.choices`): ``pneumo --help`` imports this and every command module.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console

from pneumo import choices
from pneumo.choices import TRAIN_DEFAULTS

out = Console()
err = Console(stderr=True)


def _default(text: str) -> str:
    """`` [default: text]`` for a help string, escaped: rich would take an unescaped ``[default: …]`` for markup
    and swallow it. For options whose real default is decided later (by the model file, by the config)."""
    return rf" \[default: {text}]"


def _td(name: str) -> str:
    """The help's ``[default: …]`` of a ``train`` option: :data:`pneumo.choices.TRAIN_DEFAULTS`, which are
    TrainConfig's (the options themselves default to None so that a --config file's values are not overridden)."""
    value = getattr(TRAIN_DEFAULTS, name)
    return _default(
        ("on" if value else "off")
        if isinstance(value, bool)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def _choice(name: str, literal) -> type[StrEnum]:
    """A StrEnum of a ``Literal``'s values: typer shows and checks an option's choices from an Enum."""
    return StrEnum(name, [(value, value) for value in get_args(literal)])


HeatMethod = _choice("HeatMethod", choices.HeatMethod)
Task = _choice("Task", choices.Task)
Balance = _choice("Balance", choices.Balance)
Transfer = _choice("Transfer", choices.Transfer)
Normalization = _choice("Normalization", choices.Normalization)
Rule = _choice("Rule", choices.ThresholdRule)
Engine = _choice("Engine", choices.Engine)
Split = _choice("Split", choices.DatasetSplit)
SplitBy = _choice("SplitBy", choices.SplitBy)
Filler = _choice("Filler", choices.HeatMapFiller)
_FILLER_HELP = (
    "What the model file keeps for the heat map's hidden regions: films (4 normal training X-rays: the maps land "
    "best), synthetic (4 drawn from a model of them: no patient's film in the file) or grey"
)
OutputFormat = _choice("OutputFormat", choices.OutputFormat)


def _bundled_threshold() -> str:
    """The bundled model's threshold for the help texts, read from its meta.json alone (a few ms, stdlib only);
    an empty string when the file is missing or damaged (the commands say so when they need it)."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(Path(__file__).parents[1] / "assets" / "default.pneumo") as zf:
            return f"{float(json.loads(zf.read('meta.json'))['threshold']):.3f}"
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return ""


_BUNDLED_T = _bundled_threshold()
_MODEL_THRESHOLD = "the model's own" + (f"; {_BUNDLED_T} for the bundled model" if _BUNDLED_T else "")
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model file (.pneumo or exported .onnx) or run directory" + _default("the bundled model"),
    ),
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="Decision threshold, 0-1 (PNEUMONIA at or above it)" + _default(_MODEL_THRESHOLD))
]
OutOpt = Annotated[Path, typer.Option("--output", "-o", "--out", help="Run directory")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535, help="TCP port")]

_RULE_HELP = (
    "worst_case: the largest margin to both targets in the worst framing condition; pooled: the target sensitivity "
    "on validation pooled with its checked copies"
)
_TARGET_SPEC_HELP = "The worst_case rule's specificity target"


def checked_threshold(threshold: float | None) -> float | None:
    """A ``--threshold`` option checked by the decision core (:func:`pneumo.decision.check_threshold`) before
    anything is read: out of range or NaN it is a :class:`~pneumo.errors.ConfigError` naming the option (exit 2)."""
    if threshold is None:
        return None
    from pneumo.decision import check_threshold

    return check_threshold(threshold, "--threshold")
