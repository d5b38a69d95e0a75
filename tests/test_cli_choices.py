"""The command line's choices and train defaults come from :mod:`pneumo.choices` (what the typed config and the
library use), ``pneumo --help`` stays light, and the option checks the CLI left to the library still say the same
thing with the same exit code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from pneumo import choices
from pneumo.cli import command, main


def _param(cmd_path: str, name: str):
    cmd = command()
    for part in cmd_path.split():
        cmd = cmd.commands[part]
    return next(p for p in cmd.params if p.name == name)


@pytest.mark.parametrize(
    ("cmd_path", "option", "literal"),
    [("train", "task", choices.Task), ("train", "balance", choices.Balance), ("train", "transfer", choices.Transfer),
     ("train", "normalization", choices.Normalization), ("train", "threshold_rule", choices.ThresholdRule),
     ("finalize", "threshold_rule", choices.ThresholdRule), ("data split", "by", choices.SplitBy),
     ("evaluate", "split", choices.DatasetSplit), ("explain", "method", choices.HeatMethod),
     ("batch", "engine", choices.Engine), ("predict", "fmt", choices.OutputFormat)],
)  # fmt: skip
def test_cli_choices_are_the_literals(cmd_path, option, literal):
    enum = _param(cmd_path, option).type_descriptor.annotation  # the StrEnum typer shows and checks
    assert tuple(m.value for m in enum) == typing.get_args(literal)


def test_config_fields_and_library_tuples_use_the_same_choices():
    from pneumo.config import TrainConfig
    from pneumo.data import SPLIT_METHODS
    from pneumo.explain.cam import METHODS
    from pneumo.modelfile import DEFAULT_IMAGE_SIZE

    fields = TrainConfig.model_fields
    pairs = [("task", choices.Task), ("balance", choices.Balance), ("transfer", choices.Transfer),
             ("normalization", choices.Normalization), ("threshold_rule", choices.ThresholdRule)]  # fmt: skip
    for name, literal in pairs:
        assert set(typing.get_args(fields[name].annotation)) == set(typing.get_args(literal)), name
    for name, value in dataclasses.asdict(choices.TRAIN_DEFAULTS).items():
        assert fields[name].default == value, name
    assert SPLIT_METHODS == choices.SPLIT_METHODS and METHODS == choices.HEAT_METHODS
    assert DEFAULT_IMAGE_SIZE == choices.DEFAULT_IMAGE_SIZE
    batch_run = pytest.importorskip("pneumo.batch.run")
    assert batch_run.ENGINES == choices.ENGINES


def test_help_imports_neither_numpy_nor_pydantic():
    """``pneumo --help`` renders from typer, rich and pneumo.choices alone; every command's help without numpy,
    ONNX Runtime, Pillow, yaml or torch (typer itself loads pydantic to render a command's help)."""
    code = (
        "import sys; from pneumo.cli import command, main\n"
        "main(['--help'])\n"
        "root = sorted(m for m in ('numpy', 'pydantic', 'yaml', 'onnxruntime', 'PIL', 'torch') if m in sys.modules)\n"
        "for n in [[n] for n in command().commands] + [['data', 'inspect'], ['data', 'split']]: main([*n, '--help'])\n"
        "print(root, sorted(m for m in ('numpy', 'yaml', 'onnxruntime', 'PIL', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[] []"


def _err(capsys) -> str:
    return capsys.readouterr().err.replace("\n", " ").strip()


def test_threshold_out_of_range_is_a_usage_error_naming_the_option(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "--threshold", "2"]) == 2
    assert _err(capsys) == "error: --threshold must be between 0 and 1, got 2.0"


def test_folds_below_two_is_the_librarys_usage_error(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert main(["adapt", str(tmp_path), "-o", str(tmp_path / "s.pneumo"), "--folds", "1"]) == 2
    assert _err(capsys) == "error: --folds must be at least 2, got 1"


def test_a_bad_forward_destination_is_the_librarys_usage_error(tmp_path, capsys):
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    assert main(["dicom-listen", "--forward", "pacs:4242", "-o", str(tmp_path)]) == 2
    assert _err(capsys) == "error: --forward 'pacs:4242': expected HOST:PORT:AET, e.g. 127.0.0.1:4242:ORTHANC"


def test_nothing_to_do_is_refused_before_the_model_loads(capsys):
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    assert main(["dicom-listen", "--model", "/nonexistent.pneumo"]) == 2
    assert _err(capsys) == "error: nothing to do with the results: give --forward HOST:PORT:AET and/or --output DIR"


def test_an_unknown_arch_is_refused_before_training(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("yaml")
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "run"), "--arch", "nonsense"]) == 2
    assert _err(capsys) == "error: --arch nonsense: unknown architecture; `pneumo models` lists them"
    assert not (tmp_path / "run").exists()
