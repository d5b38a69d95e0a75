"""Runs pooled into recipes: ``pneumo compare --by-recipe``.

Seeds decide as much as recipes here: three seeds of one recipe have spread by 0.30 in the worst held-out period's
specificity (docs/experiments.md). A recipe is therefore judged on all its seeds, each figure as the mean with the
lowest and the highest seed beside it. Runs belong to one recipe when their recorded training configs, read through
today's :class:`pneumo.config.TrainConfig` (so older files, with older names and fewer keys, resolve to the same
defaults), are equal but for what names, places or seeds the run (:data:`PER_RUN`). Each recipe also says how its
config differs from the first recipe's, so a table of recipes reads as a table of trials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pneumo.evaluation.compare import HEADERS, MISSING, format_value
from pneumo.modelfile import without_paths

# What names, places, seeds or spreads a run over machines: never part of a recipe.
PER_RUN = frozenset({"seed", "name", "out", "data_dir", "cache_dir", "threads", "devices", "num_nodes", "strategy"})
# The figures pooled over a recipe's runs (the comparison's numeric columns, but size and parameters, which a recipe
# fixes).
POOLED = (
    "accuracy", "sensitivity", "specificity", "roc_auc", "f1", "ece", "shift_worst_auc", "shift_worst_specificity",
    "worst_block_specificity", "lungs_hidden_auc", "only_lungs_auc", "train_minutes",
)  # fmt: skip


def recipe_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run's training config as a recipe: resolved to today's defaults where it still validates, paths cut to
    their names, the per-run keys left out. Flattened: ``{"augment.context_swap_p": 0.8, ...}``."""
    from pneumo.config import TrainConfig

    try:
        resolved = TrainConfig.model_validate(dict(config)).model_dump(mode="json")
    except ValueError:  # a config this version no longer reads: compared as recorded
        resolved = dict(config)
    return {k: v for k, v in _flatten(without_paths(resolved)).items() if k not in PER_RUN}


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def group_recipes(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The comparison's rows (:func:`pneumo.evaluation.compare.compare_runs`) pooled by recipe, in the order each
    recipe first appears: ``name``, ``runs``, ``seeds``, ``differs`` (``key=value`` where its config differs from the
    first recipe's), and for each figure of :data:`POOLED` its mean, ``<figure>_min`` and ``<figure>_max`` over the
    runs that have it (None when none has). Rows without a recorded config (evaluate folders, hand-made files) are
    recipes of their own."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        config = recipe_config(row["config"]) if row.get("config") else None
        if config is not None and row.get("combines"):  # a soup or an ensemble of a recipe's seeds is not a seed
            config["combines"] = row["combines"]
        key = json.dumps(config, sort_keys=True, default=str) if config is not None else f"row {i}"
        groups.setdefault(key, []).append(row)
        configs.setdefault(key, config or {})
    reference = next(iter(configs.values()), {})
    recipes = []
    for key, members in groups.items():
        recipe: dict[str, Any] = {
            "name": _common_name([str(m["name"]) for m in members]),
            "runs": len(members),
            "seeds": [m.get("seed") for m in members],
            "differs": _differences(configs[key], reference),
        }
        for figure in POOLED:
            values = [float(m[figure]) for m in members if m.get(figure) is not None]
            recipe[figure] = sum(values) / len(values) if values else None
            recipe[f"{figure}_min"] = min(values, default=None)
            recipe[f"{figure}_max"] = max(values, default=None)
        recipes.append(recipe)
    return recipes


def _common_name(names: Sequence[str]) -> str:
    """The runs' common name (``blkfb`` for ``blkfb_s4``, ``blkfb_s5``), or the first name when they share none."""
    if len(names) == 1:
        return names[0]
    common = names[0]
    for name in names[1:]:
        while not name.startswith(common):
            common = common[:-1]
    common = common.rstrip("-_")
    if common.endswith(("_s", "-s")):
        common = common[:-2]
    return common or names[0]


def _differences(config: Mapping[str, Any], reference: Mapping[str, Any]) -> str:
    if not config:
        return MISSING  # nothing recorded to compare
    keys = sorted(k for k in config.keys() | reference.keys() if config.get(k) != reference.get(k))
    return ", ".join(f"{k}={json.dumps(config.get(k))}" for k in keys)


def format_recipes(recipes: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: one row per recipe, each figure as ``mean (lowest–highest)`` over its runs (the mean alone
    for one run), and what its config changes against the first recipe's (empty for the first)."""
    columns = [HEADERS.get(f, f) for f in POOLED]
    lines = [
        "| recipe | runs | seeds | differs from the first recipe | " + " | ".join(columns) + " |",
        "|---|---:|---|---|" + "---:|" * len(POOLED),
    ]
    for r in recipes:
        cells = [_pooled(r, f) for f in POOLED]
        seeds = ", ".join(MISSING if s is None else str(s) for s in r["seeds"])
        head = [str(r["name"]), str(r["runs"]), seeds, str(r["differs"])]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in head + cells) + " |")
    return "\n".join(lines) + "\n"


def _pooled(recipe: Mapping[str, Any], figure: str) -> str:
    mean, lo, hi = recipe[figure], recipe[f"{figure}_min"], recipe[f"{figure}_max"]
    if mean is None:
        return MISSING
    if lo == hi:
        return format_value(figure, mean)
    return f"{format_value(figure, mean)} ({format_value(figure, lo)}–{format_value(figure, hi)})"
