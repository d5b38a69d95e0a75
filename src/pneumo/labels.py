"""The label vocabulary, in one place: class names, decisions, the subtype order and each task's classes."""

from __future__ import annotations

import typing

Decision = typing.Literal["NORMAL", "PNEUMONIA", "REFER"]
DECISIONS: tuple[str, ...] = typing.get_args(Decision)  # in this order the decision codes 0 / 1 / 2 of adapt
# The class folders and the binary decisions; REFER is a decision only (a site's REFER band, pneumo adapt --refer).
NORMAL, PNEUMONIA, REFER = DECISIONS
BINARY_CLASSES = (NORMAL, PNEUMONIA)
TASK_CLASSES: dict[str, list[str]] = {"binary": [NORMAL, PNEUMONIA], "subtype": [NORMAL, "BACTERIA", "VIRUS"]}
# The subtype head's outputs in order (normal, bacterial, viral), indexed by the subtypes that file names give.
SUBTYPE_INDEX = {"none": 0, "bacteria": 1, "virus": 2}
