"""One typed training config. Defaults are the default recipe (the ones `pneumo train --help` shows are
:data:`pneumo.choices.TRAIN_DEFAULTS`); the resolved config is written to every run.

Pure pydantic (no torch): reading or checking a config is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from pneumo.atomic import write_text
from pneumo.choices import TRAIN_DEFAULTS as D
from pneumo.choices import Balance, HeatMapFiller, Normalization, SplitBy, Task, ThresholdRule, Transfer
from pneumo.evaluation.calibration import OperatingRule
from pneumo.modelfile import Preprocessing


class AugmentConfig(BaseModel):
    """Ranges of the random transforms; a probability of 0 or a range of 0 switches one off."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is an error, not a silent default

    enabled: bool = True
    rotation_deg: float = 10.0
    shear_deg: float = 5.0
    scale: tuple[float, float] = Field(default=(0.75, 1.33), description="content scale, log-uniform (>1 enlarges)")
    aspect: tuple[float, float] = Field(default=(0.8, 1.25), description="width/height stretch, log-uniform")
    flat_margin_p: float = Field(default=0.5, description="share of images whose margins are flat grey, not edge")
    translate: float = 0.08
    hflip_p: float = 0.5
    brightness: float = 0.10
    contrast: float = 0.20
    gamma: float = 0.30
    blur_sharpen_p: float = 0.5
    blur_sigma_max: float = 1.5
    sharpen_max: float = 1.5
    resolution_loss_p: float = 0.3
    resolution_min_scale: float = 0.4
    noise_p: float = 0.3
    noise_std_max: float = 0.04
    border_erase_p: float = Field(default=0.3, ge=0.0, le=1.0, description="share of images with flat grey edges")
    border_erase_max: float = Field(default=0.2, ge=0.0, le=0.5, description="deepest band, share of the frame")
    marker_p: float = Field(default=0.5, ge=0.0, le=1.0, description="share of images given a marker-like text")
    marker_size: tuple[float, float] = Field(default=(0.04, 0.1), description="marker height, share of the frame")
    context_swap_p: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="share of images whose region outside the lung atlas is replaced by another image's (of either "
        "class), before the geometry: what lies outside the lungs stops telling the class; needs lung_atlas",
    )
    lung_atlas: Path | None = Field(
        default=None, description="the lung atlas PNG (share of images with lung per pixel, framed as the images)"
    )
    lung_atlas_level: float = Field(default=0.1, gt=0.0, lt=1.0, description="atlas share that counts as lung field")
    context_consistency: float = Field(
        default=0.0,
        ge=0.0,
        le=100.0,
        description="weight of a penalty on evidence outside the lungs: half the batch is seen twice, each copy with "
        "its own context swap and geometry, and the Jensen-Shannon divergence of the two pneumonia probabilities "
        "is added to the loss; needs context_swap_p",
    )

    @model_validator(mode="after")
    def _swap_needs_atlas(self) -> AugmentConfig:
        if self.context_swap_p > 0 and self.lung_atlas is None:
            raise ValueError("augment.context_swap_p needs augment.lung_atlas (a lung atlas PNG)")
        if self.context_consistency > 0 and self.context_swap_p <= 0:
            raise ValueError("augment.context_consistency needs augment.context_swap_p > 0 (the copies differ by it)")
        return self


