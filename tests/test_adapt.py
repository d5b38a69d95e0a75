"""pneumo adapt: site calibration, threshold and REFER band on synthetic sites; the site file; the CLI end to end."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError
from scipy.stats import beta, norm

from pneumo.adapt.fit import (
    SiteFit,
    conformal_band,
    cross_validate,
    exact_lower_bound,
    figures_with_intervals,
    fit_site,
    positives_needed,
    sample_size_warning,
)
from pneumo.cli import main
from pneumo.decision import NORMAL_CODE, PNEUMONIA_CODE, REFER_CODE, decision_codes
from pneumo.evaluation.calibration import choose_threshold
from pneumo.evaluation.metrics import expected_calibration_error, operating_point
from pneumo.labels import DECISIONS
from pneumo.modelfile import (
    BASE,
    SITE,
    ModelFileError,
    ModelMeta,
    ReferBand,
    SiteCalibration,
    load_model_file,
    read_meta,
    save_model_file,
    save_site_file,
)
from pneumo.probability import sigmoid

TARGET = 0.98


def scores(rng, n_neg: int, n_pos: int, shift: float = 0.0, scale: float = 1.0, mu: float = 2.0):
    """Network log-odds of a synthetic site: normal ~ N(-mu, 1), pneumonia ~ N(mu, 1), then ``scale * z + shift``
    (a site whose images all look more pneumonic and more extreme to the network)."""
    z = np.r_[rng.normal(-mu, 1.0, n_neg), rng.normal(mu, 1.0, n_pos)] * scale + shift
    return z, np.r_[np.zeros(n_neg, dtype=np.int64), np.ones(n_pos, dtype=np.int64)]


# --- the statistics, on synthetic score arrays ---


SHIFT = {"shift": 1.5, "scale": 1.5, "mu": 1.5}  # the site: every image more pneumonic, more extreme to the network


def test_shifted_site_gets_back_its_operating_point():
    rng = np.random.default_rng(0)
    z_src, y_src = scores(rng, 3000, 3000, mu=SHIFT["mu"])
    base_t = choose_threshold(y_src, sigmoid(z_src), TARGET)  # the base model: calibrated on its own validation
    z_site, y_site = scores(rng, 300, 600, **SHIFT)
    z_new, y_new = scores(rng, 10000, 20000, **SHIFT)  # held-out studies of the same site

    before = operating_point(y_new, sigmoid(z_new), base_t)
    assert before["specificity"] < 0.7 and expected_calibration_error(sigmoid(z_new), y_new) > 0.1  # issue 14
    fit = fit_site(z_site, y_site, TARGET)
    after = operating_point(y_new, fit.probability(z_new), fit.threshold)
    assert after["specificity"] > before["specificity"] + 0.2
    assert expected_calibration_error(fit.probability(z_new), y_new) < 0.03

    # The cross-validated estimate on the sample brackets what the held-out studies show.
    patients = np.array([f"p{i // 2}" for i in range(y_site.size)])
    cv = cross_validate(z_site, y_site, patients, TARGET, seed=0)
    figs = figures_with_intervals(y_site, cv.prob, cv.decision, patients, n_boot=500, seed=0)
    assert figs["sensitivity"]["lo"] <= after["sensitivity"] <= figs["sensitivity"]["hi"] + 1e-12
    assert figs["specificity"]["lo"] <= after["specificity"] <= figs["specificity"]["hi"] + 1e-12


def test_site_threshold_restores_target_sensitivity_on_held_out_data():
    # Over 20 site samples of 600 pneumonia images, the held-out sensitivity (exact, from the normal CDF) averages
    # the target: one sample's threshold is an order statistic, sd sqrt(.98 * .02 / 600) = .0057, .0013 over 20.
    # Keeping the calibrated midpoint 0.5 as the threshold gives about 0.955 here, which must fail.
    rng = np.random.default_rng(1)
    mean_pos, sd = SHIFT["mu"] * SHIFT["scale"] + SHIFT["shift"], SHIFT["scale"]
    sens, ece = [], []
    z_new, y_new = scores(rng, 10000, 20000, **SHIFT)
    for _ in range(20):
        z, y = scores(rng, 300, 600, **SHIFT)
        fit = fit_site(z, y, TARGET)
        z_t = fit.temperature * (math.log(fit.threshold / (1 - fit.threshold)) - fit.bias)
        sens.append(norm.sf(z_t, loc=mean_pos, scale=sd))
        ece.append(expected_calibration_error(fit.probability(z_new), y_new))
    assert TARGET - 0.005 <= np.mean(sens) <= TARGET + 0.005
    assert np.mean(ece) < 0.025


def test_folds_keep_each_patient_on_one_side():
    rng = np.random.default_rng(1)
    z, y = scores(rng, 60, 90)
    patients = np.array([f"p{i // 3}" for i in range(y.size)])  # three images per patient
    cv = cross_validate(z, y, patients, TARGET, folds=5, seed=0)
    assert cv.folds == 5
    for p in np.unique(patients):
        assert np.unique(cv.fold[patients == p]).size == 1, p


def test_cross_validation_scores_each_fold_with_the_fit_of_the_others():
    rng = np.random.default_rng(2)
    z, y = scores(rng, 40, 60, shift=1.0)
    patients = np.array([f"p{i}" for i in range(y.size)])
    cv = cross_validate(z, y, patients, TARGET, folds=4, seed=3)
    for k, fit in enumerate(cv.fits):
        held = cv.fold == k
        train = ~held
        assert fit == fit_site(z[train], y[train], TARGET)
        np.testing.assert_array_equal(cv.prob[held], fit.probability(z[held]))


def test_too_few_patients_is_an_error():
    z, y = np.array([-1.0, 1.0, 2.0]), np.array([0, 1, 1])
    with pytest.raises(ValueError, match="at least 2 of each"):
        cross_validate(z, y, np.array(["a", "b", "c"]), TARGET)


def test_small_sample_warns_and_says_how_many_more_positives():
    # 20 of 20 detected: the percentile bootstrap interval is [1, 1]; the exact one reaches 0.83.
    w = sample_size_warning({"value": 1.0, "lo": 1.0, "hi": 1.0}, n_pos=20, tp=20, target_sensitivity=TARGET)
    assert w is not None and w.startswith("SITE SAMPLE TOO SMALL")
    need = positives_needed(TARGET, TARGET - 0.05)
    assert f"About {need - 20} more pneumonia studies" in w
    # need is the first n whose exact lower bound at 0.98 clears 0.93, found here by brute force.
    bound = [beta.ppf(0.025, TARGET * n, n - TARGET * n + 1) for n in range(1, 400)]
    assert need == 1 + next(i for i, b in enumerate(bound) if b > TARGET - 0.05)


def test_large_enough_sample_does_not_warn():
    w = sample_size_warning({"value": 0.98, "lo": 0.965, "hi": 0.99}, n_pos=1500, tp=1470, target_sensitivity=TARGET)
    assert w is None


def test_sensitivity_below_the_floor_cannot_be_fixed_by_more_data():
    w = sample_size_warning({"value": 0.9, "lo": 0.85, "hi": 0.94}, n_pos=200, tp=180, target_sensitivity=TARGET)
    assert w is not None and "more studies will not fix this" in w


def test_exact_lower_bound_is_clopper_pearson():
    assert exact_lower_bound(0, 10) == 0.0
    assert exact_lower_bound(20, 20) == pytest.approx(0.025 ** (1 / 20), rel=1e-9)  # (alpha / 2) ** (1 / n)


# --- the REFER band ---


def _band_errors(alpha: float, n: int, draws: int, seed: int, mu: float = 0.5):
    """Miss and false-alarm rates on the whole population (exact, from the normal CDF) of bands fitted on ``draws``
    independent site samples of ``n`` normal (log-odds N(-mu, 1)) and ``n`` pneumonia (N(mu, 1)) images."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n, dtype=int), np.ones(n, dtype=int)]
    draw = [sigmoid(np.r_[rng.normal(-mu, 1, n), rng.normal(mu, 1, n)]) for _ in range(draws)]
    bands = np.array([conformal_band(y, p, alpha, threshold=0.5) for p in draw])
    lo_z, hi_z = np.log(bands[:, 0] / (1 - bands[:, 0])), np.log(bands[:, 1] / (1 - bands[:, 1]))
    miss = norm.cdf(lo_z, loc=mu)  # pneumonia below the band: confident NORMAL
    false_alarm = norm.sf(hi_z, loc=-mu)  # normal above the band: confident PNEUMONIA
    referred = 0.5 * (norm.cdf(hi_z, mu) - norm.cdf(lo_z, mu) + norm.cdf(hi_z, -mu) - norm.cdf(lo_z, -mu))
    return miss, false_alarm, referred


