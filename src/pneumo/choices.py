"""The fixed choices of Pneumo's options and the training recipe's defaults, written once.

Plain ``Literal`` types and values, with no numpy or pydantic behind them: the typed config (:mod:`pneumo.config`)
annotates its fields with them, the library checks values against their tuples, and the command line builds its
choices and the defaults its help shows from them without slowing ``pneumo --help`` down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Task = Literal["binary", "subtype"]
Transfer = Literal["full", "top", "linear"]
Normalization = Literal["equalize", "none"]
Balance = Literal["weights", "oversample", "none"]
ThresholdRule = Literal["worst_case", "pooled"]
SplitBy = Literal["blocks", "patient"]  # `pneumo data split --by`
DatasetSplit = Literal["train", "val", "test"]  # a dataset root's split level, `pneumo evaluate --split`
HeatMethod = Literal["occlusion", "cam"]  # the first is the default
Engine = Literal["local", "ray"]  # `pneumo batch --engine`
OutputFormat = Literal["csv", "json"]  # `pneumo predict --format`
# What finalisation writes into a model file for the occlusion map to fill hidden regions with: four NORMAL training
# films, four films drawn from a model of them (no patient's film in the file), or nothing (the image's mean grey)
HeatMapFiller = Literal["films", "synthetic", "grey"]

SPLIT_METHODS: tuple[str, ...] = get_args(SplitBy)
HEAT_METHODS: tuple[str, ...] = get_args(HeatMethod)
ENGINES: tuple[str, ...] = get_args(Engine)

DEFAULT_IMAGE_SIZE = 128  # the network's input size in pixels, unless the recipe or the model file says otherwise


@dataclass(frozen=True)
class TrainDefaults:
    """What ``pneumo train`` does when neither a flag nor a ``--config`` file says otherwise. These are
    :class:`pneumo.config.TrainConfig`'s defaults; they live here so that the help can show them without loading
    pydantic."""

    arch: str = "efficientnet_lite0"
    task: Task = "binary"
    subtype_head: bool = False
    epochs: int = 6
    image_size: int = DEFAULT_IMAGE_SIZE
    normalization: Normalization = "equalize"
    batch_size: int = 32
    lr: float = 1e-3
    balance: Balance = "weights"
    transfer: Transfer = "full"
    val_fraction: float = 0.1
    split_by: SplitBy = "blocks"  # without a split CSV: hold out acquisition blocks, as `pneumo data split`
    split_blocks: int = 3
    seed: int = 0
    target_sensitivity: float = 0.98
    target_specificity: float = 0.90
    threshold_rule: ThresholdRule = "worst_case"
    heat_map_filler: HeatMapFiller = "films"
    patience: int = 4
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"


TRAIN_DEFAULTS = TrainDefaults()
