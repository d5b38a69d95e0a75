"""pneumo.recipes (``pneumo compare --by-recipe``): runs that differ only by seed pool into one recipe,
each figure as its mean with the lowest and highest run, and each recipe says what it changes against the first."""

from __future__ import annotations

import pytest

from pneumo.cli import main
from pneumo.evaluation.compare import compare_runs
from pneumo.modelfile import ModelFile, ModelMeta, save_model_file
from pneumo.recipes import format_recipes, group_recipes

BASE = {"data_dir": "/data/chest_xray", "epochs": 8, "image_size": 128, "augment": {"border_erase_p": 0.5}}


def _run(tmp_path, name: str, seed: int | None, auc: float, worst: float, **config) -> str:
    cfg = None if seed is None else {**BASE, "out": f"/runs/{name}", "name": name, "seed": seed, **config}
    validation = {
        "roc_auc": auc,
        "blocks": {"worst_specificity": {"value": worst, "block": "NORMAL late", "n": 23}},
        "lung_checks": {
            "16 originals, own masks": {"lungs_hidden": 0.9, "only_lungs": 0.9},
            "val rows (block validation), atlas lungs > 0.3": {"lungs_hidden": auc - 0.4, "only_lungs": auc - 0.01},
        },
    }
    meta = ModelMeta(arch="cnn-small", validation=validation, training={"config": cfg} if cfg else {})
    return str(save_model_file(tmp_path / name / "model.pneumo", ModelFile(meta=meta)).parent)


@pytest.fixture
def runs(tmp_path):
    atlas = {"augment": {"border_erase_p": 0.5, "lung_atlas": "/work/shared/atlas_224.png"}, "lung_field": 0.05}
    moved = {**atlas, "augment": {**atlas["augment"], "lung_atlas": "atlas_224.png"}}  # on another machine
    return [
        _run(tmp_path, "swap_s1", 1, 0.98, 0.50),
        _run(tmp_path, "field_s1", 1, 0.97, 0.40, **atlas),
        _run(tmp_path, "swap_s2", 2, 0.99, 0.70, tta=[]),  # written by an older version: "tta", not "content_scales"
        _run(tmp_path, "field_s2", 2, 0.95, 0.44, **moved),
        _run(tmp_path, "handmade", None, 0.90, 0.30),  # no config recorded: a recipe of its own
    ]  # fmt: skip


def test_runs_that_differ_only_by_seed_pool_into_one_recipe(runs):
    rows = compare_runs(runs)
    assert [r["worst_block_specificity"] for r in rows] == [0.5, 0.4, 0.7, 0.44, 0.3]
    assert rows[0]["lungs_hidden_auc"] == pytest.approx(0.58)  # validation's atlas check, not the originals'
    swap, field, handmade = group_recipes(rows)
    assert (swap["name"], swap["runs"], swap["seeds"]) == ("swap", 2, [1, 2])
    assert swap["roc_auc"] == pytest.approx(0.985) and (swap["roc_auc_min"], swap["roc_auc_max"]) == (0.98, 0.99)
    assert swap["worst_block_specificity"] == pytest.approx(0.6)
    assert swap["differs"] == ""  # the reference
    assert (field["name"], field["seeds"]) == ("field", [1, 2])
    assert field["differs"] == 'augment.lung_atlas="atlas_224.png", lung_field=0.05'
    assert field["worst_block_specificity"] == pytest.approx(0.42)
    assert (handmade["name"], handmade["runs"], handmade["seeds"]) == ("handmade", 1, [None])


def test_the_recipe_table_gives_each_figure_with_its_lowest_and_highest_run(runs):
    table = format_recipes(group_recipes(compare_runs(runs)))
    lines = table.splitlines()
    assert lines[0].startswith("| recipe | runs | seeds | differs from the first recipe |")
    assert lines[2].startswith("| swap | 2 | 1, 2 |  |") and "| 0.600 (0.500–0.700) |" in lines[2]
    assert "| 0.985 (0.980–0.990) |" in lines[2]
    assert lines[4].startswith("| handmade | 1 | — | — |") and "| 0.300 |" in lines[4]  # one run: no range


def test_compare_by_recipe_prints_and_writes_both_tables(runs, tmp_path, capsys):
    out = tmp_path / "comparison.md"
    assert main(["compare", *runs, "--by-recipe", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| swap_s1 |" in printed and "By recipe" in printed and "| swap | 2 | 1, 2 |" in printed
    assert out.read_text().strip() == printed.strip()
    assert main(["compare", *runs]) == 0
    assert "By recipe" not in capsys.readouterr().out
