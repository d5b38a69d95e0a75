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
def infer_batches(net: PneumoNet, images: np.ndarray, preproc, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Logits and pooled features of uint8 images (N x H x W) without augmentation."""
    from pneumo.augment import normalize_batch

    net = net.eval().to(memory_format=torch.channels_last)
    logits, feats = [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[i : i + batch])).float()[:, None] / 255.0
        x = normalize_batch(x, preproc).contiguous(memory_format=torch.channels_last)
        lg, f = net.forward_with_features(x)
        logits.append(lg.numpy())
        feats.append(f.numpy())
    return np.concatenate(logits), np.concatenate(feats)


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
    val_logits, val_feats = infer_batches(net, val.images, preproc)
    y_bin = (val.targets > 0).astype(int)
    temperature, bias = fit_calibration(val_logits, y_bin)
    raw_prob = calibrated_probability(val_logits)
    prob = calibrated_probability(val_logits, temperature, bias)
    threshold = choose_threshold(y_bin, prob, cfg.target_sensitivity)

    metrics = validation_metrics(y_bin, prob, threshold)
    metrics["ece_before_calibration"] = expected_calibration_error(raw_prob, y_bin)
    if cfg.task == "subtype":
        subtype_pred = subtype_probabilities(val_logits, temperature, bias).argmax(1)
        metrics["subtype_accuracy"] = float((subtype_pred == val.targets).mean())

    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(train.targets), min(DOMAIN_FIT_IMAGES, len(train.targets)), replace=False))
    _, train_feats = infer_batches(net, train.images[pick], preproc)
    guard, arrays = fit_domain_guard(train_feats, val_feats, quantile=cfg.domain_quantile)

    meta = ModelMeta(
        name=cfg.name or f"pneumo-{cfg.arch}-{cfg.task}",
        version=__version__,
        arch=cfg.arch,
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
    np.savez(run / "val_outputs.npz", logits=val_logits, features=val_feats, targets=val.targets)
    (run / "validation.json").write_text(json.dumps(model.meta.validation, indent=2))
    return path