def test_refer_band_bounds_each_confident_decisions_error():
    # Split conformal bounds the error in expectation over the site sample: average many samples. Overlapping
    # classes, so both answers are plausible over a real band. n = 24, alpha = 0.1: the (n + 1) rank gives an
    # expected error of exactly 1 - 23/25 = 0.08; the rank without the + 1 gives 0.12, which this test must catch.
    # Monte Carlo sd over 2000 draws: about sqrt(.08 * .92 / 25 / 2000) = 0.0012.
    miss, fa, referred = _band_errors(0.1, 24, 2000, seed=0)
    assert miss.mean() <= 0.1 + 0.005 and fa.mean() <= 0.1 + 0.005
    assert miss.mean() == pytest.approx(1 - 23 / 25, abs=0.005)
    assert fa.mean() == pytest.approx(1 - 23 / 25, abs=0.005)
    assert 0.3 < referred.mean() < 0.9  # overlapping classes: much is referred, and the share is reported


def test_refer_band_on_held_out_site_data():
    rng = np.random.default_rng(5)
    alpha = 0.02
    z, y = scores(rng, 400, 400, shift=1.0, scale=1.5, mu=1.0)
    fit = fit_site(z, y, TARGET, refer_error=alpha)
    z_new, y_new = scores(rng, 50000, 50000, shift=1.0, scale=1.5, mu=1.0)
    d = fit.decide(z_new, three_way=True)
    # One site sample of 400: the realised error has sd about sqrt(.02 * .98 / 400) = .007 around its mean <= .02.
    assert np.mean(d[y_new == 1] == NORMAL_CODE) <= alpha + 3 * 0.007
    assert np.mean(d[y_new == 0] == PNEUMONIA_CODE) <= alpha + 3 * 0.007
    assert 0.0 < np.mean(d == REFER_CODE) < 0.5
    lo, hi = fit.band
    p = fit.probability(z_new)
    np.testing.assert_array_equal(d == REFER_CODE, (p >= lo) & (p <= hi))


def test_site_decisions_are_the_decision_cores_codes_two_way_unless_asked():
    """At the threshold a probability is PNEUMONIA (``>=``); the band only speaks with ``three_way``."""
    fit = SiteFit(temperature=1.0, bias=0.0, threshold=0.5, band=(0.3, 0.7))
    z = np.log([0.2 / 0.8, 0.4 / 0.6, 1.0, 0.6 / 0.4, 0.8 / 0.2])  # p = 0.2, 0.4, 0.5 (exactly: z = 0), 0.6, 0.8
    assert fit.probability(z)[2] == 0.5
    assert [DECISIONS[c] for c in fit.decide(z)] == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA"]
    assert [DECISIONS[c] for c in fit.decide(z, three_way=True)] == ["NORMAL", "REFER", "REFER", "REFER", "PNEUMONIA"]
    np.testing.assert_array_equal(fit.decide(z), decision_codes(fit.probability(z), 0.5))


def test_refer_band_without_enough_images_refers_everything_it_cannot_certify():
    y = np.r_[np.zeros(10, dtype=int), np.ones(10, dtype=int)]
    p = np.r_[np.linspace(0.01, 0.3, 10), np.linspace(0.7, 0.99, 10)]
    assert conformal_band(y, p, 0.02, 0.5) == (0.0, 1.0)  # 10 < 49 images per class: nothing is confident


def test_separated_classes_give_a_single_cut():
    y = np.r_[np.zeros(100, dtype=int), np.ones(100, dtype=int)]
    p = np.r_[np.linspace(0.01, 0.2, 100), np.linspace(0.8, 0.99, 100)]
    low, high = conformal_band(y, p, 0.1, threshold=0.5)
    assert low == high == 0.5


# --- the site file ---


def test_site_schema_refuses_bad_values():
    with pytest.raises(ValidationError, match="refer band low"):
        ReferBand(low=0.6, high=0.4, max_error=0.05)
    with pytest.raises(ValidationError):
        ReferBand(low=0.2, high=0.4, max_error=0.7)


# --- end to end: tiny real model, tiny folder, the CLI ---


def _write_site(root: Path, seed: int = 0) -> Path:
    """12 normal and 12 pneumonia patients, two 64-px images each, Kermany-style names (patient ids)."""
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 1, 64)[:, None] * np.ones((1, 64))
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
        for patient in range(12):
            for k in range(2):
                level = 0.3 if label == "NORMAL" else 0.6
                img = np.clip(level + 0.3 * yy + 0.15 * rng.standard_normal((64, 64)), 0, 1)
                name = f"IM-{patient:04d}-{k + 1:04d}.png" if label == "NORMAL" else f"person{patient}_virus_{k}.png"
                Image.fromarray((img * 255).astype(np.uint8)).save(root / label / name)
    return root


@pytest.fixture(scope="module")
def adapted(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    site_dir = _write_site(tmp / "site")
    out, report = tmp / "site.pneumo", tmp / "report"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        args = ["adapt", str(site_dir), "--out", str(out), "--model", str(tiny_model), "--report", str(report)]
        code = main([*args, "--refer", "--refer-error", "0.1", "--folds", "3", "--name", "Ward 7"])
    return {"code": code, "out": out, "report": report, "site_dir": site_dir, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "tmp": tmp}  # fmt: skip


def test_cli_writes_site_file_and_report(adapted):
    assert adapted["code"] == 0, adapted["stderr"]
    assert {p.name for p in adapted["report"].iterdir()} == {
        "report.txt", "metrics.json", "predictions.csv", "reliability_before.png", "reliability_after.png", "roc.png",
    }  # fmt: skip
    text = (adapted["report"] / "report.txt").read_text()
    assert "BEFORE" in text and "AFTER" in text and "REFER band" in text
    assert text.count("precision    recall  f1-score   support") == 2  # scikit-learn's layout, before and after
    metrics = json.loads((adapted["report"] / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3 and metrics["site"]["name"] == "Ward 7"
    for key in ("sensitivity", "specificity", "ece", "roc_auc"):
        f = metrics["after_cross_validated"][key]
        assert f["lo"] <= f["value"] <= f["hi"]
    # 24 pneumonia images cannot show sensitivity above 0.93: the loud warning, on stderr and in the file.
    assert "WARNING: SITE SAMPLE TOO SMALL" in adapted["stderr"] and "24 pneumonia image(s)" in adapted["stderr"]
    assert any(w.startswith("SITE SAMPLE TOO SMALL") for w in metrics["site"]["warnings"])


def test_a_missing_extra_is_one_line_naming_it_before_any_image_is_read(adapted, tiny_model, tmp_path, monkeypatch):
    import importlib.util

    from pneumo.adapt.site import adapt_site
    from pneumo.errors import MissingExtraError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else find_spec(name, *a))
    out = tmp_path / "s.pneumo"
    with pytest.raises(MissingExtraError, match=r"'adapt' extra \(scipy not installed\).*pneumo\[adapt\]"):
        adapt_site(adapted["site_dir"], out, model=tiny_model)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["adapt", str(adapted["site_dir"]), "--out", str(out), "--model", str(tiny_model)])
    text = stderr.getvalue()
    assert code == 1 and "Traceback" not in text and text.count("\n") == 1, text
    assert text.startswith("error: pneumo adapt needs the 'adapt' extra") and "pip install 'pneumo[adapt]'" in text
    assert not out.exists()


def test_provenance_round_trips(adapted, tiny_model):
    out = adapted["out"]
    with zipfile.ZipFile(out) as zf:
        assert set(zf.namelist()) == {SITE, BASE}
        site = SiteCalibration.model_validate_json(zf.read(SITE))
        assert zf.read(BASE) == tiny_model.read_bytes()  # the base model untouched, byte for byte
    assert site.base.sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    base = read_meta(tiny_model)
    assert (site.base.name, site.base.version, site.base.file) == (base.name, base.version, tiny_model.name)
    assert (site.base.temperature, site.base.threshold) == (base.temperature, base.threshold)
    assert (site.sample.n, site.sample.n_normal, site.sample.n_pneumonia, site.sample.n_patients) == (48, 24, 24, 24)
    assert site.target_sensitivity == TARGET and site.cross_validated.folds == 3
    assert site.refer is not None and site.refer.max_error == 0.1 and site.cross_validated.referred is not None

    mf = load_model_file(out)
    assert mf.meta.site == site
    assert (mf.meta.temperature, mf.meta.calibration_bias, mf.meta.threshold) == (
        site.temperature, site.calibration_bias, site.threshold,
    )  # fmt: skip
    assert mf.onnx == load_model_file(tiny_model).onnx
    # A site file can be saved again from what was loaded: the same site section, the same base.
    again = adapted["tmp"] / "again.pneumo"
    save_site_file(again, site, tiny_model.read_bytes())
    assert read_meta(again) == mf.meta


def test_site_fit_is_the_library_fit_on_the_onnx_scores(adapted, tiny_model):
    from pneumo.adapt.report import base_predictor, score_site

    _, _, predictor = base_predictor(tiny_model)
    s = score_site(adapted["site_dir"], predictor)
    fit = fit_site(s.z, s.y, TARGET, refer_error=0.1)
    site = read_meta(adapted["out"]).site
    assert (site.temperature, site.calibration_bias, site.threshold) == (fit.temperature, fit.bias, fit.threshold)
    assert (site.refer.low, site.refer.high) == fit.band


def test_predict_carries_the_site_decisions(adapted, tmp_path):
    from pneumo.inference import Predictor

    csv_out = tmp_path / "p.json"
    assert main(["predict", str(adapted["site_dir"]), "--model", str(adapted["out"]), "-o", str(csv_out)]) == 0
    rows = json.loads(csv_out.read_text())
    site = read_meta(adapted["out"]).site
    for r in rows:
        assert r["refer_low"] == site.refer.low and r["refer_high"] == site.refer.high
        p = r["probability"]
        expected = "NORMAL" if p < site.refer.low else "PNEUMONIA" if p > site.refer.high else "REFER"
        assert r["prediction"] == expected
    # An explicit threshold is a two-way decision: no band.
    pred = Predictor.load(adapted["out"], threshold=0.5)
    assert pred.refer is None and pred.decide(0.5) == "PNEUMONIA" and pred.decide(0.49) == "NORMAL"


def test_info_shows_the_site_calibration(adapted, capsys):
    assert main(["info", "--model", str(adapted["out"])]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["site"]["name"] == "Ward 7"
    assert "site calibration in force: Ward 7" in captured.err


def test_serve_shows_the_site_calibration_and_refer(adapted):
    from fastapi.testclient import TestClient

    from pneumo.serve.app import create_app

    client = TestClient(create_app(adapted["out"]))
    card = client.get("/api/v1/model").json()
    assert card["site"]["name"] == "Ward 7" and card["threshold"] == card["site"]["threshold"]
    image = next((adapted["site_dir"] / "PNEUMONIA").iterdir()).read_bytes()
    body = client.post("/api/v1/predict", files={"file": ("x.png", image, "image/png")}).json()
    assert body["site_calibration"].startswith("Ward 7 (")
    assert body["refer_low"] == card["site"]["refer"]["low"] and body["refer_high"] == card["site"]["refer"]["high"]
    assert body["prediction"] in {"NORMAL", "REFER", "PNEUMONIA"}


def _rezip(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name, zin.read(name)))
    return dst


def test_base_hash_mismatch_is_refused(adapted, tiny_model, tmp_path):
    other = load_model_file(tiny_model)
    other.meta.name = "another-base"  # same network, another file: a calibration is tied to the file it was fitted on
    other_bytes = save_model_file(tmp_path / "other.pneumo", other).read_bytes()
    tampered = _rezip(adapted["out"], tmp_path / "tampered.pneumo", {BASE: other_bytes})
    with pytest.raises(ModelFileError, match="refused: its base model"):
        load_model_file(tampered)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(["predict", str(adapted["site_dir"]), "--model", str(tampered)]) == 1
    assert "refused" in stderr.getvalue()
    site = read_meta(adapted["out"]).site
    with pytest.raises(ValueError, match="do not match"):
        save_site_file(tmp_path / "x.pneumo", site, other_bytes)


def test_site_section_must_be_the_calibration_in_force(adapted, tmp_path):
    meta = read_meta(adapted["out"])
    with pytest.raises(ValidationError, match="differs from the temperature, bias and threshold in force"):
        ModelMeta.model_validate({**meta.model_dump(), "threshold": 0.5 if meta.threshold != 0.5 else 0.4})
    site = json.loads(meta.site.model_dump_json())
    site["base"]["sha256"] = "not-a-hash"
    bad = _rezip(adapted["out"], tmp_path / "bad.pneumo", {SITE: json.dumps(site).encode()})
    with pytest.raises(ModelFileError, match="sha256"):
        load_model_file(bad)


def test_adapting_a_site_file_starts_from_its_base(adapted, tmp_path, tiny_model):
    out = tmp_path / "again.pneumo"
    args = ["adapt", str(adapted["site_dir"]), "--out", str(out), "--model", str(adapted["out"]), "--folds", "2"]
    assert main(args) == 0
    site = read_meta(out).site
    assert site.base.sha256 == hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    assert site.base.threshold == read_meta(tiny_model).threshold and site.refer is None
    assert site.base.file == tiny_model.name


def test_patients_from_a_csv_when_names_carry_none(tiny_model, tmp_path):
    from pneumo.adapt.report import base_predictor, score_site
    from pneumo.adapt.site import adapt_site

    rng = np.random.default_rng(3)
    rows = ["path,patient_id"]
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "site" / label).mkdir(parents=True)
        for pid in range(6):
            for k in range(2):
                name = f"scan-{label[0]}{pid}-{k}.png"
                Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "site" / label / name)
                rows.append(f"{label}/{name},{label[0]}{pid}")
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    _, _, predictor = base_predictor(tiny_model)

    by_name = score_site(tmp_path / "site", predictor)
    assert not by_name.named_patients and np.unique(by_name.patients).size == 24  # each image its own patient
    by_csv = score_site(tmp_path / "site", predictor, patients_csv=csv_path)
    assert by_csv.named_patients and np.unique(by_csv.patients).size == 12
    assert set(by_csv.patients[by_csv.y == 1]) == {f"P{i}" for i in range(6)}

    csv_path.write_text("\n".join(rows[:-1]) + "\n")  # the last image has no row
    with pytest.raises(ValueError, match=r"no patient_id for PNEUMONIA/scan-P5-1\.png"):
        score_site(tmp_path / "site", predictor, patients_csv=csv_path)

    result = adapt_site(tmp_path / "site", tmp_path / "s.pneumo", model=tiny_model, folds=2, n_boot=100)
    assert any(w.startswith("no file name carries a patient id") for w in result.warnings)


# --- input errors: one line each, a usage error (issue 25, item 6) ---


def _bad_site(kind: str, root: Path) -> tuple[Path, list[str]]:
    """A site folder (and extra options) that ``pneumo adapt`` cannot use, by kind."""
    if kind == "missing folder":
        return root / "nowhere", []
    if kind == "no class folders":
        (root / "flat").mkdir()
        Image.fromarray(np.full((64, 64), 90, np.uint8)).save(root / "flat" / "a.png")
        return root / "flat", []
    site = _write_site(root / "site")
    if kind == "one class":
        for f in (site / "PNEUMONIA").iterdir():
            f.unlink()
        return site, []
    if kind == "one patient per class":
        for label in ("NORMAL", "PNEUMONIA"):
            for f in sorted((site / label).iterdir())[2:]:
                f.unlink()
        return site, []
    if kind == "target 2":
        return site, ["--target-sensitivity", "2"]
    if kind == "refer error 0.7":
        return site, ["--refer", "--refer-error", "0.7"]
    if kind == "patients file not UTF-8":
        (root / "p.csv").write_bytes(b"path,patient_id\n\xff\xfe,1\n")
        return site, ["--patients", str(root / "p.csv")]
    raise AssertionError(kind)


BAD_SITES = ["missing folder", "no class folders", "one class", "one patient per class", "target 2",
             "refer error 0.7", "patients file not UTF-8"]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_SITES)
