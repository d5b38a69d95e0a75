"""``pneumo soup``: the seeds of one recipe averaged in weight space, one network at one network's cost.

Seeds spread more widely than recipes differ here (docs/experiments.md): whichever single seed ships is a draw. A
logit ensemble (:mod:`pneumo.training.ensemble`) averages the draw away at one network pass per member, and a heat map
at one occlusion run per member and cell. A uniform "model soup" (Wortsman et al., ICML 2022) averages the members'
weights instead. Seeds fine-tuned from the same pretrained weights often stay in one basin, so the average can work;
it is not certain, and nothing here assumes it: the soup is finalised like any run (calibration, threshold, domain
guard, lung checks, every validation figure) and judged on those figures.

The batch-norm statistics of an average are not the average of the statistics, so they are fitted again on the
training split, one pass under the recipe's own training augmentation (the statistics the members trained with), by
:func:`torch.optim.swa_utils.update_bn`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pneumo import atomic
from pneumo.config import TrainConfig
from pneumo.errors import ModelFileError
from pneumo.recipes import recipe_config
from pneumo.training.finalize import finalize_run
from pneumo.training.splits import SplitData, load_splits, recorded_split
from pneumo.training.train import PneumoModule, checkpoint_net_state, train_loader

CHECKPOINT = Path("checkpoints") / "best.ckpt"  # each member's chosen epoch, the one its model file was made from


def member_config(run: Path) -> TrainConfig:
    """A member run's recorded training config."""
    if not (run / "config.yaml").is_file() or not (run / CHECKPOINT).is_file():
        raise ModelFileError(f"{run}: not a finished run directory (config.yaml and {CHECKPOINT} are needed)")
    return TrainConfig.resolve(recorded_split(TrainConfig.read_mapping(run / "config.yaml")), {"out": run})


def check_one_recipe(runs: Sequence[Path], configs: Sequence[TrainConfig]) -> None:
    """Members must be seeds of one recipe on one split: an average of different inputs, heads or fields, or of
    networks validated on different images, would be judged on images some member trained on."""
    if len(runs) < 2:
        raise ModelFileError("a soup needs at least two run directories")
    first = recipe_config(configs[0].model_dump(mode="json"))
    for run, cfg in zip(runs[1:], configs[1:], strict=True):
        recipe = recipe_config(cfg.model_dump(mode="json"))
        differs = sorted(k for k in first.keys() | recipe.keys() if first.get(k) != recipe.get(k))
        if differs:
            raise ModelFileError(f"{run}: not a seed of {runs[0]}'s recipe ({', '.join(differs)} differ)")
    if not configs[0].split_csv:  # a carved split moves with each member's seed
        raise ModelFileError("members were not trained on a recorded split; train them with the same --split")
    # The recipes name the split file; where the members' files are still at hand, their rows must be the same too.
    splits = [Path(c.split_csv) for c in configs if c.split_csv is not None]
    if all(f.is_file() for f in splits) and len({f.read_bytes() for f in splits}) > 1:
        raise ModelFileError("the members' split files differ (same name, other rows); train them with one --split")


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of floating-point tensors; integer ones (batch counts) are the first member's."""
    keys = states[0].keys()
    if any(s.keys() != keys for s in states):
        raise ModelFileError("the members' networks have different layers")
    out = {}
    for k in keys:
        ts = [s[k] for s in states]
        out[k] = torch.stack([t.float() for t in ts]).mean(0).to(ts[0].dtype) if ts[0].is_floating_point() else ts[0]
    return out


def refit_batch_norm(module: PneumoModule, train: SplitData, cfg: TrainConfig) -> int:
    """Fit the network's batch-norm statistics again on one pass over the training split, each batch augmented as
    in training; returns the number of images seen."""
    loader = train_loader(cfg, train)
    torch.optim.swa_utils.update_bn((module.network_inputs(x, train=True) for x, _ in loader), module.net)
    module.net.eval()
    return len(loader) * cfg.batch_size  # whole batches only (drop_last)


def save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> None:
    """A checkpoint :func:`pneumo.training.train.checkpoint_net_state` reads, so ``pneumo finalize`` works on it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}}, path)


def build_soup(runs: Sequence[str | Path], out: str | Path, *, name: str | None = None, **paths: Any) -> Path:
    """Average ``runs``' best checkpoints into the run directory ``out``, refit batch norm and finalise it; returns
    the model file. ``paths`` override the recorded ``data_dir``, ``split_csv`` or ``cache_dir`` (the members' data
    moved)."""
    runs = [Path(r) for r in runs]
    configs = [member_config(r) for r in runs]
    check_one_recipe(runs, configs)
    out = Path(out)
    given = {k: v for k, v in paths.items() if v is not None}
    cfg = TrainConfig.resolve(
        recorded_split(configs[0].model_dump(mode="json")),
        {**given, "out": out, "name": name or f"pneumo-{configs[0].arch}-soup{len(runs)}"},
    )
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, verbose=False)  # the augmentation of the batch-norm pass
    cfg.dump(out / "config.yaml")
    train, val, summary = load_splits(cfg)

    module = PneumoModule(cfg)  # the recipe's augmentation and lung field; its weights are replaced below
    module.net.load_state_dict(average_states([checkpoint_net_state(str(r / CHECKPOINT)) for r in runs]))
    bn_images = refit_batch_norm(module, train, cfg)
    save_checkpoint(module.net.state_dict(), out / CHECKPOINT)

    members = [json.loads(t.read_text()) if (t := r / "timing.json").is_file() else {} for r in runs]
    timing = {
        "train_seconds": round(sum(float(m.get("train_seconds", 0.0)) for m in members), 1),
        "soup": {"members": [r.name for r in runs], "seeds": [c.seed for c in configs], "bn_images": bn_images},
    }
    atomic.write_text(out / "timing.json", json.dumps(timing, indent=2))
    return finalize_run(cfg, module.net, train, val, summary, timing)
