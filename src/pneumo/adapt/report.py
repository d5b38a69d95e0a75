"""The run behind ``pneumo adapt``: score the site sample through the base model's ONNX graph, cross-validate, fit on
the whole sample, write the site file and the report (report.txt, metrics.json, predictions.csv, reliability
diagrams before / after, ROC with both operating points). The statistics live in :mod:`pneumo.adapt.fit`."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo import atomic
from pneumo.adapt.fit import (
    AdaptError,
    cross_validate,
    figures_with_intervals,
    fit_site,
    refer_warnings,
    sample_size_warning,
    sha256_hex,
)
from pneumo.data import parse_kermany_name, scan_dataset
from pneumo.decision import NORMAL_CODE, PNEUMONIA_CODE, REFER_CODE, decision_codes
from pneumo.labels import BINARY_CLASSES, DECISIONS
from pneumo.modelfile import (
    ModelMeta,
    ReferBand,
    SiteBase,
    SiteCalibration,
    SiteFigures,
    SiteSample,
    base_model_bytes,
    load_model_file,
    resolve_model_path,
    save_site_file,
)
from pneumo.probability import sigmoid

OOD_WARN_SHARE = 0.05  # above this share of the sample outside the validated domain, say so


@dataclass
class SiteScores:
    """What the base network says about the site sample, one entry per readable image."""

    paths: list[str]
    y: np.ndarray
    z: np.ndarray
    patients: np.ndarray
    unreadable: list[str] = field(default_factory=list)
    out_of_domain: int = 0
    patients_from: str = "file names"
    named_patients: bool = True  # False: no file name carried a patient id, each image is its own patient


@dataclass
class AdaptResult:
    site_file: Path
    site: SiteCalibration
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    refer: dict[str, dict[str, float]] | None
    warnings: list[str]
    report: str
    report_dir: Path | None = None


def base_predictor(model: str | Path | None, threads: int | None = None):
    """The base model's bytes, its file name and a :class:`~pneumo.inference.Predictor` running it as shipped
    (with its own calibration, also when ``model`` is a site file: re-adapting starts from the base). Opened as
    every command opens a model (:func:`pneumo.inference.open_model`): a file that is not a usable model file is a
    :class:`~pneumo.errors.ModelFileError`."""
    from pneumo.inference import Predictor, open_model

    path = resolve_model_path(model)
    if path.suffix.lower() == ".onnx":
        raise AdaptError(f"{path}: pneumo adapt needs a .pneumo model file (the site file embeds it), not a bare graph")
    mf = open_model(path)
    meta, file_name = mf.meta, path.name
    if meta.site is not None:  # adapting a site file again starts from its base, as shipped
        file_name = meta.site.base.file
        b = meta.site.base
        meta = ModelMeta.model_validate(
            {**meta.model_dump(), "temperature": b.temperature, "calibration_bias": b.calibration_bias,
             "threshold": b.threshold, "site": None}
        )  # fmt: skip
    return base_model_bytes(path), file_name, Predictor(mf.model_copy(update={"meta": meta}), threads=threads)


def read_patients(path: Path) -> dict[str, str]:
    """``path,patient_id`` rows (path relative to the site folder, or a bare file name) -> patient id."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"path", "patient_id"} <= set(reader.fieldnames or ()):
                raise AdaptError(f"{path}: a patients file needs the columns path,patient_id")
            # a short row leaves its missing cells None: no patient id for that path
            return {(row["path"] or "").strip(): (row["patient_id"] or "").strip() for row in reader}
    except (UnicodeDecodeError, csv.Error) as exc:
        raise AdaptError(f"{path}: not a readable patients CSV ({str(exc).splitlines()[0][:120]})") from exc


def score_site(folder: Path, predictor, batch_size: int = 64, patients_csv: Path | None = None) -> SiteScores:
    """Predict every image of a ``NORMAL/`` + ``PNEUMONIA/`` folder (any depth below them) exactly as
    ``pneumo predict`` does; patient ids from ``patients_csv`` or else from the file names
    (:func:`pneumo.data.parse_kermany_name`)."""
    ds = scan_dataset(folder)
    labels = {r.label for r in ds.records}
    if labels != set(BINARY_CLASSES):
        raise AdaptError(
            f"{folder}: a site sample needs NORMAL/ and PNEUMONIA/ folders of images, found {sorted(labels) or 'none'}"
        )
    recs = ds.records
    patient = {r.rel: r.patient_id for r in recs}
    named = any(parse_kermany_name(r.path.name)[1] != "unknown" for r in recs)
    if patients_csv is not None:
        given = read_patients(patients_csv)
        for r in recs:
            pid = given.get(r.rel) or given.get(r.path.name)
            if not pid:
                raise AdaptError(f"{patients_csv}: no patient_id for {r.rel} (path relative to {folder}, or file name)")
            patient[r.rel] = pid
        named = True
    preds = list(predictor.predict_sources(((str(r.path), r.path) for r in recs), batch_size=batch_size))
    keep = [i for i, p in enumerate(preds) if p.error is None]
    return SiteScores(
        paths=[str(recs[i].path) for i in keep],
        y=np.array([BINARY_CLASSES.index(recs[i].label) for i in keep], dtype=np.int64),
        z=np.array([preds[i].log_odds for i in keep], dtype=np.float64),
        patients=np.array([patient[recs[i].rel] for i in keep]),
        unreadable=[p.error for p in preds if p.error],
        out_of_domain=sum(preds[i].in_domain is False for i in keep),
        patients_from="file names" if patients_csv is None else patients_csv.name,
        named_patients=named,
    )


