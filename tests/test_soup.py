"""pneumo soup: the members' weights averaged, batch norm refitted on the training split, finalised like a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pneumo.cli import main
from pneumo.config import TrainConfig
from pneumo.data import scan_dataset, split_dataset, write_split_csv
from pneumo.errors import ModelFileError
from pneumo.evaluation.compare import compare_runs
from pneumo.modelfile import load_model_file
from pneumo.recipes import group_recipes
from pneumo.training.soup import CHECKPOINT, average_states, build_soup, member_config
from pneumo.training.splits import load_splits
from pneumo.training.train import PneumoModule, checkpoint_net_state, fit, train_loader
from test_train import make_dataset


def _config(root: Path, data: Path, split: Path, seed: int, **extra) -> TrainConfig:
    # no augmentation: the batch-norm pass is then deterministic and its statistics can be recomputed here
    return TrainConfig(
        data_dir=data, out=root / f"m{seed}", arch="cnn-small", pretrained=False, image_size=32, epochs=1,
        batch_size=8, threads=1, cache_dir=root / "cache", split_csv=split, seed=seed, augment={"enabled": False},
        **extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> tuple[Path, Path, Path, list[Path]]:
    """A synthetic dataset, its split as a CSV, and two runs of one recipe (seeds 0 and 1) trained on it."""
    root = tmp_path_factory.mktemp("soup")
    data = make_dataset(root / "data")
    records = scan_dataset(data).training_records()
    split = write_split_csv(root / "split.csv", records, split_dataset(records, val_fraction=0.25, seed=0))
    runs = []
    for seed in (0, 1):
        fit(_config(root, data, split, seed))
        runs.append(root / f"m{seed}")
    return root, data, split, runs


@pytest.fixture(scope="module")
def soup(members, tmp_path_factory) -> Path:
    return build_soup(members[3], tmp_path_factory.mktemp("souped") / "soup")


def test_average_states_is_the_mean_and_keeps_counts():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}
    got = average_states([a, b])
    torch.testing.assert_close(got["w"], torch.tensor([2.0, 4.0]))
    assert got["n"].item() == 3 and got["n"].dtype == a["n"].dtype
    with pytest.raises(ModelFileError, match="different layers"):
        average_states([a, {"w": a["w"]}])


def test_soup_weights_are_the_members_mean(members, soup):
    states = [checkpoint_net_state(str(r / CHECKPOINT)) for r in members[3]]
    got = checkpoint_net_state(str(soup.parent / CHECKPOINT))
    weights = [k for k in got if k.endswith(".weight") or k.endswith(".bias")]
    assert weights and not torch.allclose(states[0][weights[0]], states[1][weights[0]])  # two different members
    for k in weights:
        torch.testing.assert_close(got[k], (states[0][k] + states[1][k]) / 2, rtol=0, atol=1e-6)


def test_batch_norm_is_refitted_on_the_training_split(members, soup):
    """The first batch-norm layer's running mean is the mean of its input over one pass of the training batches
    (not the members' mean statistics): recomputed here with a hook on the soup's averaged weights."""
    cfg = member_config(soup.parent)
    module = PneumoModule(cfg)
    got = checkpoint_net_state(str(soup.parent / CHECKPOINT))
    module.net.load_state_dict(got)
    bn_name, bn = next((n, m) for n, m in module.net.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    bn.register_forward_pre_hook(lambda _m, args: seen.append(args[0].mean(dim=(0, 2, 3))))
    module.net.eval()  # eval: the hook reads the input; the stored statistics are not touched
    train, _, _ = load_splits(cfg)
    with torch.no_grad():
        for x, _ in train_loader(cfg, train):
            module.net(module.network_inputs(x, train=True))
    expected = torch.stack(seen).mean(0)  # equal batches (drop_last): the cumulative mean update_bn keeps
    torch.testing.assert_close(got[f"{bn_name}.running_mean"], expected, rtol=1e-4, atol=1e-5)
    states = [checkpoint_net_state(str(r / CHECKPOINT)) for r in members[3]]
    members_mean = (states[0][f"{bn_name}.running_mean"] + states[1][f"{bn_name}.running_mean"]) / 2
    assert not torch.allclose(got[f"{bn_name}.running_mean"], members_mean, atol=1e-3)


def test_soup_is_a_finalised_self_describing_run(members, soup):
    model = load_model_file(soup)
    assert model.meta.training["soup"]["members"] == ["m0", "m1"]
    assert model.meta.training["soup"]["seeds"] == [0, 1]
    assert model.meta.training["soup"]["bn_images"] > 0
    assert model.meta.validation.roc_auc is not None and 0.0 < model.meta.threshold < 1.0
    assert model.meta.name == "pneumo-cnn-small-soup2"


def test_soup_is_its_own_recipe_in_a_comparison(members, soup):
    recipes = group_recipes(compare_runs([*members[3], soup]))
    assert [r["runs"] for r in recipes] == [2, 1]  # the two seeds pooled; the soup beside them, not a third seed
    assert "soup of 2" in recipes[1]["differs"]


def test_soup_refinalises_from_its_checkpoint(members, soup, tmp_path):
    import shutil

    run = shutil.copytree(soup.parent, tmp_path / "again")
    assert main(["finalize", str(run)]) == 0
    again = load_model_file(run / "model.pneumo")
    assert again.meta.training["soup"]["members"] == ["m0", "m1"]  # timing.json keeps what was averaged
    assert again.meta.threshold == pytest.approx(load_model_file(soup).meta.threshold)


def test_soup_refuses_runs_of_another_recipe(members, tmp_path):
    root, data, split, runs = members
    other = _config(root, data, split, 2, lr=0.01).model_copy(update={"out": tmp_path / "other"})
    other.dump(Path(other.out).mkdir(parents=True) or Path(other.out) / "config.yaml")
    (Path(other.out) / "checkpoints").mkdir()
    (Path(other.out) / CHECKPOINT).write_bytes((runs[0] / CHECKPOINT).read_bytes())
    with pytest.raises(ModelFileError, match="lr differ"):
        build_soup([runs[0], other.out], tmp_path / "bad")
    elsewhere = tmp_path / "elsewhere" / split.name  # a split of the same name with other rows
    elsewhere.parent.mkdir()
    elsewhere.write_text(split.read_text().replace(",val,", ",train,", 1))
    moved = _config(root, data, elsewhere, 3).model_copy(update={"out": tmp_path / "moved"})
    moved.dump(Path(moved.out).mkdir(parents=True) or Path(moved.out) / "config.yaml")
    (Path(moved.out) / "checkpoints").mkdir()
    (Path(moved.out) / CHECKPOINT).write_bytes((runs[0] / CHECKPOINT).read_bytes())
    with pytest.raises(ModelFileError, match="split files differ"):
        build_soup([runs[0], moved.out], tmp_path / "bad")
    with pytest.raises(ModelFileError, match="at least two"):
        build_soup([runs[0]], tmp_path / "bad")
    with pytest.raises(ModelFileError, match="not a finished run"):
        build_soup([runs[0], tmp_path], tmp_path / "bad")


def test_cli_writes_the_soup(members, tmp_path, capsys):
    assert main(["soup", *map(str, members[3]), "--out", str(tmp_path / "s"), "--name", "mine"]) == 0
    assert "2 members averaged" in capsys.readouterr().out
    assert load_model_file(tmp_path / "s" / "model.pneumo").meta.name == "mine"
