"""Shifted validation, evaluate-folder selection and the out-of-domain reference images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ood import photographs, synthetic
from pneumo.evaluation.metrics import RELIABILITY_BINS, binary_metrics
from pneumo.evaluation.robustness import (
    CONTROLS,
    GEOMETRY,
    LUNG_CHECKS,
    NOTES,
    PERTURBATIONS,
    WORST,
    format_table,
    lung_checks,
    shifted_validation,
    worst_case,
)
from pneumo.evaluation.run import evaluate_folder
from pneumo.imaging import load_image
from pneumo.inference import Predictor
from pneumo.inputs import select_records
from pneumo.lungs import LungMaskError, LungSource, grow, load_mask, place_atlas


def _xray_like(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = 0.3 + 0.4 * yy + 0.15 * np.sin(8 * xx) + 0.05 * rng.standard_normal((size, size))
    return Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8))


@pytest.fixture
def labelled(tmp_path):
    root = tmp_path / "data"
    for label, n in (("NORMAL", 4), ("PNEUMONIA", 6)):
        (root / "test" / label).mkdir(parents=True)
        (root / "train" / label).mkdir(parents=True)
        for i in range(n):
            _xray_like(i + (100 if label == "PNEUMONIA" else 0)).save(root / "test" / label / f"p{label}{i}.png")
            _xray_like(i + 7).save(root / "train" / label / f"q{label}{i}.png")
    return root


@pytest.mark.parametrize("name", sorted({**PERTURBATIONS, **CONTROLS}))
def test_perturbations_change_the_image_but_keep_it_a_grayscale_image(name):
    im = _xray_like(0)
    if name == "markers masked":  # it has something to hide only where a mark is burnt in
        ImageDraw.Draw(im).text((4, 3), "L", fill=255, font=ImageFont.load_default(size=9))
    out = {**PERTURBATIONS, **CONTROLS}[name](im)
    assert out.mode == "L"
    a, b = np.asarray(im, dtype=float), np.asarray(out, dtype=float)
    if name.startswith("crop"):
        assert b.shape[0] < a.shape[0]
    else:
        assert a.shape == b.shape
        assert np.abs(a - b).mean() > 0.1, f"{name} left the image unchanged"


def _square(size: int = 100, half: int = 20) -> Image.Image:
    """A bright centred square on a grey ground whose border mean is known (60)."""
    a = np.full((size, size), 60, np.uint8)
    a[size // 2 - half : size // 2 + half, size // 2 - half : size // 2 + half] = 200
    return Image.fromarray(a)


def _extent(a: np.ndarray, axis: int) -> tuple[int, int]:
    """First and last index along ``axis`` where the square (> 130) is."""
    idx = np.flatnonzero((a > 130).any(axis=1 - axis))
    return int(idx[0]), int(idx[-1])


@pytest.mark.parametrize(
    ("name", "across", "down"),
    [("zoom 0.8 (margin)", 0.8, 0.8), ("zoom 1.25 (cropped)", 1.25, 1.25), ("squeeze across 15%", 0.85, 1.0),
     ("squeeze down 15%", 1.0, 0.85)],
)  # fmt: skip
def test_geometric_conditions_scale_the_content_about_the_centre(name, across, down):
    out = np.asarray(GEOMETRY[name](_square()))
    for axis, factor in ((1, across), (0, down)):
        lo, hi = _extent(out, axis)
        assert hi - lo + 1 == pytest.approx(40 * factor, abs=1.5), (name, axis)
        assert (lo + hi) / 2 == pytest.approx(49.5, abs=1.0)  # still centred
    if across < 1:  # a margin of the border's mean grey, not replicated edges
        assert out[50, 0] == 60


def test_shift_moves_the_content_by_its_share_of_the_frame():
    out = np.asarray(GEOMETRY["shift right 10%"](_square()))
    assert _extent(out, 1) == (40, 79) and _extent(out, 0) == (30, 69)
    out = np.asarray(GEOMETRY["shift down 10%"](_square()))
    assert _extent(out, 0) == (40, 79) and _extent(out, 1) == (30, 69)


def test_worst_case_takes_each_figure_from_its_own_worst_condition():
    per = {
        "a": {"roc_auc": 0.99, "specificity": 0.70, "ece": 0.02, "decisions_flipped": 0.01},
        "b": {"roc_auc": 0.90, "specificity": 0.95, "ece": 0.10, "decisions_flipped": float("nan")},
        "c": {"roc_auc": float("nan"), "specificity": 0.80, "ece": 0.05, "decisions_flipped": 0.20},
    }
    w = worst_case(per)
    assert (w["roc_auc"], w["specificity"], w["ece"], w["decisions_flipped"]) == (0.90, 0.70, 0.10, 0.20)
    assert w["worst_of"] == {"roc_auc": "b", "specificity": "a", "ece": "b", "decisions_flipped": "c"}


def test_select_records_defaults_to_test_split_and_rejects_unknown(labelled):
    recs, described = select_records(labelled)
    assert len(recs) == 10 and all(r.split == "test" for r in recs) and "test" in described
    with pytest.raises(ValueError, match="no 'val' split"):
        select_records(labelled, "val")


def test_evaluate_folder_writes_report_through_the_onnx_path(labelled, tiny_model, tmp_path):
    out = tmp_path / "eval"
    m = evaluate_folder(labelled, out, model=tiny_model)
    assert m["n"] == 10 and m["n_pos"] == 6
    for f in ("report.txt", "metrics.json", "predictions.csv", "roc.png", "gallery.png"):
        assert (out / f).stat().st_size > 0
    assert "Healthy" in m["report"] and "Pneumonia" in m["report"]


def _perturbed_by_hand(predictor, paths, f):
    """The suite's numbers by hand: perturb the decoded image, re-encode, predict through the user's path."""
    sources = []
    for p in paths:
        buf = io.BytesIO()
        f(Image.fromarray(np.round(load_image(p) * 255).astype(np.uint8))).save(buf, "PNG")
        sources.append((str(p), buf.getvalue()))
    return list(predictor.predict_sources(sources))


def _probs(preds) -> np.ndarray:
    return np.array([p.probability for p in preds])


def test_shifted_validation_measures_each_condition_through_the_predictor(labelled, tiny_model):
    recs, _ = select_records(labelled)
    paths = [r.path for r in recs]
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    predictor = Predictor.load(tiny_model)
    conditions = {k: PERTURBATIONS[k] for k in ("zoom 1.25 (cropped)", "blur sigma 2")}
    res = shifted_validation(predictor, paths, y, conditions={**conditions, **CONTROLS}, atlas=False)
    assert list(res) == [WORST, "clean", *conditions, *CONTROLS]  # the worst case first
    # a control is reported but never the worst case: there a low AUC is right
    assert not set(res[WORST]["worst_of"].values()) & set(CONTROLS)
    assert res["lung box masked"]["roc_auc"] == pytest.approx(
        binary_metrics(y, _probs(_perturbed_by_hand(predictor, paths, CONTROLS["lung box masked"])), 0.5)["roc_auc"]
    )
    rel = res["clean"]["reliability"]
    assert sum(rel["count"]) == len(paths) and len(rel["confidence"]) == RELIABILITY_BINS
    # the bins are the ones the row's ECE is counted in (one bin count everywhere)
    gaps = [n * abs(c - a) for n, c, a in zip(rel["count"], rel["confidence"], rel["accuracy"], strict=True) if n]
    assert sum(gaps) / len(paths) == pytest.approx(res["clean"]["ece"], abs=1e-12)

    clean = predictor.predict_sources((str(p), p) for p in paths)
    clean_p = np.array([p.probability for p in clean])
    for name, f in conditions.items():
        preds = _perturbed_by_hand(predictor, paths, f)
        prob = np.array([p.probability for p in preds])
        m = binary_metrics(y, prob, predictor.threshold)
        r = res[name]
        assert r["roc_auc"] == pytest.approx(m["roc_auc"]) and r["specificity"] == pytest.approx(m["specificity"])
        assert r["mean_abs_change"] == pytest.approx(np.abs(prob - clean_p).mean())
        flips = ((prob >= predictor.threshold) != (clean_p >= predictor.threshold)).sum()
        assert r["decisions_flipped"] == flips / len(paths)
        assert r["flagged_out_of_domain"] == sum(p.in_domain is False for p in preds) / len(paths)
    assert res["clean"]["decisions_flipped"] == 0.0 and res["clean"]["mean_abs_change"] == 0.0
    assert res["blur sigma 2"]["mean_abs_change"] > 0  # an untrained net still reacts to a 2-sigma blur
    assert res[WORST]["roc_auc"] == min(res[k]["roc_auc"] for k in conditions)
    assert res[WORST]["decisions_flipped"] == max(res[k]["decisions_flipped"] for k in conditions)
    table = format_table(res).splitlines()
    assert table[2].startswith("| **worst case** |") and table[3].startswith("| clean |")
    assert any(line.startswith("| lung box masked (control: a low AUC is right) |") for line in table)


def test_the_bacterial_viral_split_goes_through_the_same_suite(labelled, tiny_subtype_model):
    recs, _ = select_records(labelled)
    paths = [r.path for r in recs]
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    # three bacterial, one viral, two untold: a constant call and a reversed rule give different figures
    kinds = iter(["bacteria", "bacteria", "virus", "bacteria", "unknown", "unknown"])
    subtypes = ["none" if r.label == "NORMAL" else next(kinds) for r in recs]
    known = np.array([s in ("bacteria", "virus") for s in subtypes])
    viral = np.array([s == "virus" for s in subtypes])
    predictor = Predictor.load(tiny_subtype_model)
    blur = PERTURBATIONS["blur sigma 2"]
    extra = {"again": (paths, y, subtypes), "no subtypes": (paths, y)}
    res = shifted_validation(
        predictor, paths, y, conditions={"blur": blur}, subtypes=subtypes, extra=extra, atlas=False
    )

    def calls(preds):
        return np.array([p.p_viral > p.p_bacterial for p in preds])

    clean = calls(predictor.predict_sources((str(p), p) for p in paths))
    blurred = calls(_perturbed_by_hand(predictor, paths, blur))
    assert res["clean"]["bacterial_vs_viral"] == (clean[known] == viral[known]).mean()
    assert res["blur"]["bacterial_vs_viral"] == (blurred[known] == viral[known]).mean()
    assert res["blur"]["subtype_flipped"] == (blurred[known] != clean[known]).mean()
    assert res["clean"]["subtype_flipped"] == 0.0
    assert res[WORST]["bacterial_vs_viral"] == res["blur"]["bacterial_vs_viral"]
    assert res[WORST]["worst_of"]["subtype_flipped"] == "blur"
    assert res["again"]["bacterial_vs_viral"] == res["clean"]["bacterial_vs_viral"]
    assert "subtype_flipped" not in res["again"] and "bacterial_vs_viral" not in res["no subtypes"]
    assert "bacterial_vs_viral | subtype_flipped |" in format_table(res).splitlines()[0]
    with pytest.raises(ValueError, match="3 subtypes for 10 images"):
        shifted_validation(predictor, paths, y, conditions={}, subtypes=subtypes[:3])


def test_a_binary_model_has_no_subtype_figures_in_the_suite(labelled, tiny_model):
    recs, _ = select_records(labelled)
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    res = shifted_validation(
        Predictor.load(tiny_model), [r.path for r in recs], y, conditions={}, subtypes=["bacteria"] * len(recs)
    )
    assert "bacterial_vs_viral" not in res["clean"] and "bacterial_vs_viral" not in format_table(res)


def test_reference_outliers_decode_through_the_loader():
    samples = list(synthetic()) + list(photographs())[:5]
    assert len(samples) >= 25
    for name, data in samples:
        img = load_image(data, 32, name=name)
        assert img.shape == (32, 32)


def test_split_csv_of_another_folder_is_refused_clearly(labelled, tmp_path):
    from pneumo.data import make_split

    rows, _ = make_split(labelled, tmp_path / "split.csv", val_fraction=0.3)  # paths like train/NORMAL/...
    assert rows and all(r.path.startswith("train/") for r in rows)
    recs, _ = select_records(labelled, "val", tmp_path / "split.csv")
    assert recs and all(r.split == "train" for r in recs)  # val rows are carved out of the train split
    with pytest.raises(ValueError, match="none of its val rows"):
        select_records(labelled / "train", "val", tmp_path / "split.csv")


def test_robustness_refuses_a_folder_with_other_classes_in_one_line(labelled, tiny_model, tmp_path):
    """Only NORMAL/ and PNEUMONIA/ can be scored: an extra folder with another class is refused, not miscounted."""
    from typer.testing import CliRunner

    from pneumo.cli import app
    from pneumo.data import make_split

    make_split(labelled, tmp_path / "split.csv", val_fraction=0.3)
    other = tmp_path / "other"
    (other / "COVID").mkdir(parents=True)
    _xray_like(3).save(other / "COVID" / "c.png")
    args = ["robustness", str(labelled), "--split-csv", str(tmp_path / "split.csv"), "--model", str(tiny_model)]
    result = CliRunner().invoke(app, [*args, "--extra", str(other)])
    assert result.exit_code == 1 and "expected NORMAL/ and PNEUMONIA/ images, found ['COVID']" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback


def test_the_selection_is_described_without_paths(labelled, tmp_path):
    """Evaluation reports get shared: they name the folder and the split CSV, never where they lie."""
    _, described = select_records(labelled)
    assert described == "split 'test' of data" and str(tmp_path) not in described
    _, everything = select_records(labelled / "test")
    assert everything == "all images of test"


# -- the lung checks ----------------------------------------------------------------------------------------------


def _write_atlas(path):
    a = np.zeros((224, 224), np.uint8)
    a[40:180, 20:100] = 230
    a[40:180, 124:204] = 230
    Image.fromarray(a).save(path)
    return path


def _write_masks(root, paths):
    """A per-image mask for each of ``paths`` under ``root/<class>/<stem>.png``, each a different band."""
    for i, p in enumerate(paths):
        h, w = np.asarray(Image.open(p)).shape
        m = np.zeros((h, w), np.uint8)
        m[10 + i : h - 20, 5 : w // 2] = 255
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(m).save(root / p.parent.name / f"{p.stem}.png")
    return root


def test_lung_checks_sit_beside_clean_and_never_in_the_worst_case(labelled, tiny_model, tmp_path):
    recs, _ = select_records(labelled)
    paths = [r.path for r in recs]
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    atlas = _write_atlas(tmp_path / "atlas.png")
    masks = _write_masks(tmp_path / "masks", paths)
    predictor = Predictor.load(tiny_model)
    blur = {"blur sigma 2": PERTURBATIONS["blur sigma 2"]}
    res = shifted_validation(predictor, paths, y, conditions=blur, atlas=atlas, lung_masks=masks,
                             extra={"again": (paths, y)})  # fmt: skip
    rows = [f"{n} (atlas)" for n in LUNG_CHECKS]
    extra_rows = [f"again: {n} (lung masks)" for n in LUNG_CHECKS] + [f"again: {n} (atlas)" for n in LUNG_CHECKS]
    assert list(res) == [WORST, "clean", *rows, "blur sigma 2", "again", *extra_rows]
    assert set(res[WORST]["worst_of"].values()) == {"blur sigma 2"}  # never a lung check
    # each row is what hiding the region by hand and predicting through the user's path gives
    clean = _probs(predictor.predict_sources((str(p), p) for p in paths))
    placed = LungSource.from_atlas(atlas).atlas
    for name, f in LUNG_CHECKS.items():
        by_hand = _probs(
            _perturbed_by_hand(predictor, paths, lambda im, f=f: f(im, place_atlas(placed, im.size[::-1])))
        )
        assert res[f"{name} (atlas)"]["roc_auc"] == pytest.approx(binary_metrics(y, by_hand, 0.5)["roc_auc"])
        assert res[f"{name} (atlas)"]["mean_abs_change"] == pytest.approx(np.abs(by_hand - clean).mean())
    # the per-image masks: each image's own, grown by 4 % of its side
    own = LungSource.from_masks(paths, masks)
    grown = {str(p): grow(load_mask(masks / p.parent.name / f"{p.stem}.png"), 0.04) for p in paths}
    hidden = iter([grown[str(p)] for p in paths])
    by_hand = _probs(_perturbed_by_hand(predictor, paths, lambda im: LUNG_CHECKS["lungs hidden"](im, next(hidden))))
    checks = lung_checks(predictor, paths, y, own)
    assert checks["lungs hidden"]["mean_abs_change"] == pytest.approx(np.abs(by_hand - clean).mean())
    assert checks["lungs hidden"]["roc_auc"] == pytest.approx(res["again: lungs hidden (lung masks)"]["roc_auc"])
    assert checks["clean"]["roc_auc"] == pytest.approx(res["clean"]["roc_auc"])
    assert checks["lungs"] == "each image's own lung mask, grown by 4% of the side"
    table = format_table(res)
    assert "| lungs hidden (atlas) (lung check, atlas > 0.3: a low AUC is right) |" in table
    assert (
        "| again: only the lungs (lung masks) (lung check, each image's own lung mask, grown by 4% of the side: "
        "the clean AUC is right) |" in table
    )


def test_lung_checks_without_the_atlas_or_masks_are_left_out_with_a_note(labelled, tiny_model, tmp_path, monkeypatch):
    from pneumo import lungs

    recs, _ = select_records(labelled)
    paths = [r.path for r in recs]
    y = np.array([r.label == "PNEUMONIA" for r in recs], dtype=int)
    predictor = Predictor.load(tiny_model)
    monkeypatch.setattr(lungs, "DEFAULT_ATLAS", tmp_path / "none.png")  # a user's clone: no shared data
    monkeypatch.setattr(lungs, "DEFAULT_MASKS", tmp_path / "none")
    lungs.load_atlas.cache_clear()
    res = shifted_validation(predictor, paths, y, conditions={}, extra={"x": (paths, y)})
    assert list(res) == [WORST, "clean", "x", NOTES]
    assert "atlas left out" in res[NOTES][0] and "own masks left out" in res[NOTES][1]
    assert format_table(res).splitlines()[-1].startswith("note: x: lung checks with the images' own masks left out")
    with pytest.raises(LungMaskError):  # asked for by path, it must be there
        shifted_validation(predictor, paths, y, conditions={}, atlas=tmp_path / "none.png")


def test_robustness_takes_the_users_atlas_and_lung_masks(labelled, tiny_model, tmp_path, monkeypatch):
    """`--atlas` and `--lung-masks` give the lung checks a user's own lungs (a clone has no shared data); a masks
    folder that lacks an image's mask is refused in one line."""
    import json

    from typer.testing import CliRunner

    from pneumo import lungs
    from pneumo.cli import app
    from pneumo.data import make_split

    monkeypatch.setattr(lungs, "DEFAULT_ATLAS", tmp_path / "none.png")
    monkeypatch.setattr(lungs, "DEFAULT_MASKS", tmp_path / "none")
    lungs.load_atlas.cache_clear()
    recs, _ = select_records(labelled)
    atlas, masks = _write_atlas(tmp_path / "atlas.png"), _write_masks(tmp_path / "masks", [r.path for r in recs])
    make_split(labelled, tmp_path / "split.csv", val_fraction=0.3)
    args = ["robustness", str(labelled), "--split-csv", str(tmp_path / "split.csv"), "--model", str(tiny_model),
            "--extra", str(labelled), "-o", str(tmp_path / "r.json")]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--atlas", str(atlas), "--lung-masks", str(masks)])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "r.json").read_text())
    name = f"{labelled.parent.name}/{labelled.name}"
    for check in LUNG_CHECKS:
        assert f"{check} (atlas)" in res and f"{name}: {check} (lung masks)" in res
    assert NOTES not in res
    next(masks.rglob("*.png")).unlink()
    result = CliRunner().invoke(app, [*args, "--lung-masks", str(masks)])
    assert result.exit_code == 1 and "no lung mask under" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback
