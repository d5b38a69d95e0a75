"""``pneumo evaluate`` and ``pneumo robustness``: predict labelled images through the inference path and write
the evaluation files, or run the shift suite on them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumo import atomic
from pneumo.errors import DataError
from pneumo.evaluation.metrics import block_figures
from pneumo.evaluation.report import write_evaluation
from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.inputs import ImageRecord, select_records
from pneumo.labels import BINARY_CLASSES, SUBTYPE_INDEX, TASK_CLASSES
from pneumo.modelfile import meta_json

GALLERY_SIZE = 128  # pixels per gallery tile; the gallery needs thumbnails, not the network input


def binary_targets(recs: list[ImageRecord], data_dir: Path) -> np.ndarray:
    """0 NORMAL / 1 PNEUMONIA per record; a folder with any other class (or no image) is refused."""
    labels = {r.label for r in recs}
    if not recs or not labels <= set(BINARY_CLASSES):
        raise DataError(f"{data_dir}: expected NORMAL/ and PNEUMONIA/ images, found {sorted(labels) or 'none'}")
    return np.array([BINARY_CLASSES.index(r.label) for r in recs])


def block_report_text(blocks: dict, described: str) -> str:
    """The per-block lines of a report: each held-out acquisition block's rate at the threshold, worst first."""
    lines = [f"Per held-out acquisition block ({described}, threshold {blocks['threshold']:.3f}):"]
    for name, b in blocks["per_block"].items():
        rate = "specificity" if b["n_pneumonia"] == 0 else "sensitivity" if b["n_pneumonia"] == b["n"] else "accuracy"
        lines.append(f"  {name:<40} n={b['n']:<4} {rate} {b[rate]:.3f}  mean P(pneumonia) {b['mean_probability']:.3f}")
    for rate in ("specificity", "sensitivity"):
        if w := blocks.get(f"worst_{rate}"):
            lines.append(f"  worst block {rate}: {w['value']:.3f} ({w['block']}, n={w['n']})")
    return "\n".join(lines) + "\n"


def evaluate_folder(
    data_dir: Path,
    out_dir: Path,
    *,
    model: str | Path | None = None,
    split: str | None = None,
    split_csv: Path | None = None,
    threshold: float | None = None,
    mirror: bool = False,
) -> dict:
    """Predict every labelled image and write report.txt, metrics.json, predictions.csv and plots."""
    recs, described = select_records(Path(data_dir), split, split_csv)
    targets = binary_targets(recs, Path(data_dir))
    predictor = Predictor.load(model, threshold=threshold)
    preds = list(predictor.predict_sources(((str(r.path), r.path) for r in recs), mirror=mirror))
    keep = [i for i, p in enumerate(preds) if p.error is None]
    if not keep:
        raise DataError(f"{data_dir}: none of the {len(recs)} images could be read")
    y = targets[keep]
    prob = np.array([preds[i].probability for i in keep])
    meta = predictor.meta
    multiclass = y_class = None
    # The subtype report needs every image's subtype (Kermany file names give it); otherwise it is left out.
    if meta.has_subtypes and all(recs[i].subtype in SUBTYPE_INDEX for i in keep):
        multiclass = np.array([[preds[i].p_normal, preds[i].p_bacterial, preds[i].p_viral] for i in keep])
        y_class = np.array([SUBTYPE_INDEX[recs[i].subtype] for i in keep])
    images = [load_image(recs[i].path, GALLERY_SIZE) for i in keep]
    metrics = write_evaluation(
        out_dir,
        y=y,
        prob=prob,
        threshold=predictor.threshold,
        paths=[str(recs[i].path) for i in keep],
        class_names=tuple(TASK_CLASSES["subtype"] if multiclass is not None else TASK_CLASSES["binary"]),
        probs_multiclass=multiclass,
        y_class=y_class,
        images=images,
        predictions=[preds[i] for i in keep],
        model_meta={**meta_json(meta), "evaluated_on": described, "tta": mirror},
    )
    if any(r.block for r in recs):  # the split CSV's held-out acquisition blocks (select_records read them)
        blocks = block_figures(y, prob, [recs[i].block for i in keep], predictor.threshold)
        metrics["blocks"] = blocks
        atomic.write_text(Path(out_dir) / "blocks.json", json.dumps(blocks, indent=2))
        with (Path(out_dir) / "report.txt").open("a", encoding="utf-8") as f:
            f.write("\n" + block_report_text(blocks, described))
    unreadable = [p for p in preds if p.error]
    metrics["report"] = (Path(out_dir) / "report.txt").read_text()
    if unreadable:
        metrics["report"] += f"\n{len(unreadable)} unreadable file(s) skipped, e.g. {unreadable[0].error}\n"
    return metrics


def shift_suite(
    data_dir: Path,
    split_csv: Path,
    *,
    model: str | Path | None = None,
    extra: Sequence[Path] = (),
    mirror: bool = False,
    out_json: Path | None = None,
    atlas: Path | bool = True,
    lung_masks: Path | bool = True,
) -> dict[str, dict]:
    """``pneumo robustness``: :func:`pneumo.evaluation.robustness.shifted_validation` on the ``val`` rows of
    ``split_csv`` (with their subtypes) and on each ``extra`` labelled folder, reported as ``parent/name``, with the
    lung checks from ``atlas`` and ``lung_masks`` (True: the shared data's, when there); the results are also
    written to ``out_json`` when given."""
    from pneumo.evaluation.robustness import shifted_validation

    recs, _ = select_records(Path(data_dir), "val", Path(split_csv))
    extras = {}
    for folder in map(Path, extra):
        xr, _ = select_records(folder)
        extras[f"{folder.parent.name}/{folder.name}"] = ([r.path for r in xr], binary_targets(xr, folder),
                                                         [r.subtype for r in xr])  # fmt: skip
    predictor = Predictor.load(model)
    y = binary_targets(recs, Path(data_dir))
    paths, subtypes = [r.path for r in recs], [r.subtype for r in recs]
    results = shifted_validation(
        predictor, paths, y, mirror=mirror, extra=extras, subtypes=subtypes, atlas=atlas, lung_masks=lung_masks
    )
    if out_json is not None:
        atomic.write_text(out_json, json.dumps(results, indent=2))
    return results
