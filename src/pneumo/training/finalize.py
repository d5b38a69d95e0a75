"""After training: calibrate, choose the operating point, fit the domain guard, export, write the model file."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pneumo import atomic
from pneumo._version import __version__
from pneumo.config import TrainConfig
from pneumo.data import SplitData
from pneumo.decision import flip_rate, is_positive
from pneumo.domain import fit_domain_guard
from pneumo.evaluation.calibration import (
    OperatingRule,
    choose_threshold,
    choose_threshold_worst_case,
    fit_calibration,
    worst_case_rates,
)
from pneumo.evaluation.metrics import (
    bacterial_vs_viral_accuracy,
    binary_metrics,
    block_figures,
    expected_calibration_error,
    operating_point,
    says_viral,
)
from pneumo.evaluation.robustness import lung_checks
from pneumo.evaluation.shifts import FRAMING_CHECKS, TRAINING_CHECKS, checked_copies
from pneumo.evaluation.summary import shift_summary
from pneumo.explain.occlusion import normal_reference, synthetic_reference
from pneumo.inference import Predictor
from pneumo.labels import TASK_CLASSES
from pneumo.lungs import ATLAS_LEVEL, LungSource
from pneumo.modelfile import (
    LUNG_FIELD,
    OCCLUSION_DRAWN_FROM,
    OCCLUSION_REFERENCE,
    ModelFile,
    ModelMeta,
    onnx_session,
    save_model_file,
    without_paths,
)
from pneumo.modelfile.validation import VALIDATION_VERSION, Validation
from pneumo.probability import calibrated_probability, subtype_probabilities
from pneumo.training.export import build_model_file
from pneumo.training.models import PneumoNet, arch_kwargs, count_parameters

DOMAIN_FIT_IMAGES = 2000


@torch.no_grad()
def infer_batches(
    net: PneumoNet, images: np.ndarray, preproc, batch: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Logits, domain features and subtype logits (or None) of uint8 images (N x H x W), without augmentation.

    Logits are averaged over the test-time views of ``preproc`` exactly as :class:`pneumo.inference.Predictor`
    does; the features are those of the image as it is."""
    from pneumo.preprocess import averaged_views, views
    from pneumo.training.augment import normalize_batch, rescale_batch

    net = net.eval().to(memory_format=torch.channels_last)
    scales = views(preproc)
    averaged = averaged_views(preproc)
    outs: list[tuple] = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.array(images[i : i + batch])).float()[:, None] / 255.0
        per_view = {}  # view index -> (logits, subtype logits, features)
        for k in sorted({0, *averaged}):
            v = x if scales[k] == 1.0 else rescale_batch(x, scales[k], scales[k])
            per_view[k] = net.forward_all(normalize_batch(v, preproc).contiguous(memory_format=torch.channels_last))
        lg = torch.stack([per_view[k][0] for k in averaged]).mean(0)
        sub = None if per_view[0][1] is None else torch.stack([per_view[k][1] for k in averaged]).mean(0)
        outs.append((lg.numpy(), per_view[0][2].numpy(), None if sub is None else sub.numpy()))
    sub = None if outs[0][2] is None else np.concatenate([o[2] for o in outs])
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), sub


def _onnx_ms_per_image(onnx_bytes: bytes, image_size: int, batch: int = 16, repeats: int = 5) -> float:
    sess = onnx_session(onnx_bytes)
    x = np.random.default_rng(0).standard_normal((batch, 1, image_size, image_size)).astype(np.float32)
    sess.run(None, {"image": x})
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, {"image": x})
    return (time.perf_counter() - t) / (repeats * batch) * 1000


def validation_metrics(y_bin: np.ndarray, prob: np.ndarray, threshold: float, n_boot: int = 500) -> dict:
    """Point metrics plus 95 % intervals (Wilson for the proportions, bootstrap for the rest), flattened for the
    model file."""
    from pneumo.evaluation.report import metric_intervals

    m = binary_metrics(y_bin, prob, threshold)
    out = {k: v for k, v in m.items() if isinstance(v, int | float)}
    out["ci95"] = {k: iv.as_pair() for k, iv in metric_intervals(y_bin, prob, threshold, n_boot).items()}
    return out


