"""The commands that need the training stack: ``train``, ``finalize``, ``models``, ``export``, ``ensemble``,
``soup``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pneumo.cli.common import (
    _FILLER_HELP,
    _RULE_HELP,
    _TARGET_SPEC_HELP,
    Balance,
    Filler,
    ModelOpt,
    Normalization,
    OutOpt,
    Rule,
    SplitBy,
    Task,
    Transfer,
    _default,
    _td,
    err,
    out,
)
from pneumo.errors import InputError


def train(
    data_dir: Annotated[
        Path, typer.Argument(help="Dataset root (its train split; without --split validation is carved from it)")
    ],
    out_dir: OutOpt,
    arch: Annotated[str | None, typer.Option(help="Architecture (see `pneumo models`)" + _td("arch"))] = None,
    task: Annotated[Task | None, typer.Option(help="What the model predicts" + _td("task"))] = None,
    subtype_head: Annotated[
        bool | None,
        typer.Option(help="With --task binary: add a normal/bacterial/viral head" + _td("subtype_head")),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs" + _td("epochs"))] = None,
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels" + _td("image_size"))] = None,
    normalization: Annotated[
        Normalization | None, typer.Option(help="equalize: histogram equalisation" + _td("normalization"))
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size" + _td("batch_size"))] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate" + _td("lr"))] = None,
    balance: Annotated[Balance | None, typer.Option(help="Class balancing" + _td("balance"))] = None,
    transfer: Annotated[
        Transfer | None, typer.Option(help="Layers trained: all, the top block, or the head" + _td("transfer"))
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(help="Start from shipped ImageNet weights" + _default("when the architecture ships them")),
    ] = None,
    augment: Annotated[bool, typer.Option(help="Random augmentation")] = True,
    split: Annotated[Path | None, typer.Option(help="Split CSV from `pneumo data split`")] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Validation share when no --split" + _td("val_fraction"))
    ] = None,
    split_by: Annotated[
        SplitBy | None,
        typer.Option(
            help="Without --split: hold out acquisition blocks (as `pneumo data split`) or patients at random"
            + _td("split_by")
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed" + _td("seed"))] = None,
    target_sensitivity: Annotated[
        float | None, typer.Option(help="Operating-point sensitivity" + _td("target_sensitivity"))
    ] = None,
    target_specificity: Annotated[
        float | None, typer.Option(help=_TARGET_SPEC_HELP + _td("target_specificity"))
    ] = None,
    threshold_rule: Annotated[Rule | None, typer.Option(help=_RULE_HELP + _td("threshold_rule"))] = None,
    heat_map_filler: Annotated[Filler | None, typer.Option(help=_FILLER_HELP + _td("heat_map_filler"))] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience in epochs" + _td("patience"))] = None,
    max_train_images: Annotated[
        int | None, typer.Option(min=1, help="Subsample the training images" + _default("all"))
    ] = None,
    devices: Annotated[
        int | None, typer.Option(min=1, help="Processes per node (data parallel)" + _td("devices"))
    ] = None,
    num_nodes: Annotated[int | None, typer.Option(min=1, help="Nodes" + _td("num_nodes"))] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp" + _td("strategy"))] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per process" + _default("torch's"))] = None,
    config: Annotated[Path | None, typer.Option(help="A config.yaml to start from (flags override it)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Resume from the run's last checkpoint")] = False,
) -> None:
    """Train a model and write a self-describing model.pneumo into the run directory.

    Example: pneumo train chest_xray -o runs/lite0 --split split.csv

    Example (the bundled model's recipe): pneumo train chest_xray -o runs/default --config configs/default.yaml
    """
    from pneumo.config import TrainConfig

    # Every option named like a config field sets it; the two whose names differ are mapped by hand. Choices
    # travel as their plain string values (what the config file holds).
    given = {
        k: (v.value if isinstance(v, StrEnum) else v)
        for k, v in locals().items()
        if k in TrainConfig.model_fields and k != "augment"
    }
    overrides = {**given, "out": out_dir, "split_csv": split}
    if not augment:
        overrides["augment"] = {"enabled": False}
    if resume and (out_dir / "config.yaml").is_file() and not config:
        config = out_dir / "config.yaml"
    cfg = TrainConfig.resolve(config, overrides)
    from pneumo.training.models import ARCHS

    if cfg.arch not in ARCHS:  # before the data are read; the library's own check comes later and names no option
        raise InputError(f"--arch {cfg.arch}: unknown architecture; `pneumo models` lists them")
    from pneumo.training.train import fit

    path = fit(cfg, resume=resume)
    if path is not None:  # None on the non-zero ranks of a distributed run
        out.print(f"wrote {path}", highlight=False)


def finalize(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with checkpoints/")],
    target_sensitivity: Annotated[
        float | None, typer.Option(help="Operating-point sensitivity" + _default("the run's"))
    ] = None,
    target_specificity: Annotated[float | None, typer.Option(help=_TARGET_SPEC_HELP + _default("the run's"))] = None,
    threshold_rule: Annotated[Rule | None, typer.Option(help=_RULE_HELP + _default("the run's"))] = None,
    heat_map_filler: Annotated[Filler | None, typer.Option(help=_FILLER_HELP + _default("the run's"))] = None,
) -> None:
    """Recalibrate, choose the threshold, refit the domain guard and re-export a run without retraining.

    Example: pneumo finalize runs/lite0 --target-sensitivity 0.99
    """
    from pneumo.training.refinalize import refinalize

    rule = None if threshold_rule is None else threshold_rule.value
    filler = None if heat_map_filler is None else heat_map_filler.value
    path = refinalize(
        run_dir, target_sensitivity, target_specificity=target_specificity, threshold_rule=rule, heat_map_filler=filler
    )
    out.print(f"wrote {path}", highlight=False)


def models() -> None:
    """List the architectures `pneumo train --arch` accepts.

    Example: pneumo models
    """
    from pneumo.training.models import ARCHS

    for name, spec in sorted(ARCHS.items()):
        weights = "ImageNet weights shipped" if spec.pretrained_available else "from scratch"
        out.print(f"{name:20s} {spec.description} ({weights})", highlight=False)


def export(
    output: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="model.onnx (graph + metadata) or model.pneumo")
    ],
    model: ModelOpt = None,
    int8: Annotated[bool, typer.Option("--int8", help="A quantised INT8 graph (needs --calibration-data)")] = False,
    calibration_data: Annotated[
        Path | None, typer.Option(help="--int8: images to calibrate on (validation images left out if told apart)")
    ] = None,
    validation_data: Annotated[
        Path | None,
        typer.Option(help="--int8: labelled validation images for parity" + _default("--calibration-data")),
    ] = None,
    split_csv: Annotated[Path | None, typer.Option(help="--int8: its 'val' rows are the validation images")] = None,
    calibration_images: Annotated[int, typer.Option(min=1, help="--int8: at most this many calibration images")] = 256,
) -> None:
    """Export to ONNX; fails unless ONNX Runtime reproduces PyTorch to 1e-3. With --int8: a QDQ INT8 graph,
    written only if on the validation images the AUC drops by <= 0.002, decisions agree on >= 99 % and the
    domain guard's flag rate moves by <= 1 point.

    Example: pneumo export -m runs/lite0 -o model.onnx
    """
    if int8:
        from pneumo.quantize import quantize_model

        if calibration_data is None:
            raise InputError("--int8 needs --calibration-data DIR")
        path, parity = quantize_model(model, output, calibration_data, validation_data=validation_data,
                                      split_csv=split_csv, calibration_images=calibration_images)  # fmt: skip
        if note := parity.calibration_note():
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
        out.print(f"wrote {path} (INT8: {parity.summary()})", highlight=False, soft_wrap=True)
        return
    from pneumo.training.export import export_model

    path = export_model(model, output)
    out.print(f"wrote {path} (ONNX Runtime matches PyTorch within 1e-3)", highlight=False)


def soup(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories: seeds of one recipe, one --split")],
    out_dir: OutOpt,
    name: Annotated[str | None, typer.Option(help="Model name" + _default("pneumo-ARCH-soupN"))] = None,
    data_dir: Annotated[Path | None, typer.Option("--data", help="Dataset root" + _default("the recorded one"))] = None,
    split_csv: Annotated[Path | None, typer.Option("--split", help="Split CSV" + _default("the recorded one"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache" + _default("the recorded one"))] = None,
) -> None:
    """One network: the members' best checkpoints averaged weight by weight, batch norm refitted on the training
    split under the recipe's augmentation, then calibrated, thresholded and validated like a trained run.

    Example: pneumo soup runs/s1 runs/s2 runs/s3 --out runs/soup
    """
    from pneumo.training.soup import build_soup

    path = build_soup(runs, out_dir, name=name, data_dir=data_dir, split_csv=split_csv, cache_dir=cache_dir)
    from pneumo.modelfile import read_meta

    v = read_meta(path).validation
    out.print(f"wrote {path}: {len(runs)} members averaged; {v.measured_on}: AUC {v.roc_auc:.3f}", highlight=False,
              soft_wrap=True)  # fmt: skip


def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run directories or .pneumo files of one recipe")],
    data_dir: Annotated[Path, typer.Option("--data", help="Dataset root the members' split refers to")],
    split_csv: Annotated[Path, typer.Option("--split", help="The `pneumo data split` CSV all members trained on")],
    output: Annotated[Path, typer.Option("--output", "-o", "--out", help="The ensemble's model file (.pneumo)")],
    name: Annotated[str | None, typer.Option(help="Model name" + _default("the first member's, -ensembleN"))] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Decoded-image cache" + _default("as the members'"))] = None,
) -> None:
    """One ONNX graph averaging the members' logits (the first member's domain guard), recalibrated and
    thresholded again on the members' common validation split pooled with its geometry-shifted copies.

    Example: pneumo ensemble runs/s0 runs/s1 runs/s2 --data chest_xray --split split.csv -o ensemble.pneumo
    """
    from pneumo.training.ensemble import build_ensemble

    path = build_ensemble(runs, output, data_dir, split_csv, name=name, cache_dir=cache_dir)
    from pneumo.modelfile import read_meta

    v = read_meta(path).validation
    worst = (v.geometry_shift or {}).get("worst")
    worst_auc = float("nan") if worst is None or worst.roc_auc is None else worst.roc_auc
    out.print(f"wrote {path}: {len(runs)} members; {v.measured_on}: AUC {v.roc_auc:.3f}; worst geometry shift "
              f"AUC {worst_auc:.3f}", highlight=False, soft_wrap=True)  # fmt: skip
