"""Training: the Lightning module, the data it reads, and :func:`fit`.

Images are decoded once into a uint8 cache at the training size (:mod:`pneumo.training.cache`); an epoch only indexes a
memory map and augments whole batches, so both CPU cores go to the network.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torchmetrics.classification import BinaryAUROC

from pneumo import atomic
from pneumo.config import TrainConfig
from pneumo.data import SplitData, patient_number
from pneumo.evaluation.shifts import TRAINING_CHECKS
from pneumo.labels import TASK_CLASSES
from pneumo.probability import pneumonia_log_odds
from pneumo.training.augment import augment_batch, lung_field, normalize_batch
from pneumo.training.consistency import pair_divergence, with_twins
from pneumo.training.models import model_for, resolve_pretrained, set_transfer_mode
from pneumo.training.splits import UNKNOWN_SUBTYPE, load_splits, task_targets

MONITOR = "val_auc_worst"  # clean validation rewards the framing shortcut; the worst of the checks does not


class CachedImages(torch.utils.data.Dataset):
    """Index -> (uint8 image tensor C x H x W, target); augmentation happens later, on whole batches.

    With ``copies`` (each N x H x W, :func:`pneumo.evaluation.shifts.checked_copies`), channel 0 is the image and
    channel k its copy under the k-th check."""

    def __init__(self, split: SplitData, indices: np.ndarray | None = None, copies: Sequence[np.ndarray] = ()):
        self.split = split
        self.indices = np.arange(len(split.targets)) if indices is None else indices
        self.copies = list(copies)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        stack = np.stack([np.asarray(self.split.images[j]), *(c[j] for c in self.copies)])
        return torch.from_numpy(stack), int(self.split.targets[j])


def balanced_indices(targets: np.ndarray, seed: int) -> np.ndarray:
    """Oversample every class up to the largest one's count (the repeats see different augmentations)."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(targets)
    parts = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(targets == c)
        if n == 0:
            continue
        extra = rng.choice(idx, counts.max() - n, replace=True) if n < counts.max() else idx[:0]
        parts += [idx, extra]
    return np.sort(np.concatenate(parts))


