"""After training: calibrate, choose the operating point, fit the domain guard, export, write the model file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from pneumo import __version__
from pneumo.calibration import choose_threshold, expected_calibration_error, fit_calibration
from pneumo.config import TrainConfig
from pneumo.domain import fit_domain_guard
from pneumo.export import build_model_file
from pneumo.modelfile import TASK_CLASSES, ModelMeta, save_model_file
from pneumo.models import PneumoNet, count_parameters
from pneumo.probability import calibrated_probability, subtype_probabilities

DOMAIN_FIT_IMAGES = 2000


@torch.no_grad()
def infer_batches(
    net: PneumoNet, images: np.ndarray, preproc, batch: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, domain features and subtype logits (or None) of uint8 images (N x H x W), without augmentation."""
    from pneumo.augment import normalize_batch

    net = net.eval().to(memory_format=torch.channels_last)
    outs: list[tuple] = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[i : i + batch])).float()[:, None] / 255.0
        x = normalize_batch(x, preproc).contiguous(memory_format=torch.channels_last)
        lg, sub, f = net.forward_all(x)
        outs.append((lg.numpy(), f.numpy(), None if sub is None else sub.numpy()))
    sub = None if outs[0][2] is None else np.concatenate([o[2] for o in outs])
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), sub


def _onnx_ms_per_image(onnx_bytes: bytes, image_size: int, batch: int = 16, repeats: int = 5) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 1, image_size, image_size)).astype(np.float32)
    sess.run(None, {"image": x})
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, {"image": x})
    return (time.perf_counter() - t) / (repeats * batch) * 1000


def validation_metrics(y_bin: np.ndarray, prob: np.ndarray, threshold: float, n_boot: int = 500) -> dict:
    """Point metrics plus bootstrap 95 % intervals, flattened for the model file."""
    from pneumo.evaluate import binary_metrics, bootstrap_ci

    m = binary_metrics(y_bin, prob, threshold)
    out = {k: v for k, v in m.items() if isinstance(v, int | float)}
    out["ci95"] = {k: [float(a), float(b)] for k, (a, b) in bootstrap_ci(y_bin, prob, threshold, n_boot).items()}
    return out


def finalize_run(cfg: TrainConfig, net: PneumoNet, train, val, data_summary: dict, timing: dict) -> Path:
    """Write ``model.pneumo`` (and ``validation.json``) into the run directory; return the model path."""
    run = Path(cfg.out)
    preproc = cfg.preprocessing()
    val_logits, val_feats, val_sub = infer_batches(net, val.images, preproc)
    y_bin = (val.targets > 0).astype(int)
    temperature, bias = fit_calibration(val_logits, y_bin)
    raw_prob = calibrated_probability(val_logits)
    prob = calibrated_probability(val_logits, temperature, bias)
    threshold = choose_threshold(y_bin, prob, cfg.target_sensitivity)

    metrics = validation_metrics(y_bin, prob, threshold)
    metrics["ece_before_calibration"] = expected_calibration_error(raw_prob, y_bin)
    if cfg.task == "subtype" or cfg.subtype_head:
        known = val.targets <= 2
        subtype_pred = subtype_probabilities(val_logits, temperature, bias, val_sub).argmax(1)
        metrics["subtype_accuracy"] = float((subtype_pred == val.targets)[known].mean())
        pneumonia = known & (val.targets > 0)  # bacterial vs viral among pneumonia, as Kermany 2018 reported
        split = subtype_pred[pneumonia]
        metrics["bacterial_vs_viral_accuracy"] = float((np.maximum(split, 1) == val.targets[pneumonia]).mean())

    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(train.targets), min(DOMAIN_FIT_IMAGES, len(train.targets)), replace=False))
    _, train_feats, _ = infer_batches(net, train.images[pick], preproc)
    guard, arrays = fit_domain_guard(train_feats, val_feats, quantile=cfg.domain_quantile)

    meta = ModelMeta(
        name=cfg.name or f"pneumo-{cfg.arch}-{cfg.task}{'+subtype' if cfg.subtype_head else ''}",
        version=__version__,
        arch=cfg.arch,
        arch_kwargs={"subtype_head": True} if cfg.subtype_head else {},
        task=cfg.task,
        class_names=list(TASK_CLASSES[cfg.task]),
        preprocessing=preproc,
        temperature=temperature,
        calibration_bias=bias,
        threshold=threshold,
        target_sensitivity=cfg.target_sensitivity,
        params=count_parameters(net),
        feature_dim=int(val_feats.shape[1]),
        validation=metrics,
        data=data_summary,
        training={**timing, "config": cfg.model_dump(mode="json")},
        domain_guard=guard,
    )
    model = build_model_file(net, meta, arrays)
    model.meta.validation["cpu_ms_per_image"] = round(_onnx_ms_per_image(model.onnx, preproc.image_size), 2)
    path = save_model_file(run / "model.pneumo", model)
    extra = {} if val_sub is None else {"subtype_logits": val_sub}
    np.savez(run / "val_outputs.npz", logits=val_logits, features=val_feats, targets=val.targets, **extra)
    (run / "validation.json").write_text(json.dumps(model.meta.validation, indent=2))
    return path
