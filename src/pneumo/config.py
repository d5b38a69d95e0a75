"""One typed training config. Defaults are the default recipe; the resolved config is written to every run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from pneumo.atomic import write_text
from pneumo.augment import AugmentConfig
from pneumo.modelfile import Preprocessing


class TrainConfig(BaseModel):
    """Everything that determines a training run."""

    data_dir: Path
    out: Path
    arch: str = "efficientnet_lite0"
    task: Literal["binary", "subtype"] = "binary"
    subtype_head: bool = Field(default=False, description="binary task plus a normal/bacterial/viral head")
    pretrained: bool = True
    transfer: Literal["full", "top", "linear"] = "full"
    image_size: int = 128
    normalization: Literal["none", "equalize"] = "equalize"
    tta: list[float] = Field(default_factory=list, description="test-time content scales recorded in the model file")
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.2
    label_smoothing: float = 0.05
    balance: Literal["weights", "oversample", "none"] = "weights"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    val_fraction: float = 0.1
    split_csv: Path | None = Field(default=None, description="a split written by `pneumo data split`")
    max_train_images: int | None = Field(default=None, description="subsample training images (quick runs)")
    seed: int = 0
    target_sensitivity: float = 0.98
    patience: int = 4
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    threads: int | None = None
    name: str | None = None
    cache_dir: Path | None = None
    domain_quantile: float = 0.98

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=self.image_size, normalization=self.normalization, tta=self.tta)

    def dump(self, path: Path) -> None:
        write_text(path, yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.model_validate(yaml.safe_load(path.read_text()))
