"""What Typer / Click users expect of ``pneumo``: --version, real defaults and examples in --help, choices as
choices, flags as flags, one name for the output option, and usage errors (exit 2, one line) for options and
inputs that cannot work."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from conftest import xray
from pneumo.choices import TRAIN_DEFAULTS
from pneumo.cli import command, main


def _commands():
    """(name, click command) for every leaf command, ``data inspect`` as "data inspect"."""
    root = command()
    out = []
    for name, cmd in sorted(root.commands.items()):
        subs = getattr(cmd, "commands", None)
        out.extend((f"{name} {s}", c) for s, c in sorted(subs.items())) if subs else out.append((name, cmd))
    return out


COMMANDS = _commands()


def _help(capsys, *args) -> str:
    assert main([*args, "--help"]) == 0
    return capsys.readouterr().out


def _flat(text: str) -> str:
    """The help text with the panels' borders and the line wrapping taken out."""
    return " ".join(text.replace("│", " ").split())


def test_version(capsys):
    from pneumo import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"pneumo {__version__}"


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS])
def test_every_command_has_an_example_and_flags_without_a_type(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    text = _help(capsys, *name.split())
    assert "Example: pneumo " + name in text
    for line in text.splitlines():
        if line.lstrip("│ ").startswith(("--json", "--tta", "--resume", "--int8", "--refer", "--help", "--debug")):
            assert "<bool>" not in line, line


def test_real_defaults_are_shown(capsys, monkeypatch):
    """The bundled model and its own threshold, and train's defaults: not swallowed by the help renderer."""
    from pneumo.modelfile import read_meta

    monkeypatch.setenv("COLUMNS", "250")
    text = _flat(_help(capsys, "predict"))
    assert "[default: the bundled model]" in text
    assert f"{read_meta(None).threshold:.3f} for the bundled model]" in text
    assert "[default: 64]" in text
    text = _flat(_help(capsys, "train"))
    for shown in ("[default: efficientnet_lite0]", "[default: binary]", "[default: 6]", "[default: 0.98]",
                  "[default: worst_case]", "[default: weights]"):  # fmt: skip
        assert shown in text, shown


def test_train_defaults_shown_are_the_configs():
    """The help shows TRAIN_DEFAULTS; training uses TrainConfig's: they must be the same."""
    from pneumo.config import TrainConfig

    for name, shown in dataclasses.asdict(TRAIN_DEFAULTS).items():
        assert TrainConfig.model_fields[name].default == shown, name


@pytest.mark.parametrize(
    ("text", "says"),
    [("epochz: 3\n", "epochz: Extra inputs are not permitted"),
     ("augment:\n  context_swap: 0.8\n", "augment.context_swap: Extra inputs are not permitted"),
     ("epochs: 0\n", "epochs: Input should be greater than or equal to 1"),
     ("val_fraction: 1.5\n", "val_fraction: Input should be less than 1")],
)  # fmt: skip
def test_a_config_file_that_cannot_be_right_is_a_usage_error(text, says, tmp_path, capsys):
    """A misspelt option or an impossible value in a --config file stops `pneumo train` with exit 2 and one line,
    before any image is read: a typo never trains 30 minutes on a default."""
    (tmp_path / "c.yaml").write_text(text)
    assert (
        main(["train", str(tmp_path / "no-data"), "-o", str(tmp_path / "run"), "--config", str(tmp_path / "c.yaml")])
        == 2
    )
    err = capsys.readouterr().err
    assert says in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "option", "choices"),
    [("train", "--task", "binary|subtype"), ("train", "--balance", "weights|oversample|none"),
     ("train", "--transfer", "full|top|linear"), ("train", "--normalization", "equalize|none"),
     ("train", "--threshold-rule", "worst_case|pooled"), ("batch", "--engine", "local|ray"),
     ("evaluate", "--split", "train|val|test"), ("data split", "--by", "blocks|patient"),
     ("predict", "--format", "csv|json")],
)  # fmt: skip
def test_fixed_choices_are_choices(name, option, choices, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")
    line = next(line for line in _help(capsys, *name.split()).splitlines() if line.lstrip("│ ").startswith(option))
    assert f"<{choices}>" in line
    # A value outside them is refused by the parser (exit 2) before the command runs.
    assert main([*name.split(), str(tmp_path), option, "nonsense", "-o", str(tmp_path / "x")]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_one_name_for_the_output_option():
    """Every command with an output option spells it --output / -o, and takes --out as an alias."""
    with_output = []
    for name, cmd in COMMANDS:
        for p in cmd.params:
            opts = set(getattr(p, "opts", ()))
            if opts & {"--out", "--output"}:
                assert {"--output", "-o", "--out"} <= opts, (name, opts)
                with_output.append(name)
    assert {"predict", "train", "evaluate", "data split", "adapt", "batch", "explain", "export"} <= set(with_output)


def test_out_alias_still_works(tmp_path):
    root = tmp_path / "data"
    for i, label in enumerate(["NORMAL", "PNEUMONIA"] * 3):
        (root / label).mkdir(parents=True, exist_ok=True)
        xray(i, 32).save(root / label / f"person{i}_{label.lower()}_{i}.png")
    for flag, name in (("--out", "a.csv"), ("-o", "b.csv"), ("--output", "c.csv")):
        assert main(["data", "split", str(root), flag, str(tmp_path / name), "--by", "patient"]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text() == (tmp_path / "c.csv").read_text()


@pytest.mark.parametrize("layout", ["class-folder-itself", "empty-class-folders", "empty"])
def test_data_inspect_without_class_folders_is_a_usage_error(layout, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    if layout == "class-folder-itself":  # e.g. chest_xray/val/NORMAL
        for i in range(3):
            xray(i, 32).save(d / f"IM-000{i}-0001.jpeg")
    elif layout == "empty-class-folders":
        (d / "NORMAL").mkdir()
        (d / "PNEUMONIA").mkdir()
    assert main(["data", "inspect", str(d)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no page of zeros
    assert len(captured.err.strip().splitlines()) == 1 or "NORMAL/ and PNEUMONIA/" in captured.err
    assert "expected CLASS/ folders" in captured.err.replace("\n", " ") and "Traceback" not in captured.err
    if layout == "class-folder-itself":
        assert "3 images directly in it" in captured.err.replace("\n", " ")


def test_data_inspect_on_a_good_folder_still_works(tmp_path, capsys):
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / label).mkdir()
        xray(1, 32).save(tmp_path / label / "x.png")
    assert main(["data", "inspect", str(tmp_path), "--no-probe"]) == 0
    assert "2 images, classes NORMAL, PNEUMONIA" in _flat(capsys.readouterr().out)


@pytest.mark.parametrize(
    "args",
    [["serve", "--port", "-1"], ["serve", "--port", "70000"], ["serve", "--max-upload-mb", "inf"],
     ["serve", "--max-upload-mb", "nan"], ["serve", "--max-upload-mb", "0"], ["dicom-listen", "--port", "0"],
     ["dicomweb", "--url", "notaurl", "--study", "1.2.3"], ["dicomweb", "--url", "http://", "--study", "1.2.3"],
     ["dicomweb", "--url", "http://pacs:99999/dicom-web", "--study", "1.2.3"]],
    ids=["port-1", "port-70000", "upload-inf", "upload-nan", "upload-0", "dicom-port-0", "url-notaurl",
         "url-no-host", "url-bad-port"],
)  # fmt: skip
def test_server_option_checks_are_usage_errors(args, capsys):
    """Refused before anything starts (a valid serve would block here), exit 2, no traceback."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rror" in err


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    xray(0, 32).save(d / "a.png")
    return d


@pytest.mark.parametrize(
    "case", ["missing-input", "glob-matches-nothing", "no-images", "output-is-a-file", "batch-size-0", "bad-engine"]
)
def test_batch_usage_errors_exit_2_like_predict(case, images, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    inputs, extra, output = [str(images)], [], tmp_path / "out.parquet"
    if case == "missing-input":
        inputs = [str(tmp_path / "nope")]
    elif case == "glob-matches-nothing":
        inputs = [str(tmp_path / "nothing*.png")]
    elif case == "no-images":
        (tmp_path / "empty").mkdir()
        inputs = [str(tmp_path / "empty")]
    elif case == "output-is-a-file":
        output.write_text("x")
    elif case == "batch-size-0":
        extra = ["--batch-size", "0"]
    else:
        extra = ["--engine", "spark"]
    assert main(["batch", *inputs, "-o", str(output), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rror" in err


def test_library_usage_errors_map_to_exit_2(tmp_path, capsys):
    """A library InputError (the one error kind that means 'change the command line') exits 2 with one line."""
    assert main(["predict", str(tmp_path), "-o", str(tmp_path / "x.xlsx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_help_and_import_stay_light():
    code = (
        "import sys; import pneumo; from pneumo.cli import main; main(['--help']); main(['predict', '--help']); "
        "print(sorted(m for m in ('numpy', 'onnxruntime', 'torch', 'PIL', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]"