class TrainConfig(BaseModel):
    """Everything that determines a training run."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option in a config file is an error, not a silent default

    data_dir: Path
    out: Path
    arch: str = D.arch
    task: Task = D.task
    subtype_head: bool = Field(default=D.subtype_head, description="binary task plus a normal/bacterial/viral head")
    subtype_weight: float = Field(default=1.0, gt=0.0, le=100.0, description="the subtype head's loss weight")
    pretrained: bool | None = Field(default=None, description="ImageNet weights; None: when the arch ships them")
    transfer: Transfer = D.transfer
    image_size: int = Field(default=D.image_size, ge=32, le=1024)
    normalization: Normalization = D.normalization
    content_scales: list[float] = Field(
        default_factory=list,
        validation_alias=AliasChoices("content_scales", "tta"),  # "tta" in configs written before the rename
        description="test-time content scales recorded in the model file",
    )
    epochs: int = Field(default=D.epochs, ge=1)
    batch_size: int = Field(default=D.batch_size, ge=1)
    lr: float = Field(default=D.lr, gt=0.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    label_smoothing: float = Field(default=0.05, ge=0.0, lt=1.0)
    balance: Balance = D.balance
    recency: float = Field(
        default=0.0,
        ge=0.0,
        le=4.0,
        description="resample pneumonia images by collection order (Kermany patient number): the latest drawn "
        "1 + recency times as often as the earliest, as many in all; 0: each once",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    lung_field: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="the network sees only the atlas's lung field: pixels where at least this share of the training "
        "images have lung (augment.lung_atlas, feathered edge); everything else is the mean grey, set inside the "
        "network, so training and every prediction (the ONNX graph) see the same field; None: the whole frame",
    )
    lung_field_blur: int = Field(
        default=0,
        ge=0,
        le=64,
        description="with lung_field: what lies outside the field is the image averaged over squares of this many "
        "pixels (its exposure, not its detail) instead of mean grey; 0: mean grey",
    )
    val_fraction: float = Field(default=D.val_fraction, gt=0.0, lt=1.0)
    split_by: SplitBy = Field(
        default=D.split_by,
        description="without split_csv, how validation is carved: blocks (whole acquisition periods of each "
        "patient-numbering sequence, as `pneumo data split`) or patient (at random by patient)",
    )
    split_blocks: int = Field(default=D.split_blocks, ge=1, le=20, description="blocks per sequence (split_by: blocks)")
    split_csv: Path | None = Field(default=None, description="a split written by `pneumo data split`")
    max_train_images: int | None = Field(default=None, description="subsample training images (quick runs)")
    seed: int = D.seed
    target_sensitivity: float = D.target_sensitivity
    target_specificity: float = Field(
        default=D.target_specificity, gt=0.0, le=1.0, description="the worst_case rule's second target"
    )
    threshold_rule: ThresholdRule = Field(
        default=D.threshold_rule,
        description="worst_case: the largest margin to both targets in the worst framing condition; pooled: the "
        "highest threshold with target_sensitivity on validation pooled with its checked copies",
    )
    heat_map_filler: HeatMapFiller = Field(
        default=D.heat_map_filler,
        description="what finalisation writes into the model file for the occlusion heat map's hidden regions: films "
        "(four NORMAL training images: the maps land on the lungs most often, but the file then holds four "
        "patients' X-rays), synthetic (four films drawn from a Gaussian model of all the NORMAL training images: "
        "no patient's film) or grey (nothing: the image's mean grey)",
    )
    patience: int = Field(default=D.patience, ge=0)
    devices: int = Field(default=D.devices, ge=1)
    num_nodes: int = Field(default=D.num_nodes, ge=1)
    strategy: str = D.strategy
    threads: int | None = Field(default=None, ge=1)
    name: str | None = None
    cache_dir: Path | None = None
    domain_quantile: float = Field(default=0.98, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one_resampling(self) -> TrainConfig:
        if self.recency and self.balance == "oversample":
            raise ValueError("recency and balance: oversample both resample the training images; choose one")
        return self

    @model_validator(mode="after")
    def _field_needs_atlas(self) -> TrainConfig:
        if self.lung_field is not None and self.augment.lung_atlas is None:
            raise ValueError("lung_field needs augment.lung_atlas (a lung atlas PNG)")
        if self.lung_field_blur and self.lung_field is None:
            raise ValueError("lung_field_blur needs lung_field")
        return self

    def operating_rule(self) -> OperatingRule:
        return OperatingRule(self.threshold_rule, self.target_sensitivity, self.target_specificity)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(
            image_size=self.image_size, normalization=self.normalization, content_scales=self.content_scales
        )

    def dump(self, path: Path) -> None:
        write_text(path, yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @classmethod
    def resolve(
        cls, config_file: Path | dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
    ) -> TrainConfig:
        """A config file or mapping (or the defaults) with ``overrides`` on top; ``None`` values override nothing,
        and an ``augment`` mapping updates the file's augmentation field by field."""
        if isinstance(config_file, dict):
            base = dict(config_file)
        else:
            base = cls.read_mapping(config_file) if config_file else {}
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if isinstance(given.get("augment"), dict):
            given["augment"] = {**dict(base.get("augment") or {}), **given["augment"]}
        return cls.model_validate({**base, **given})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.model_validate(cls.read_mapping(path))

    @staticmethod
    def read_mapping(path: Path) -> dict[str, Any]:
        """A config file's mapping: a whole dumped config or a recipe naming only what differs from the defaults."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file holds a mapping of TrainConfig fields")
        return data