def geometry_shift_summary(y: np.ndarray, clean_prob: np.ndarray, shifted: dict, temperature: float, bias: float,
                           threshold: float) -> dict:  # fmt: skip
    """Per check of validation (:data:`pneumo.evaluation.shifts.TRAINING_CHECKS`): AUC, sensitivity, specificity,
    ECE and decision flips against the clean images; and the worst case over the checks (lowest AUC, sensitivity,
    specificity; highest ECE and flips), NaN-safe (:func:`pneumo.evaluation.summary.shift_summary`)."""

    out = {}
    for name, logits in shifted.items():
        p = calibrated_probability(logits, temperature, bias)
        m = binary_metrics(y, p, threshold)
        out[name] = {k: float(m[k]) for k in ("roc_auc", "sensitivity", "specificity", "ece")}
        out[name]["decisions_flipped"] = flip_rate(is_positive(p, threshold), is_positive(clean_prob, threshold))
    figures = ("roc_auc", "sensitivity", "specificity", "ece", "decisions_flipped")
    return shift_summary(out, figures, order=TRAINING_CHECKS).as_table()


def choose_operating_threshold(y: np.ndarray, probs: dict[str, np.ndarray], rule: OperatingRule) -> tuple[float, dict]:
    """The threshold under ``rule`` from calibrated probabilities of clean validation (``"clean"``) and its checks,
    and both rules' operating points, so that the one not used is reported beside the one in force:

    - ``pooled``: the highest threshold with ``target_sensitivity`` on all conditions pooled;
    - ``worst_case``: the largest margin to both targets in the worst framing condition
      (:func:`pneumo.evaluation.calibration.choose_threshold_worst_case` over clean and
      :data:`pneumo.evaluation.shifts.FRAMING_CHECKS`).
    """
    y = np.asarray(y)
    framing = {k: p for k, p in probs.items() if k == "clean" or k in FRAMING_CHECKS}
    pooled_y, pooled_p = np.tile(y, len(probs)), np.concatenate(list(probs.values()))
    thresholds = {
        "pooled": choose_threshold(pooled_y, pooled_p, rule.target_sensitivity),
        "worst_case": choose_threshold_worst_case(y, framing, rule.target_sensitivity, rule.target_specificity),
    }
    report = {}
    for name, t in thresholds.items():
        at = operating_point(pooled_y, pooled_p, t)
        report[name] = {
            "threshold": t,
            "pooled": {"sensitivity": at["sensitivity"], "specificity": at["specificity"]},
            "worst_framing": worst_case_rates(y, framing, t, order=("clean", *TRAINING_CHECKS)),
        }
    targets = {"target_sensitivity": rule.target_sensitivity, "target_specificity": rule.target_specificity}
    return thresholds[rule.name], {"rule": rule.name, **targets, "rules": report}


