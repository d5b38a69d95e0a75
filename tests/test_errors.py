"""One error contract: every :class:`~pneumo.errors.PneumoError` subclass carries a documented exit code (usage 2,
unreadable input 3, anything else 1), and ``pneumo`` prints ``error: <message>`` and exits with it.

The subclasses are found by reading src/pneumo (``ast``), so that one added later is checked too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pneumo import errors
from pneumo.cli import app

SRC = Path(__file__).resolve().parents[1] / "src"


def _error_classes() -> list[tuple[str, str]]:
    """(module, class name) of every class in src/pneumo that derives, through classes defined there, from
    PneumoError."""
    bases: dict[str, tuple[str, list[str]]] = {}
    for path in sorted((SRC / "pneumo").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                bases[node.name] = (module, names)

    def is_error(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name == "PneumoError":
            return True
        return name in bases and name not in seen and any(is_error(b, seen | {name}) for b in bases[name][1])

    return sorted((module, name) for name, (module, _) in bases.items() if name != "PneumoError" and is_error(name))


ERROR_CLASSES = _error_classes()


def _load(module: str, name: str) -> type[errors.PneumoError]:
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:  # an optional extra that is not installed
        pytest.skip(f"{module}: {exc}")


def test_the_scan_finds_the_known_kinds():
    names = {name for _, name in ERROR_CLASSES}
    assert {"ImageLoadError", "ModelFileError", "DataError", "ConfigError", "InputError", "MissingExtraError"} <= names
    assert {"AdaptError", "BatchError", "ExportError"} <= names  # subclasses outside errors.py too


def test_the_kinds_exit_codes():
    """Usage errors 2 (the command line must change), unreadable inputs 3, everything else 1."""
    assert set(errors.EXIT_CODES) == {1, 2, 3}
    assert errors.ConfigError.exit_code == errors.InputError.exit_code == 2
    assert errors.ImageLoadError.exit_code == 3
    assert errors.PneumoError.exit_code == errors.ModelFileError.exit_code == errors.DataError.exit_code == 1
    assert errors.MissingExtraError.exit_code == 1
    for cls in vars(errors).values():  # each kind in errors.py says its code itself, none left to chance
        if isinstance(cls, type) and issubclass(cls, errors.PneumoError):
            assert "exit_code" in vars(cls), cls.__name__


@pytest.mark.parametrize(("module", "name"), ERROR_CLASSES, ids=[n for _, n in ERROR_CLASSES])
def test_the_cli_prints_one_line_and_exits_with_the_errors_code(module, name, monkeypatch):
    cls = _load(module, name)
    assert issubclass(cls, errors.PneumoError)
    assert cls.exit_code in errors.EXIT_CODES, f"{name}.exit_code {cls.exit_code} is not documented in EXIT_CODES"
    exc = cls.__new__(cls)  # whatever its constructor asks for: only the message matters here
    Exception.__init__(exc, f"{name}: something the person can fix\nsecond line")

    def failing(model=None, **kw):  # what `pneumo info` reads the model file with
        raise exc

    monkeypatch.setattr("pneumo.modelfile.load_model_file", failing)
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == cls.exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert result.output == f"error: {name}: something the person can fix\n"


def test_an_os_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch):
    def unreadable(model=None, **kw):
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/model.pneumo")

    monkeypatch.setattr("pneumo.modelfile.load_model_file", unreadable)
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 1 and result.output.startswith("error: [Errno 2] No such file or directory")

    def buggy(model=None, **kw):
        raise KeyError("a bug")

    monkeypatch.setattr("pneumo.modelfile.load_model_file", buggy)
    result = CliRunner().invoke(app, ["info"])
    assert isinstance(result.exception, KeyError) and "error:" not in result.output
