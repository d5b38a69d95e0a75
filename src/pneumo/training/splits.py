"""The training and validation images of a run: scanned, split and decoded into the cache.

Validation is a split CSV's ``val`` rows (``split_csv``, from ``pneumo data split``) or, without one, carved here as
``pneumo data split`` carves it: by acquisition blocks (``split_by: blocks``, the default: whole periods of each
patient-numbering sequence held out, which a random split cannot see; names outside every sequence fall back to a
random split by patient, said in a warning) or at random by patient (``split_by: patient``). A run trained before
``split_by`` existed was split at random: :func:`recorded_split` reads its config that way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.config import TrainConfig
from pneumo.data import SplitData, block_split, scan_dataset, split_dataset
from pneumo.errors import DataError
from pneumo.inputs import read_split_csv
from pneumo.labels import PNEUMONIA, SUBTYPE_INDEX
from pneumo.training.cache import build_cache

UNKNOWN_SUBTYPE = 3  # pneumonia whose subtype the file name does not tell: trains the binary head only
log = logging.getLogger("pneumo.training.splits")


def recorded_split(config: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded config (``config.yaml`` or the model file's training config) with the split it was trained
    on spelled out: one without ``split_csv`` and without ``split_by`` predates the block default and was split at
    random by patient."""
    if not config.get("split_csv") and "split_by" not in config:
        return {**config, "split_by": "patient"}
    return config


def _carve(cfg: TrainConfig, records) -> tuple[list[str], dict[str, str], str]:
    """Without a split CSV: each record's side, the held-out block of each validation path, and a description."""
    if cfg.split_by == "patient":
        splits = split_dataset(records, val_fraction=cfg.val_fraction, seed=cfg.seed)
        return splits, {}, f"patient-grouped, val_fraction={cfg.val_fraction}"
    result = block_split(records, val_fraction=cfg.val_fraction, n_blocks=cfg.split_blocks, seed=cfg.seed)
    if result.unsequenced:
        log.warning(
            "warning: %d of %d images have names outside every patient-numbering sequence (IM-, NORMAL2-IM-, "
            "person…_bacteria, person…_virus): they were split AT RANDOM by patient; give --split for your own "
            "blocks", result.unsequenced, len(records),
        )  # fmt: skip
    block_of = {r.rel: b for r, b in zip(records, result.blocks, strict=True) if b}
    return (
        result.splits,
        block_of,
        f"acquisition blocks, val_fraction={cfg.val_fraction}, {cfg.split_blocks} per sequence",
    )


def _targets(labels: list[str], subtypes: list[str], task: str, subtype_head: bool = False) -> np.ndarray:
    """Class indices: 0/1 for the binary task; 0/1/2 (normal/bacterial/viral) for the subtype task and for the
    binary task with a subtype head (then also 3 = pneumonia of unknown subtype); -1 = unusable for the task."""
    if task == "binary" and not subtype_head:
        return np.array([int(lbl.upper() == PNEUMONIA) for lbl in labels], dtype=np.int64)
    unknown = UNKNOWN_SUBTYPE if task == "binary" else -1
    pairs = zip(labels, subtypes, strict=True)
    return np.array([0 if lbl.upper() != PNEUMONIA else SUBTYPE_INDEX.get(s, unknown) for lbl, s in pairs])


def task_targets(targets: np.ndarray, task: str) -> np.ndarray:
    """What the main head is trained on: the class index for the subtype task, pneumonia or not otherwise."""
    return targets if task == "subtype" else (targets > 0).astype(targets.dtype)