def fit_operating_point(
    val_logits: np.ndarray,
    val_sub: np.ndarray | None,
    shifted: dict[str, np.ndarray],
    targets: np.ndarray,
    rule: OperatingRule,
    split: str | None,
    shifted_sub: dict[str, np.ndarray] | None = None,
    blocks: Sequence[str] = (),
) -> tuple[float, float, float, dict]:
    """Temperature, bias, threshold and the validation figures of a model (or an ensemble) from its validation
    logits, subtype logits (or None) and the logits of the checked copies
    (:data:`pneumo.evaluation.shifts.TRAINING_CHECKS`:
    framing shifts and the border hidden); with ``shifted_sub``, the subtype logits of those copies, the bacterial /
    viral split is measured under each check too (``geometry_shift``: ``bacterial_vs_viral`` and
    ``subtype_flipped`` against the clean images); with ``blocks`` (each validation image's held-out acquisition
    block, empty where it has none), the figures per block and the worst block's (``blocks``).

    The operating point must survive a change of framing: calibration is fitted on validation pooled with its
    checked copies, not on the clean images whose framing the model may read, and the threshold by ``rule``
    (:func:`choose_operating_threshold`). ``targets`` are the training targets (0 normal, >0 pneumonia; 1/2
    bacterial/viral with subtypes)."""
    y_bin = (targets > 0).astype(int)
    pooled = np.concatenate([val_logits, *shifted.values()])
    temperature, bias = fit_calibration(pooled, np.tile(y_bin, 1 + len(shifted)))
    prob = calibrated_probability(val_logits, temperature, bias)
    probs = {"clean": prob, **{k: calibrated_probability(v, temperature, bias) for k, v in shifted.items()}}
    threshold, op = choose_operating_threshold(y_bin, probs, rule)

    metrics = {"version": VALIDATION_VERSION, **validation_metrics(y_bin, prob, threshold)}
    metrics["ece_before_calibration"] = expected_calibration_error(calibrated_probability(val_logits), y_bin)
    metrics["measured_on"] = f"internal validation: {Path(split).name if split else 'a split of the training data'}"
    metrics["operating_point_fitted_on"] = "validation pooled with " + ", ".join(shifted)
    metrics["operating_point"] = {**op["rules"][rule.name]["pooled"], **op}
    metrics["geometry_shift"] = geometry_shift_summary(y_bin, prob, shifted, temperature, bias, threshold)
    if any(blocks):  # a block split's validation
        metrics["blocks"] = block_figures(y_bin > 0, prob, blocks, threshold)
    if val_sub is not None or targets.max() > 1:
        known = targets <= 2
        p_sub = subtype_probabilities(val_logits, temperature, bias, val_sub)
        metrics["subtype_accuracy"] = float((p_sub.argmax(1) == targets)[known].mean())
        pneumonia = known & (targets > 0)
        viral = targets[pneumonia] == 2
        metrics["bacterial_vs_viral_accuracy"] = bacterial_vs_viral_accuracy(
            p_sub[pneumonia, 1], p_sub[pneumonia, 2], viral
        )
        if shifted_sub:
            clean_calls = says_viral(p_sub[pneumonia, 1], p_sub[pneumonia, 2])
            shift_figures = metrics["geometry_shift"]
            for name, sub in shifted_sub.items():
                q = subtype_probabilities(shifted[name], temperature, bias, sub)[pneumonia]
                shift_figures[name]["bacterial_vs_viral"] = bacterial_vs_viral_accuracy(q[:, 1], q[:, 2], viral)
                shift_figures[name]["subtype_flipped"] = flip_rate(says_viral(q[:, 1], q[:, 2]), clean_calls)
            per = {n: shift_figures[n] for n in shifted_sub}
            subtype = shift_summary(per, ("bacterial_vs_viral", "subtype_flipped"), order=TRAINING_CHECKS)
            shift_figures["worst"].update(subtype.worst)
    return temperature, bias, threshold, metrics


def validation_checks(val: SplitData, size: int) -> dict[str, np.ndarray]:
    """The validation images under each check of the suite that steers training and the operating point, made
    from their files as ``pneumo robustness`` makes them."""
    return checked_copies(val.paths, size, TRAINING_CHECKS)


def validation_lung_checks(model: ModelFile, val: SplitData, cfg: TrainConfig) -> dict[str, dict] | None:
    """The lung checks on validation with the run's atlas (``augment.lung_atlas``), as ``pneumo robustness`` makes
    them through the ONNX graph, for the model file's record; None for runs without an atlas (or one class only)."""
    atlas = cfg.augment.lung_atlas
    y = (val.targets > 0).astype(int)
    if atlas is None or not Path(atlas).is_file() or len(set(y.tolist())) < 2:
        return None
    res = lung_checks(Predictor(model), [Path(p) for p in val.paths], y, LungSource.from_atlas(atlas))
    split = (model.meta.data or {}).get("split_method") or "internal"
    return {
        f"validation ({split}), atlas lungs > {ATLAS_LEVEL}": {
            "clean": res["clean"]["roc_auc"],
            "lungs_hidden": res["lungs hidden"]["roc_auc"],
            "only_lungs": res["only the lungs"]["roc_auc"],
            "n": res["n"],
        }
    }


def heat_map_fillers(cfg: TrainConfig, train: SplitData, preproc) -> dict[str, np.ndarray]:
    """The occlusion map's fillers that ``cfg.heat_map_filler`` asks for, as ``arrays.npz`` entries, from the NORMAL
    training images: four of them (``films``), four films drawn from a model of them with how many it was made of
    (``synthetic``), or none (``grey``, or a split without normal training images)."""
    normals = train.images[np.flatnonzero(train.targets == 0)]
    if cfg.heat_map_filler == "films" and len(normals):
        return {OCCLUSION_REFERENCE: normal_reference(normals, preproc)}
    if cfg.heat_map_filler == "synthetic" and len(normals) >= 2:  # a model of one film would be that film
        films = synthetic_reference(normals, preproc)
        return {OCCLUSION_REFERENCE: films, OCCLUSION_DRAWN_FROM: np.array(len(normals), dtype=np.int64)}
    return {}  # grey, or too few normal films: the image's mean grey


def finalize_run(
    cfg: TrainConfig,
    net: PneumoNet,
    train: SplitData,
    val: SplitData,
    data_summary: dict,
    timing: dict,
    checks: dict[str, np.ndarray] | None = None,
    lung_checks: dict[str, dict] | None = None,
) -> Path:
    """Write ``model.pneumo`` (and ``validation.json``) into the run directory; return the model path.

    ``checks`` are the validation copies of :func:`validation_checks` when training already made them;
    ``lung_checks`` a record to keep when the atlas is not at hand (re-finalising the same network elsewhere: its
    AUCs do not depend on the threshold)."""
    run = Path(cfg.out)
    preproc = cfg.preprocessing()
    val_logits, val_feats, val_sub = infer_batches(net, val.images, preproc)
    if checks is None:
        checks = validation_checks(val, preproc.image_size)
    outs = {name: infer_batches(net, imgs, preproc) for name, imgs in checks.items()}
    shifted = {name: o[0] for name, o in outs.items()}
    shifted_sub = None if val_sub is None else {name: o[2] for name, o in outs.items()}
    temperature, bias, threshold, metrics = fit_operating_point(
        val_logits, val_sub, shifted, val.targets, cfg.operating_rule(), data_summary.get("split"), shifted_sub,
        blocks=val.blocks,
    )  # fmt: skip
    validation = Validation.model_validate(metrics)
    if data_summary.get("split_method"):
        validation.measured_on = validation.measured_on.replace(
            "internal validation", f"internal validation ({data_summary['split_method']})", 1
        )

    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(train.targets), min(DOMAIN_FIT_IMAGES, len(train.targets)), replace=False))
    _, train_feats, _ = infer_batches(net, train.images[pick], preproc)
    guard, arrays = fit_domain_guard(train_feats, val_feats, quantile=cfg.domain_quantile)
    arrays.update(heat_map_fillers(cfg, train, preproc))
    if net.input_field is not None:  # the heat maps draw the field's edge without reading the weights
        arrays[LUNG_FIELD] = net.input_field[0, 0].detach().cpu().numpy().astype(np.float32)

    meta = ModelMeta(
        name=cfg.name or f"pneumo-{cfg.arch}-{cfg.task}{'+subtype' if cfg.subtype_head else ''}",
        version=__version__,
        arch=cfg.arch,
        arch_kwargs=arch_kwargs(cfg),
        task=cfg.task,
        class_names=list(TASK_CLASSES[cfg.task]),
        preprocessing=preproc,
        temperature=temperature,
        calibration_bias=bias,
        threshold=threshold,
        target_sensitivity=cfg.target_sensitivity,
        params=count_parameters(net),
        feature_dim=int(val_feats.shape[1]),
        validation=validation,
        data=data_summary,
        training={**timing, "config": without_paths(cfg.model_dump(mode="json"))},  # no paths of this machine
        domain_guard=guard,
    )
    model = build_model_file(net, meta, arrays)
    model.meta.validation.cpu_ms_per_image = round(_onnx_ms_per_image(model.onnx, preproc.image_size), 2)
    if (lungs := validation_lung_checks(model, val, cfg) or lung_checks) is not None:
        model.meta.validation = model.meta.validation.updated(lung_checks=lungs)
    path = save_model_file(run / "model.pneumo", model)
    extra = {} if val_sub is None else {"subtype_logits": val_sub}
    with atomic.atomic_open(run / "val_outputs.npz", "wb") as f:
        np.savez(f, logits=val_logits, features=val_feats, targets=val.targets, **extra)
    atomic.write_text(run / "validation.json", json.dumps(model.meta.validation.model_dump(), indent=2))
    return path
