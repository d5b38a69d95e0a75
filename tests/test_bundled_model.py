"""The model shipped inside the package: present, self-describing, accurate on real images, guarded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ood import adult_chest_radiographs, photographs, synthetic
from pneumo.evaluation.shifts import FRAMING_CHECKS, TRAINING_CHECKS
from pneumo.inference import Predictor
from pneumo.modelfile import bundled_model_path, load_model_file, read_meta

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(None)


def test_bundled_model_is_small_and_self_describing():
    path = bundled_model_path()
    assert path.stat().st_size < 60 * 2**20
    mf = load_model_file(path)
    meta = mf.meta
    assert mf.onnx and mf.weights, "predict needs the ONNX graph, explain the weights"
    assert meta.class_names[0] == "NORMAL" and meta.preprocessing.image_size >= 64
    assert 0.0 < meta.threshold < 1.0 and meta.temperature > 0
    # the threshold is the worst-case rule's: both targets held within a few points in the worst framing condition
    op = meta.validation.operating_point
    assert op.rule == "worst_case" and meta.threshold == op.rules["worst_case"].threshold
    worst_framing = op.rules["worst_case"].worst_framing
    assert worst_framing.sensitivity >= 0.95 and worst_framing.specificity >= 0.85
    checks = meta.validation.geometry_shift
    assert set(checks) == {"worst", *TRAINING_CHECKS}
    assert all(checks[k].roc_auc >= 0.98 for k in FRAMING_CHECKS)  # it ranks under every framing shift
    assert checks["border masked 15%"].roc_auc >= 0.975  # and does not read the frame's edges
    assert not meta.preprocessing.content_scales, (
        "one view: test-time content scales lowered specificity on new periods"
    )
    # chosen on acquisition blocks held out whole, and it says so with each block's figures and the worst block
    assert meta.validation.measured_on.startswith("internal validation (acquisition blocks)")
    blocks = meta.validation.blocks
    assert len(blocks.per_block) == 12 and blocks.worst_specificity.block in blocks.per_block
    assert meta.validation.roc_auc >= 0.985
    assert meta.validation.lung_checks and all(
        None not in (c.clean, c.lungs_hidden, c.only_lungs) for c in meta.validation.lung_checks.values()
    )
    assert meta.domain_guard.pediatric is not None, "two answers: not pediatric / unusual acquisition"
    assert meta.domain_guard is not None and meta.domain_guard.validation_flag_rate <= 0.05
    assert meta.has_subtypes, "the default model carries the bacterial / viral head"


def test_recipe_file_reproduces_the_bundled_models_config():
    """configs/default.yaml names only what differs from the defaults; resolved, it is the shipped training config."""
    from pneumo.config import TrainConfig

    shipped = read_meta(bundled_model_path()).training["config"]
    if "tta" in shipped:  # the content scales' name before the rename; TrainConfig still reads it
        shipped["content_scales"] = shipped.pop("tta")
    paths = {k: shipped[k] for k in ("data_dir", "out", "split_csv")}  # where the training machine kept them
    paths["augment"] = {"lung_atlas": shipped["augment"]["lung_atlas"]}
    recipe = TrainConfig.resolve(REPO / "configs" / "default.yaml", paths).model_dump(mode="json")
    assert shipped["pretrained"] and recipe.pop("pretrained") is None, "pretrained follows the architecture"
    shipped.pop("pretrained")
    for machine_only in ("threads",):  # how many cores the run had, not part of the recipe
        recipe.pop(machine_only), shipped.pop(machine_only)
    from pneumo.config import AugmentConfig

    # Options added after the bundled model was trained must default to the old way, or do nothing in this recipe
    # (how validation is carved without a split CSV, when the recipe trains on one).
    inert = {"split_by", "split_blocks"} if shipped["split_csv"] else set()
    for fields, new, old in ((TrainConfig.model_fields, recipe, shipped),
                             (AugmentConfig.model_fields, recipe["augment"], shipped["augment"])):  # fmt: skip
        for k in [k for k in new if k not in old]:
            value = new.pop(k)
            assert k in inert or value == fields[k].default, f"a new option must default to the old way: {k}"
    assert recipe == shipped


def test_bundled_model_reads_original_size_xrays(predictor, fullres_dir):
    paths = sorted(fullres_dir.rglob("*.jpeg"))
    preds = list(predictor.predict_sources((str(p), p) for p in paths))
    truth = np.array(["PNEUMONIA" in str(p.parent) for p in paths])
    decided = np.array([p.prediction == "PNEUMONIA" for p in preds])
    assert len(paths) == 16
    assert (decided == truth).mean() >= 0.8
    prob = np.array([p.probability for p in preds])
    assert prob[truth].min() > prob[~truth].max(), "every pneumonia original ranks above every normal one"
    assert sum(p.in_domain for p in preds) >= 14


def test_bundled_model_flags_what_is_not_a_pediatric_chest_xray(predictor):
    samples = list(photographs()) + list(synthetic())
    preds = list(predictor.predict_sources(samples))
    flagged = np.mean([p.in_domain is False for p in preds])
    assert len(preds) > 100 and flagged >= 0.99
    adult = list(predictor.predict_sources(adult_chest_radiographs()))
    assert adult and all(p.in_domain is False for p in adult)


def test_info_labels_what_each_figure_was_measured_on(capsys):
    from pneumo.cli import main

    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    assert '"measured_on": "internal validation' in out
    lines = err.splitlines()
    assert any("specificity" in ln and "(internal validation (acquisition blocks): blocks.csv)" in ln for ln in lines)
    assert any(ln.strip().startswith("worst held-out acquisition block: specificity") for ln in lines), err
    assert any(ln.strip().startswith("worst case under framing shift") for ln in lines), err
    assert any("by the worst-case rule" in ln for ln in lines), err
    assert any("image border hidden" in ln for ln in lines), err
    assert "other sites or periods" in err
    # the bundled model's heat map fills hidden regions with its normal films (a model file without them: grey)
    assert "heat map: occlusion, each hidden region filled with the same region of 4 normal training films" in err


def test_bundled_heat_map_uses_its_normal_films():
    """The bundled model carries the four normal training films its maps are made with, as the network sees them
    (histogram-equalised, then normalised), and its maps of an original use them."""
    import numpy as np

    from pneumo.explain.cam import HeatMapper
    from pneumo.explain.occlusion import NORMAL, evidence
    from pneumo.inference import Predictor
    from pneumo.modelfile import OCCLUSION_REFERENCE
    from pneumo.preprocess import to_input

    predictor = Predictor.load(None)
    films = predictor.model.arrays[OCCLUSION_REFERENCE]
    size, pre = predictor.size, predictor.meta.preprocessing
    assert films.shape == (4, size, size) and len({f.tobytes() for f in films}) == 4
    flat = to_input([np.linspace(0, 1, size * size).reshape(size, size)], pre)[0, 0]  # an equalised ramp's range
    assert all(flat.min() - 1e-3 <= f.min() and f.max() <= flat.max() + 1e-3 for f in films)
    image = np.clip(np.random.default_rng(0).normal(0.5, 0.2, (size, size)), 0, 1).astype(np.float32)
    x = to_input([image], pre)[0]
    m = predictor.meta

    def run(b):
        return predictor.session.run(["logits"], {"image": b})[0]

    want = evidence(run, x, m.temperature, m.calibration_bias, fill=NORMAL, reference=films)
    np.testing.assert_allclose(HeatMapper(predictor).evidence(image), want, atol=1e-6)


def test_the_lung_field_trial_recipe_is_the_bundled_one_with_the_field():
    """configs/lung_field.yaml (the trial in docs/experiments.md) differs from configs/default.yaml only by the field
    (and its name and seed): what the trial measured is the field's effect."""
    from pneumo.config import TrainConfig

    where = {"data_dir": "data", "out": "run"}
    trial = TrainConfig.resolve(REPO / "configs" / "lung_field.yaml", where).model_dump(mode="json")
    base = TrainConfig.resolve(REPO / "configs" / "default.yaml", where).model_dump(mode="json")
    assert trial.pop("lung_field") == 0.05 and base.pop("lung_field") is None
    for k in ("name", "seed"):
        trial.pop(k), base.pop(k)
    assert trial == base


def test_the_blurred_lung_field_trial_recipe_is_the_lung_field_one_with_the_blur():
    from pneumo.config import TrainConfig

    where = {"data_dir": "data", "out": "run"}
    blur = TrainConfig.resolve(REPO / "configs" / "lung_field_blur.yaml", where).model_dump(mode="json")
    field = TrainConfig.resolve(REPO / "configs" / "lung_field.yaml", where).model_dump(mode="json")
    assert blur.pop("lung_field_blur") == 16 and field.pop("lung_field_blur") == 0
    blur.pop("name"), field.pop("name")
    assert blur == field