def load_splits(cfg: TrainConfig) -> tuple[SplitData, SplitData, dict]:
    """Scan, split (or read ``cfg.split_csv``) and decode both splits into the cache (the module says how)."""
    ds = scan_dataset(cfg.data_dir)
    records = ds.training_records()
    if not records:
        raise DataError(f"{cfg.data_dir}: no images found (expected NORMAL/ and PNEUMONIA/ folders)")
    block_of: dict[str, str] = {}
    if cfg.split_csv:
        rows = read_split_csv(cfg.split_csv)
        by_rel = {row.path: row.split for row in rows}
        block_of = {row.path: row.block for row in rows if row.block}
        splits = [by_rel.get(r.rel, "unused") for r in records]
        if "val" not in splits:
            raise DataError(
                f"{cfg.split_csv}: no validation image of it is under {cfg.data_dir} "
                "(make the split with `pneumo data split` on the same folder you train on)"
            )
    else:
        splits, block_of, described = _carve(cfg, records)
    out = []
    skipped: list[tuple[str, str]] = []  # (path relative to the dataset root, reason) of unreadable images
    n_decoded = 0
    for name in ("train", "val"):
        recs = [r for r, s in zip(records, splits, strict=True) if s == name]
        if name == "train" and cfg.max_train_images and len(recs) > cfg.max_train_images:
            keep = np.random.default_rng(cfg.seed).choice(len(recs), cfg.max_train_images, replace=False)
            recs = [recs[i] for i in sorted(keep)]
        cache = build_cache([r.path for r in recs], cfg.image_size, cfg.cache_dir)
        skipped += [(recs[i].rel, cache.reason(i)) for i in np.flatnonzero(~np.asarray(cache.ok))]
        n_decoded += len(recs)
        targets = _targets([r.label for r in recs], [r.subtype for r in recs], cfg.task, cfg.subtype_head)
        ok = np.asarray(cache.ok) & (targets >= 0)
        idx = np.flatnonzero(ok)
        out.append(
            SplitData(
                images=cache.images[idx] if not ok.all() else cache.images,
                targets=targets[idx],
                paths=[str(recs[i].path) for i in idx],
                subtypes=[recs[i].subtype for i in idx],
                blocks=[block_of.get(recs[i].rel, "") for i in idx] if block_of else [],
            )
        )
    train, val = out
    _check_skipped(skipped, n_decoded)
    summary = {
        # the dataset's folder name and counts, never a path of the training machine
        "dataset": Path(cfg.data_dir).resolve().name,
        "train_images": len(train.targets),
        "val_images": len(val.targets),
        "train_class_counts": np.bincount(task_targets(train.targets, cfg.task)).tolist(),
        "val_class_counts": np.bincount(task_targets(val.targets, cfg.task)).tolist(),
        "val_patients": len({r.patient_id for r, s in zip(records, splits, strict=True) if s == "val"}),
        "split": Path(cfg.split_csv).name if cfg.split_csv else described,
        "split_method": "acquisition blocks" if block_of else "random by patient",
        "skipped_files": {"count": len(skipped), "files": [rel for rel, _ in skipped[:MAX_SKIPPED_LISTED]]},
    }
    return train, val, summary


# Above this share of unreadable images the folder is more likely wrong or damaged than a few files bad.
MAX_SKIPPED_FRACTION = 0.02
MAX_SKIPPED_LISTED = 1000  # names recorded in the model's metadata (the count is always exact)


def _check_skipped(skipped: list[tuple[str, str]], n_images: int) -> None:
    """Warn about unreadable images (count and the first reasons); fail above :data:`MAX_SKIPPED_FRACTION`."""
    if not skipped:
        return
    first = "; ".join(f"{rel}: {why}" for rel, why in skipped[:3])
    share = len(skipped) / max(1, n_images)
    if share > MAX_SKIPPED_FRACTION:
        raise DataError(
            f"{len(skipped)} of {n_images} images ({share:.1%}) cannot be read, more than the "
            f"{MAX_SKIPPED_FRACTION:.0%} training tolerates (first: {first}); "
            "`pneumo data inspect --verify` lists them all"
        )
    log.warning(
        "warning: skipping %d unreadable image%s of %d (%s%s)",
        len(skipped),
        "" if len(skipped) == 1 else "s",
        n_images,
        first,
        "; ..." if len(skipped) > 3 else "",
    )