def test_adapt_input_errors_are_one_line_usage_errors(kind, tiny_model, tmp_path):
    from pneumo.adapt.site import AdaptError, adapt_site
    from pneumo.errors import InputError, PneumoError

    site, extra = _bad_site(kind, tmp_path)
    opts = {"target_sensitivity": 2.0} if kind == "target 2" else {"refer": True, "refer_error": 0.7} if (
        kind == "refer error 0.7") else {"patients_csv": tmp_path / "p.csv"} if extra else {}  # fmt: skip
    with pytest.raises(AdaptError) as info:
        adapt_site(site, tmp_path / "s.pneumo", model=tiny_model, n_boot=10, **opts)
    assert isinstance(info.value, InputError | PneumoError) and info.value.exit_code == 2
    assert "\n" not in str(info.value)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["adapt", str(site), "--out", str(tmp_path / "s.pneumo"), "--model", str(tiny_model), *extra])
    text = stderr.getvalue()
    assert code == 2 and "Traceback" not in text and text.count("\n") == 1, text
    assert not (tmp_path / "s.pneumo").exists()


def _bad_model(kind: str, tiny_model: Path, root: Path) -> Path:
    """A base model that ``pneumo adapt`` cannot open, by kind."""
    path = root / "bad.pneumo"
    if kind == "not a model file":
        path.write_bytes(b"not a zip at all")
    elif kind == "no ONNX graph":
        mf = load_model_file(tiny_model)
        save_model_file(path, mf.model_copy(update={"onnx": None}))
    return path


@pytest.mark.parametrize("kind", ["not a model file", "no ONNX graph"])
def test_a_bad_base_model_is_the_model_file_error_every_command_gives(kind, tiny_model, tmp_path):
    """The base model is opened as predict opens it (``inference.open_model``): one ModelFileError, exit 1."""
    from pneumo.adapt.report import base_predictor
    from pneumo.inference import open_model

    bad = _bad_model(kind, tiny_model, tmp_path)
    with pytest.raises(ModelFileError) as info:
        base_predictor(bad)
    with pytest.raises(ModelFileError) as same:
        open_model(bad)
    assert str(info.value) == str(same.value) and info.value.exit_code == 1
    site = _write_site(tmp_path / "site")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["adapt", str(site), "--out", str(tmp_path / "s.pneumo"), "--model", str(bad)])
    text = stderr.getvalue()
    assert code == 1 and "Traceback" not in text and text.count("\n") == 1, text
    assert not (tmp_path / "s.pneumo").exists()
