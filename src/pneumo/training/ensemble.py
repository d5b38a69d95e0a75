"""``pneumo ensemble``: two or more trained models of one recipe in one ONNX graph, logits averaged, one guard.

The members' graphs are joined on one ``image`` input; ``logits``, ``subtype_logits`` and ``cam`` are the means of
the members' outputs (the mean of the members' class activation maps is the map of the mean log-odds, because a
binary head's log-odds is linear in the map), and ``features`` are the first member's, so the first member's
domain guard reads them unchanged. The averaged logits are a new model: calibration, threshold and every
validation figure are fitted again on the members' common validation split, pooled with its geometry-shifted
copies exactly as :func:`pneumo.training.finalize.fit_operating_point` does for one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

from pneumo._version import __version__
from pneumo.config import TrainConfig
from pneumo.errors import ModelFileError
from pneumo.inference import Predictor
from pneumo.modelfile import ModelFile, ModelMeta, load_model_file, public_meta_json, save_model_file, without_paths
from pneumo.preprocess import to_input
from pneumo.training.finalize import _onnx_ms_per_image, fit_operating_point, validation_checks
from pneumo.training.splits import load_splits, recorded_split

AVERAGED = ("logits", "subtype_logits", "cam")  # outputs the ensemble averages; "features" come from member 0


def _check_compatible(models: Sequence[ModelFile]) -> None:
    """Members must read the same input the same way and answer the same question, at full precision."""
    if len(models) < 2:
        raise ModelFileError("an ensemble needs at least two model files")
    first = models[0].meta
    for m in models:
        meta = m.meta
        where = m.path or meta.name
        if meta.precision != "fp32" or meta.site is not None or meta.members:
            raise ModelFileError(f"{where}: ensemble full-precision base models (not INT8, site or ensemble files)")
        for field in ("preprocessing", "task", "class_names", "arch_kwargs"):
            if getattr(meta, field) != getattr(first, field):
                raise ModelFileError(f"{where}: its {field} differs from {models[0].path}'s; members must match")
        if _outputs(m) != _outputs(models[0]):
            raise ModelFileError(f"{where}: its graph outputs differ from {models[0].path}'s")
    # A split written by `pneumo data split`, the same for all; a seeded split differs with each member's seed.
    splits = {Path(str((m.meta.training.get("config") or {}).get("split_csv") or "")).name for m in models}
    counts = {(m.meta.data.get("val_images"), str(m.meta.data.get("val_class_counts"))) for m in models}
    if len(splits) != 1 or len(counts) != 1 or "" in splits:
        # Another member's validation images may be in one member's training set: the figures would flatter.
        raise ModelFileError("members were not validated on one recorded split; train them with the same --split")


def _outputs(model: ModelFile) -> list[str]:
    return [o.name for o in onnx.load_from_string(model.onnx).graph.output]


def merge_graphs(graphs: Sequence[bytes]) -> bytes:
    """One ONNX graph: every member on the shared ``image`` input, the :data:`AVERAGED` outputs meaned and the
    first member's ``features``."""
    protos = [onnx.load_from_string(g) for g in graphs]
    names = [o.name for o in protos[0].graph.output]
    nodes, inits, value_info = [], [], []
    for i, proto in enumerate(protos):
        p = compose.add_prefix(proto, f"m{i}/")
        g = p.graph
        nodes.append(helper.make_node("Identity", ["image"], [f"m{i}/image"], name=f"m{i}/input"))
        nodes.extend(g.node)
        inits.extend(g.initializer)
        value_info.extend(g.value_info)
    for name in names:
        if name in AVERAGED:
            nodes.append(helper.make_node("Mean", [f"m{i}/{name}" for i in range(len(protos))], [name], name=name))
        else:
            nodes.append(helper.make_node("Identity", [f"m0/{name}"], [name], name=name))
    g0 = protos[0].graph
    graph = helper.make_graph(nodes, "pneumo-ensemble", list(g0.input), list(g0.output), inits, value_info=value_info)
    model = helper.make_model(graph, opset_imports=list(protos[0].opset_import), ir_version=protos[0].ir_version)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _validation_outputs(predictor: Predictor, images: np.ndarray, batch: int = 64):
    """The ensemble's view-averaged logits and subtype logits on uint8 validation images."""
    pre = predictor.meta.preprocessing
    logits, subs = [], []
    for i in range(0, len(images), batch):
        imgs = [im.astype(np.float32) / 255.0 for im in images[i : i + batch]]
        lg, _, sub = predictor.network_outputs(to_input(imgs, pre, content_scales=True))
        logits.append(lg)
        subs.append(sub)
    return np.concatenate(logits), None if subs[0] is None else np.concatenate(subs)


def build_ensemble(
    model_paths: Sequence[str | Path],
    out: str | Path,
    data_dir: str | Path,
    split_csv: str | Path,
    *,
    name: str | None = None,
    cache_dir: Path | None = None,
) -> Path:
    """Join ``model_paths`` into one model file at ``out``, calibrated on their common validation split."""
    models = [load_model_file(p) for p in model_paths]
    _check_compatible(models)
    first = models[0].meta
    merged = merge_graphs([m.onnx for m in models])
    provisional = ModelFile(meta=first.model_copy(update={"temperature": 1.0, "calibration_bias": 0.0}), onnx=merged)
    predictor = Predictor(provisional)

    recorded = recorded_split(dict(first.training.get("config") or {}))
    cfg = TrainConfig.model_validate(
        {
            **recorded,
            "data_dir": data_dir,
            "out": out,
            "split_csv": split_csv,
            "cache_dir": cache_dir,
            "max_train_images": 1,
        }  # only the validation split is needed
    )
    _, val, _ = load_splits(cfg)
    val_logits, val_sub = _validation_outputs(predictor, val.images)
    outs = {
        k: _validation_outputs(predictor, imgs)
        for k, imgs in validation_checks(val, first.preprocessing.image_size).items()
    }
    shifted = {k: o[0] for k, o in outs.items()}
    shifted_sub = None if val_sub is None else {k: o[1] for k, o in outs.items()}
    temperature, bias, threshold, metrics = fit_operating_point(
        val_logits, val_sub, shifted, val.targets, cfg.operating_rule(), str(split_csv), shifted_sub, val.blocks
    )
    metrics["cpu_ms_per_image"] = round(_onnx_ms_per_image(merged, first.preprocessing.image_size), 2)
    member_training = [{"name": m.meta.name, **{k: v for k, v in m.meta.training.items() if k != "config"}}
                       for m in models]  # fmt: skip
    # The first member's description (input, task, data, guard), with what the averaging changed; validated anew.
    meta = ModelMeta.model_validate(
        {
            **first.model_dump(exclude={"created", "pneumo_version"}),
            "name": name or f"{first.name}-ensemble{len(models)}",
            "version": __version__,
            "temperature": temperature,
            "calibration_bias": bias,
            "threshold": threshold,
            "params": sum(m.meta.params for m in models),
            "validation": metrics,
            "training": {
                "train_seconds": round(sum(float(t.get("train_seconds", 0.0)) for t in member_training), 1),
                "members": member_training,
                "config": without_paths(first.training.get("config") or {}),
            },
            "data": public_meta_json(first)["data"],  # the dataset's name and counts, no path of this machine
            "members": [m.meta.name for m in models],
        }
    )
    return save_model_file(out, ModelFile(meta=meta, onnx=merged, arrays=models[0].arrays))