def run_adaptation(
    folder: Path,
    out: Path,
    *,
    model: str | Path | None,
    target_sensitivity: float,
    report_dir: Path | None,
    refer_error: float | None,
    folds: int,
    name: str | None,
    n_boot: int,
    seed: int,
    batch_size: int,
    patients_csv: Path | None = None,
) -> AdaptResult:
    """See :func:`pneumo.adapt.site.adapt_site`."""
    if not 0.0 < target_sensitivity < 1.0:
        raise AdaptError(f"--target-sensitivity must be between 0 and 1, got {target_sensitivity}")
    if refer_error is not None and not 0.0 < refer_error < 0.5:
        raise AdaptError(f"--refer-error must be between 0 and 0.5, got {refer_error}")
    if folds < 2:
        raise AdaptError(f"--folds must be at least 2, got {folds}")
    if not folder.is_dir():
        raise AdaptError(f"{folder}: not a folder")
    if patients_csv is not None and not patients_csv.is_file():
        raise AdaptError(f"{patients_csv}: no such patients file")
    base_bytes, base_file, predictor = base_predictor(model)
    meta = predictor.meta
    s = score_site(folder, predictor, batch_size, patients_csv)
    if s.y.size == 0 or s.y.min() == s.y.max():
        raise AdaptError(f"{folder}: fewer than one readable image of each class (unreadable: {len(s.unreadable)})")

    before_prob = sigmoid(s.z / meta.temperature + meta.calibration_bias)
    before_dec = decision_codes(before_prob, meta.threshold)
    before = figures_with_intervals(s.y, before_prob, before_dec, s.patients, n_boot=n_boot, seed=seed)
    cv = cross_validate(s.z, s.y, s.patients, target_sensitivity, refer_error, folds, seed)
    after = figures_with_intervals(s.y, cv.prob, cv.decision, s.patients, n_boot=n_boot, seed=seed)
    refer = None
    if cv.decision3 is not None:
        refer = figures_with_intervals(s.y, cv.prob, cv.decision3, s.patients, three_way=True, n_boot=n_boot, seed=seed)
    final = fit_site(s.z, s.y, target_sensitivity, refer_error)

    n_pos, n_neg = int(s.y.sum()), int((1 - s.y).sum())
    warnings = []
    tp = int(np.sum((s.y == 1) & (cv.decision == PNEUMONIA_CODE)))
    if w := sample_size_warning(after["sensitivity"], n_pos, tp, target_sensitivity):
        warnings.append(w)
    if refer_error is not None:
        warnings += refer_warnings(n_neg, n_pos, refer_error)
    if not s.named_patients:
        warnings.append(
            "no file name carries a patient id, so each image counts as its own patient: if patients have several "
            "images, pass --patients (a CSV of path,patient_id), else the cross-validated figures are optimistic"
        )
    if s.unreadable:
        warnings.append(f"{len(s.unreadable)} unreadable file(s) left out, e.g. {s.unreadable[0]}")
    if s.out_of_domain > OOD_WARN_SHARE * s.y.size:
        warnings.append(
            f"{s.out_of_domain} of {s.y.size} site images are outside the base model's validated domain "
            "(kept in the fit; check that the sample is chest X-rays of children)"
        )

    def interval(key: str, figs: dict | None):
        return None if figs is None else figs[key]

    site = SiteCalibration(
        name=name or folder.resolve().name,
        base=SiteBase(
            name=meta.name,
            version=meta.version,
            file=base_file,
            sha256=sha256_hex(base_bytes),
            temperature=meta.temperature,
            calibration_bias=meta.calibration_bias,
            threshold=meta.threshold,
        ),
        temperature=final.temperature,
        calibration_bias=final.bias,
        threshold=final.threshold,
        target_sensitivity=target_sensitivity,
        refer=None if final.band is None else ReferBand(low=final.band[0], high=final.band[1], max_error=refer_error),
        sample=SiteSample(
            folder=str(folder),
            n=int(s.y.size),
            n_normal=n_neg,
            n_pneumonia=n_pos,
            n_patients=int(np.unique(s.patients).size),
            unreadable=len(s.unreadable),
            out_of_domain=s.out_of_domain,
            patients_from=s.patients_from,
        ),
        cross_validated=SiteFigures(
            folds=cv.folds,
            **{k: after[k] for k in ("sensitivity", "specificity", "ece", "roc_auc")},
            referred=interval("referred", refer),
            miss_rate=interval("miss_rate", refer),
            false_alarm_rate=interval("false_alarm_rate", refer),
        ),
        warnings=warnings,
    )
    save_site_file(out, site, base_bytes)
    load_model_file(out, parts=())  # what was written must load: hash, schema, calibration in force
    result = AdaptResult(out, site, before, after, refer, warnings, "", report_dir)
    result.report = report_text(result, s, cv, before_prob, before_dec)
    if report_dir is not None:
        write_report(report_dir, result, s, cv, before_prob, before_dec, final)
    return result