class PneumoModule(L.LightningModule):
    """Cross-entropy training with batched augmentation; validation AUC of pneumonia vs normal."""

    def __init__(self, cfg: TrainConfig, class_weights: list[float] | None = None):
        super().__init__()
        cfg = resolve_pretrained(cfg)
        self.save_hyperparameters({"cfg": cfg.model_dump(mode="json"), "class_weights": class_weights})
        self.cfg = cfg
        self.net = model_for(cfg, pretrained=bool(cfg.pretrained))
        set_transfer_mode(self.net, cfg.transfer)
        self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("class_weights", torch.tensor(class_weights) if class_weights else torch.ones(0))
        self.val_auc = BinaryAUROC()
        # the same validation images under each check of the shift suite: the worst AUC chooses the checkpoint
        self.shift_aucs = torch.nn.ModuleList(BinaryAUROC() for _ in TRAINING_CHECKS)
        self.preproc = cfg.preprocessing()
        aug = cfg.augment
        lungs = (
            lung_field(aug.lung_atlas, cfg.image_size, aug.lung_atlas_level)
            if aug.enabled and aug.context_swap_p > 0
            else torch.zeros(0)
        )
        self.register_buffer("lungs", lungs, persistent=False)

    def network_inputs(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """A uint8 batch as the network reads it: scaled, augmented when ``train``, normalised, channels last."""
        x = x.float() / 255.0
        if train:
            x = augment_batch(x, self.cfg.augment, self.lungs if self.lungs.numel() else None)
        return normalize_batch(x, self.preproc).contiguous(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch
        x, k, n = *with_twins(x, self.cfg.augment.context_consistency), len(y)
        logits, sub, _ = self.net.forward_all(self.network_inputs(x, train=True))
        twins, logits, sub = logits[n:], logits[:n], (sub[:n] if sub is not None else None)
        weight = self.class_weights if self.class_weights.numel() else None
        target = y if self.cfg.task == "subtype" else (y > 0).long()
        loss = F.cross_entropy(logits, target, weight=weight, label_smoothing=self.cfg.label_smoothing)
        if sub is not None:
            sub_target = torch.where(y >= UNKNOWN_SUBTYPE, torch.full_like(y, -100), y)
            sub_loss = F.cross_entropy(sub, sub_target, label_smoothing=self.cfg.label_smoothing)
            loss = loss + self.cfg.subtype_weight * sub_loss
        if k:  # a penalty on evidence outside the lungs (pneumo.training.consistency)
            self.log("consistency_js", js := pair_divergence(logits[:k], twins), on_epoch=True, batch_size=k)
            loss = loss + self.cfg.augment.context_consistency * js
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        stack, y = batch  # channel 0 the image, channel k its copy under the k-th check
        x = stack[:, :1]
        logits = self.net(self.network_inputs(x, train=False))
        loss = F.cross_entropy(logits, y if self.cfg.task == "subtype" else (y > 0).long())
        p_pneumonia = torch.sigmoid(pneumonia_log_odds(logits))
        self.val_auc.update(p_pneumonia, (y > 0).long())
        for k, auc in enumerate(self.shift_aucs, start=1):
            x_check = self.network_inputs(stack[:, k : k + 1], train=False)
            auc.update(torch.sigmoid(pneumonia_log_odds(self.net(x_check))), (y > 0).long())
        acc = ((p_pneumonia >= 0.5).long() == (y > 0).long()).float().mean()
        self.log("val_loss", loss, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log("val_acc", acc, prog_bar=True, batch_size=len(y), sync_dist=True)

    def on_validation_epoch_end(self):
        aucs = [self.val_auc.compute()]
        self.log("val_auc", aucs[0], prog_bar=True, sync_dist=False)
        for auc, name in zip(self.shift_aucs, TRAINING_CHECKS, strict=True):
            aucs.append(auc.compute())
            self.log("val_auc_" + re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_"), aucs[-1], sync_dist=False)
            auc.reset()
        self.log(MONITOR, torch.stack(aucs).min(), prog_bar=True, sync_dist=False)
        self.val_auc.reset()

    def on_train_start(self):
        # A run resumed with more --epochs restores the old OneCycle plan; stretch it to the new total instead
        # of failing when the step count passes the old one (OneCycleLR keeps its phases as plain end steps).
        sched = self.lr_schedulers()
        total = int(self.trainer.estimated_stepping_batches)
        if sched is not None and getattr(sched, "total_steps", total) != total:
            sched.total_steps = total
            ends = [float(self.PCT_START * total) - 1, total - 1]
            for phase, end in zip(sched._schedule_phases, ends, strict=True):
                phase["end_step"] = end

    PCT_START = 0.15

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.cfg.lr, total_steps=total, pct_start=self.PCT_START
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ResumeState(L.Callback):
    """What a checkpoint must carry for a resumed run to equal an uninterrupted one, beyond Lightning's own state:
    every random generator (torch, numpy, python, and the sampler's generator that orders the data) and the
    training time spent before the checkpoint.

    Augmentation draws from torch's global generator and the sampler from ``generator``; Lightning restores
    weights, optimizer, scheduler and loop counters but none of these, so without them a resumed run saw another
    data order and other augmentations than the run it continues."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.started = time.time()
        self.seconds_before = 0.0  # training time of the earlier parts of this run

    def elapsed(self) -> float:
        return self.seconds_before + time.time() - self.started

    def state_dict(self) -> dict:
        import random

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # tensors, ints and tuples only: checkpoints are read back with torch.load(weights_only=True)
        return {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "python": random.getstate(),
            "sampler": self.generator.get_state(),
            "train_seconds": self.elapsed(),
        }

    def load_state_dict(self, state: dict) -> None:
        import random

        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        self.generator.set_state(state["sampler"])
        self.seconds_before = float(state["train_seconds"])
        self.started = time.time()


def recency_indices(paths: list[str], seed: int, recency: float) -> np.ndarray:
    """Training indices that favour recent images: each image numbered by :func:`pneumo.data.patient_number`
    is drawn with a weight rising linearly with its rank in collection order, from 1 (the earliest) to
    ``1 + recency`` (the latest), as many draws as there are numbered images; unnumbered images once each."""
    numbers = np.array([-1 if (k := patient_number(p)) is None else k for p in paths])
    numbered = np.flatnonzero(numbers >= 0)
    rest = np.flatnonzero(numbers < 0)
    if recency == 0 or len(numbered) < 2:
        return np.arange(len(paths))
    rank = np.argsort(np.argsort(numbers[numbered], kind="stable"), kind="stable") / (len(numbered) - 1)
    weight = 1.0 + recency * rank
    drawn = np.random.default_rng(seed).choice(numbered, len(numbered), replace=True, p=weight / weight.sum())
    return np.sort(np.concatenate([rest, drawn]))


def train_loader(cfg: TrainConfig, train: SplitData) -> torch.utils.data.DataLoader:
    """The training batches as ``cfg`` draws them (balancing, recency), shuffled with the run's seed."""
    idx = balanced_indices(task_targets(train.targets, cfg.task), cfg.seed) if cfg.balance == "oversample" else None
    if cfg.recency:  # TrainConfig refuses it together with oversampling
        idx = recency_indices(train.paths, cfg.seed, cfg.recency)
    gen = torch.Generator().manual_seed(cfg.seed)
    # No worker processes: a batch is a memmap slice; workers would only compete for the two cores.
    return torch.utils.data.DataLoader(
        CachedImages(train, idx), batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=gen
    )


def _loaders(cfg: TrainConfig, train: SplitData, val: SplitData, checks: dict[str, np.ndarray]):
    copies = [checks[name] for name in TRAINING_CHECKS]  # the order of the module's shift_aucs
    vl = torch.utils.data.DataLoader(CachedImages(val, copies=copies), batch_size=cfg.batch_size * 2, shuffle=False)
    return train_loader(cfg, train), vl


def class_weights(cfg: TrainConfig, targets: np.ndarray) -> list[float] | None:
    """With ``balance: weights``, the loss weight of each class: inverse frequency, mean one over the samples."""
    if cfg.balance != "weights":
        return None
    counts = np.bincount(task_targets(targets, cfg.task), minlength=len(TASK_CLASSES[cfg.task])).astype(float)
    return (counts.sum() / (len(counts) * np.maximum(counts, 1))).tolist()


def _keep_metrics_history(run: Path) -> Path | None:
    """Lightning's CSV logger deletes metrics.csv when it starts; keep the epochs before a resume aside."""
    current = run / "logs" / "metrics.csv"
    kept = run / "logs" / "metrics_before_resume.csv"
    if current.is_file():
        if kept.is_file():  # an earlier resume was itself interrupted: keep everything seen so far
            _merge_metrics(kept, current)
        current.replace(kept)
    return kept if kept.is_file() else None


def _merge_metrics(history: Path, current: Path) -> None:
    """``current`` becomes the rows of ``history`` followed by its own, over the union of their columns."""
    import csv

    rows, cols = [], []
    for f in (history, current):
        if f.is_file():
            with f.open(newline="") as fh:
                reader = csv.DictReader(fh)
                cols += [c for c in reader.fieldnames or [] if c not in cols]
                rows += list(reader)
    tmp = current.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(current)
    history.unlink()


def fit(cfg: TrainConfig, resume: bool = False) -> Path | None:
    """Train, then (on the main process) calibrate, fit the domain guard, export and write ``model.pneumo``.

    Returns the model file's path on the main process and ``None`` on the other ranks of a distributed run."""
    from pneumo.training.finalize import finalize_run, validation_checks

    cfg = resolve_pretrained(cfg)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg.dump(run / "config.yaml")
    t0 = time.time()
    train, val, summary = load_splits(cfg)
    data_seconds = time.time() - t0

    module = PneumoModule(cfg, class_weights(cfg, train.targets))
    # made once, from the files as the shift suite makes them: every epoch's checks and the operating point's fit
    checks = validation_checks(val, cfg.image_size)
    tl, vl = _loaders(cfg, train, val, checks)
    state = ResumeState(tl.generator)
    ckpt = ModelCheckpoint(dirpath=run / "checkpoints", filename="best", monitor=MONITOR, mode="max")
    # Lightning's save_last writes last.ckpt only in epochs that also improved the best one, so a run killed after
    # an epoch that did not would resume from an older epoch: a checkpoint of its own, every epoch.
    last_ckpt = ModelCheckpoint(
        dirpath=run / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        max_epochs=cfg.epochs,
        callbacks=[ckpt, last_ckpt, EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.patience), state],
        logger=CSVLogger(run, name="", version="logs"),
        deterministic=False,
        log_every_n_steps=10,
        enable_model_summary=False,
        default_root_dir=run,
    )
    last = run / "checkpoints" / "last.ckpt"
    resuming = resume and last.is_file()
    history = _keep_metrics_history(run) if resuming else None
    t1 = time.time()
    trainer.fit(module, tl, vl, ckpt_path=str(last) if resuming else None)
    train_seconds = time.time() - t1
    if history is not None and trainer.is_global_zero:
        _merge_metrics(history, run / "logs" / "metrics.csv")
    if not trainer.is_global_zero:
        return None

    # A resumed run adds the training time of the parts before the checkpoint it started from.
    train_seconds += state.seconds_before
    timing = {"data_seconds": round(data_seconds, 1), "train_seconds": round(train_seconds, 1)}
    if state.seconds_before:
        timing["train_seconds_before_resume"] = round(state.seconds_before, 1)
    timing["epochs"] = int(trainer.current_epoch)
    timing["seconds_per_epoch"] = round(train_seconds / max(1, trainer.current_epoch), 1)
    best = ckpt.best_model_path or str(last)
    module.net.load_state_dict(checkpoint_net_state(best))
    atomic.write_text(run / "timing.json", json.dumps(timing, indent=2))
    return finalize_run(cfg, module.net, train, val, summary, timing, checks)


def checkpoint_net_state(ckpt_path: str) -> dict[str, torch.Tensor]:
    """The network's weights in a Lightning checkpoint of :class:`PneumoModule` (its ``net.`` entries, unprefixed)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
