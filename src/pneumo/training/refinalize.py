"""``pneumo train --refinalize``: finalise a finished run again from its checkpoint, without training again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumo.config import TrainConfig
from pneumo.modelfile import read_meta
from pneumo.training.finalize import finalize_run
from pneumo.training.models import model_for
from pneumo.training.splits import load_splits, recorded_split
from pneumo.training.train import checkpoint_net_state


def refinalize(run: Path, target_sensitivity: float | None = None, **operating: Any) -> Path:
    """Re-run calibration, threshold choice, domain-guard fitting and export on a finished run's best checkpoint
    (after changing those steps, the target sensitivity or the other ``operating`` fields: ``target_specificity``,
    ``threshold_rule``) without training again. The files are written into ``run``, wherever the run directory was
    trained or has been moved or copied since; ``config.yaml`` keeps what it was trained with."""
    run = Path(run)
    given = {"target_sensitivity": target_sensitivity, **operating}
    cfg = TrainConfig.resolve(recorded_split(TrainConfig.read_mapping(run / "config.yaml")), {**given, "out": run})
    ckpts = [run / "checkpoints" / n for n in ("best.ckpt", "last.ckpt")]
    ckpt = next((c for c in ckpts if c.is_file()), None)
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no checkpoints/best.ckpt or last.ckpt to finalize")
    train, val, summary = load_splits(cfg)
    net = model_for(cfg, read_field=False)  # the checkpoint carries the field
    net.load_state_dict(checkpoint_net_state(str(ckpt)))
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
    previous = run / "model.pneumo"  # its lung checks stand for the same network when the atlas is gone
    lungs = read_meta(previous).validation.lung_checks if previous.is_file() else None
    kept = None if lungs is None else {k: v.model_dump() for k, v in lungs.items()}
    return finalize_run(cfg, net, train, val, summary, timing, lung_checks=kept)