def _ci(figs: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    return {k: v["value"] for k, v in figs.items()}, {k: (v["lo"], v["hi"]) for k, v in figs.items()}


def _fmt(f: dict[str, float]) -> str:
    return f"{f['value']:.3f}  (95% CI {f['lo']:.3f}-{f['hi']:.3f})"


def report_text(r: AdaptResult, s: SiteScores, cv, before_prob: np.ndarray, before_dec: np.ndarray) -> str:
    """report.txt: the evaluation layout (scikit-learn's report and the summary lines) before and after."""
    from pneumo.evaluation.report import classification_report_text

    site, base = r.site, r.site.base
    names = ("Healthy", "Pneumonia")
    smp = site.sample
    lines = [
        f"Site acceptance report: {site.name} ({smp.folder})",
        f"sample: {smp.n} images, {smp.n_patients} patients: {smp.n_normal} normal, {smp.n_pneumonia} pneumonia"
        + (f"; {smp.unreadable} unreadable left out" if smp.unreadable else ""),
        f"base model: {base.name} {base.version} ({base.file}, SHA-256 {base.sha256})",
        f"target sensitivity: {site.target_sensitivity:.3f}; made {site.created} by Pneumo {site.pneumo_version}",
        "",
    ]
    if r.warnings:
        lines += ["!" * 100, *[f"WARNING: {w}" for w in r.warnings], "!" * 100, ""]
    m, ci = _ci(r.before)
    lines += [
        f"BEFORE: the base model as shipped (T={base.temperature:.3f}, b={base.calibration_bias:+.3f}, "
        f"threshold {base.threshold:.4f}) on the whole site sample",
        "",
        classification_report_text(
            s.y, before_dec, names, prob=before_prob, threshold=base.threshold, metrics=m, ci=ci
        ).rstrip(),
        "",
    ]
    m, ci = _ci(r.after)
    fold_t = [f.threshold for f in cv.fits]
    lines += [
        f"AFTER: site calibration, cross-validated ({cv.folds} folds by patient: calibration and threshold fitted on "
        f"{cv.folds - 1} folds, measured on the held-out one; intervals: bootstrap over patients)",
        "",
        classification_report_text(
            s.y, cv.decision, names, prob=cv.prob, threshold=site.threshold, metrics=m, ci=ci
        ).rstrip(),
        f"{'':>13}  (each held-out fold was decided at its own fold's threshold, {min(fold_t):.4f}-{max(fold_t):.4f};"
        " the threshold above is fitted on the whole sample)",
        "",
        f"written to {r.site_file.name}: T={site.temperature:.3f}, b={site.calibration_bias:+.3f}, "
        f"threshold {site.threshold:.4f} (fitted on the whole sample)",
    ]
    if r.refer is not None and site.refer is not None:
        lines += ["", *refer_text(r, s.y, cv.decision3)]
    return "\n".join(lines) + "\n"


def refer_text(r: AdaptResult, y: np.ndarray, decision3: np.ndarray) -> list[str]:
    band, f = r.site.refer, r.refer
    table = [
        [int(np.sum((y == c) & (decision3 == d))) for d in (NORMAL_CODE, REFER_CODE, PNEUMONIA_CODE)] for c in (0, 1)
    ]
    called_n, called_p = table[0][0] + table[1][0], table[0][2] + table[1][2]
    lines = [
        f"REFER band ({band.method}; bound {band.max_error:g} on the share of each class given the other class's "
        "confident decision)",
        f"fitted on the whole sample: REFER when {band.low:.4f} <= p <= {band.high:.4f}"
        + (" (a single cut: at this bound no site study has both answers plausible)" if band.low == band.high else ""),
        "cross-validated (each fold's band fitted on the other folds):",
        f"{'':>13}  {'NORMAL':>8} {'REFER':>8} {'PNEUMONIA':>10}",
        f"{'Healthy':>13}  {table[0][0]:>8} {table[0][1]:>8} {table[0][2]:>10}",
        f"{'Pneumonia':>13}  {table[1][0]:>8} {table[1][1]:>8} {table[1][2]:>10}",
        f"{'referred':>13}  {_fmt(f['referred'])}",
        f"{'miss rate':>13}  {_fmt(f['miss_rate'])}  pneumonia called NORMAL (bound {band.max_error:g})",
        f"{'false alarms':>13}  {_fmt(f['false_alarm_rate'])}  normal called PNEUMONIA (bound {band.max_error:g})",
        f"{'':>13}  wrong among confident NORMAL calls: {table[1][0]} of {called_n}; "
        f"among confident PNEUMONIA calls: {table[0][2]} of {called_p} (at this sample's prevalence)",
    ]
    return lines


def plot_roc_operating_points(y: np.ndarray, prob: np.ndarray, points: dict[str, dict], path: Path) -> Path:
    """The ROC curve of the network's scores with several operating points marked (``points``: label ->
    ``{"sensitivity", "specificity", "marker"}``)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    from pneumo.evaluation.plots import _save

    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    fpr, tpr, _ = roc_curve(y, prob)
    ax.plot(fpr, tpr, lw=2, label=f"site sample, AUC = {roc_auc_score(y, prob):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for label, pt in points.items():
        ax.plot(1 - pt["specificity"], pt["sensitivity"], pt["marker"], c=pt["colour"], ms=9, mew=2,
                label=f"{label}: sens {pt['sensitivity']:.3f}, spec {pt['specificity']:.3f}")  # fmt: skip
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity", ylabel="Sensitivity")
    ax.set_title("ROC on the site sample: base and site operating points")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def write_report(
    out_dir: Path, r: AdaptResult, s: SiteScores, cv, before_prob: np.ndarray, before_dec: np.ndarray, final
) -> dict[str, Any]:
    """report.txt, metrics.json, predictions.csv, reliability_before.png, reliability_after.png, roc.png."""
    from pneumo.evaluation import plots
    from pneumo.evaluation.metrics import operating_point
    from pneumo.evaluation.report import _jsonable

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "reliability_before": plots.plot_reliability(before_prob, s.y, out_dir / "reliability_before.png"),
        "reliability_after": plots.plot_reliability(cv.prob, s.y, out_dir / "reliability_after.png"),
    }
    site = r.site
    in_sample = operating_point(s.y, final.probability(s.z), final.threshold)
    points = {
        f"base, t={site.base.threshold:.3f}": {**r_point(r.before), "marker": "o", "colour": plots.WRONG},
        f"site, t={site.threshold:.3f} (fitted)": {**in_sample, "marker": "s", "colour": plots.RIGHT},
        "site, cross-validated": {**r_point(r.after), "marker": "x", "colour": plots.RIGHT},
    }
    files["roc"] = plot_roc_operating_points(s.y, before_prob, points, out_dir / "roc.png")
    files["report"], files["metrics"], files["predictions"] = (
        out_dir / "report.txt",
        out_dir / "metrics.json",
        out_dir / "predictions.csv",
    )
    with atomic.atomic_open(files["predictions"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "patient", "label", "p_before", "decision_before", "p_site_cv", "decision_site_cv"]
                   + (["decision_refer_cv"] if cv.decision3 is not None else []))  # fmt: skip
        for i, path in enumerate(s.paths):
            row = [path, s.patients[i], DECISIONS[s.y[i]], f"{before_prob[i]:.6f}"]
            row += [DECISIONS[before_dec[i]], f"{cv.prob[i]:.6f}", DECISIONS[cv.decision[i]]]
            w.writerow(row + ([DECISIONS[cv.decision3[i]]] if cv.decision3 is not None else []))
    metrics = {
        "site": json.loads(site.model_dump_json()),
        "before": r.before,
        "after_cross_validated": r.after,
        "refer_cross_validated": r.refer,
        "folds": [
            {"temperature": f.temperature, "bias": f.bias, "threshold": f.threshold, "refer_band": f.band}
            for f in cv.fits
        ],
        "in_sample_operating_point": in_sample,
        "ci_method": "percentile bootstrap over patients, resampled within each class of patient",
        "warnings": r.warnings,
        "files": {k: p.name for k, p in files.items()},
    }
    atomic.write_text(files["metrics"], json.dumps(_jsonable(metrics), indent=2) + "\n")
    atomic.write_text(files["report"], r.report)
    return metrics


def r_point(figs: dict[str, dict[str, float]]) -> dict[str, float]:
    return {"sensitivity": figs["sensitivity"]["value"], "specificity": figs["specificity"]["value"]}
