"""``arrays.npz``, the numeric side data of a model file (the domain guard's statistics): read without unpickling,
its sizes checked before numpy allocates anything, and checked against what the metadata's guard reads."""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pneumo.errors import ModelFileError
from pneumo.modelfile.meta import ARRAYS, ModelMeta

# arrays.npz is a zip inside the zip: its members' sizes are checked from its own directory and each .npy header
# (shape, dtype) before numpy allocates anything. The domain guard's arrays are a few hundred kB (components x
# feature dimension floats); these caps leave two orders of magnitude.
MAX_ARRAY_ELEMENTS = 16 * 2**20
MAX_ARRAYS_BYTES = 128 * 2**20
_ARRAY_KINDS = "fiub"  # float, signed and unsigned integers, bool: never objects, strings or structured records
# What the domain guard reads (pneumo.domain), with each array's shape in terms of k components and D features.
GUARD_ARRAYS: dict[str, tuple[str, ...]] = {
    "domain_mean": ("D",),
    "domain_components": ("k", "D"),
    "domain_variances": ("k",),
    "domain_scale": ("2",),
    "domain_val_distances": ("n",),
}
_GUARD_SCALING = {"domain_feature_mean": ("D",), "domain_feature_std": ("D",)}  # together, or neither (old files)
_POSITIVE = ("domain_variances", "domain_scale", "domain_feature_std")
# The occlusion map's fillers (pneumo.explain.occlusion.normal_reference): K x input size x input size, optional
# (files finalised before it fill with mean grey).
OCCLUSION_REFERENCE = "occlusion_reference"
# With synthetic fillers (pneumo.explain.occlusion.synthetic_reference): how many NORMAL training films the draws were
# modelled on, a scalar integer; absent when the fillers are the training films themselves.
OCCLUSION_DRAWN_FROM = "occlusion_reference_drawn_from"
# A lung-field model's input field (``lung_field`` in the training config): input size x input size in [0, 1], the
# same field the graph multiplies its input by; the heat maps draw its edge (pneumo.explain.field). Optional: files
# finalised before it, or models that see the whole frame, have none.
LUNG_FIELD = "lung_field"


def heat_map_filler(arrays: dict[str, np.ndarray]) -> str:
    """What the occlusion heat map fills a hidden region with, for a model file's ``arrays``, in words."""
    if OCCLUSION_REFERENCE in arrays:
        k = len(arrays[OCCLUSION_REFERENCE])
        films = f"{k} normal{' training' if OCCLUSION_DRAWN_FROM not in arrays else ''} film{'s' if k != 1 else ''}"
        if OCCLUSION_DRAWN_FROM in arrays:
            n = int(arrays[OCCLUSION_DRAWN_FROM])
            return (f"the same region of {films} drawn from a model of {n:,} normal training films (none of them "
                    "a patient's film), carried in the model file")  # fmt: skip
        return f"the same region of {films} carried in the model file (training X-rays of {k} patients)"
    return "the image's mean grey (the model file carries no normal films)"


def read_npz(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """The arrays of ``arrays.npz`` (its bytes ``data``, read from ``path``); ModelFileError (one line) if damaged,
    over the caps or not plain numbers."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            _check_npz_directory(inner, path)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ModelFileError(f"{path}: {ARRAYS} is damaged ({first_line(exc)})") from exc
    except MemoryError as exc:  # the checks above make this unreachable for a file within the caps
        raise ModelFileError(f"{path}: not enough memory to load {ARRAYS}") from exc
    except ValueError as exc:  # e.g. an object array, which would need unpickling
        raise ModelFileError(f"{path}: {ARRAYS} refused: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (200 characters at most), or its type's name."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _check_npz_directory(inner: zipfile.ZipFile, path: Path) -> None:
    """Every member of arrays.npz: unique, a ``.npy`` whose header declares a numeric array within the element and
    byte caps, and whose declared uncompressed size is that header plus exactly the array's bytes."""
    names = inner.namelist()
    if dup := duplicate(names):
        raise ModelFileError(f"{path}: {ARRAYS} holds {dup} twice (damaged, or not a Pneumo model file)")
    total = 0
    for info in inner.infolist():
        if not info.filename.endswith(".npy"):
            raise ModelFileError(f"{path}: {ARRAYS} holds {info.filename!r}, which is not a .npy array")
        with inner.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read(f, max_header_size=10_000)
            except ValueError as exc:
                raise ModelFileError(
                    f"{path}: {ARRAYS}: {info.filename} has no valid .npy header ({first_line(exc)})"
                ) from exc
            header_len = f.tell()
        name = info.filename.removesuffix(".npy")
        count = math.prod(int(n) for n in shape)  # Python ints: 10**12 elements must not wrap around
        if dtype.kind not in _ARRAY_KINDS or dtype.hasobject:
            raise ModelFileError(f"{path}: {ARRAYS}: {name} has dtype {dtype}, not a numeric array")
        if count > MAX_ARRAY_ELEMENTS:
            raise ModelFileError(
                f"{path}: {ARRAYS}: {name} declares {count:,} elements {tuple(shape)}, over the limit of "
                f"{MAX_ARRAY_ELEMENTS:,} (damaged, or not a Pneumo model file)"
            )
        nbytes = count * dtype.itemsize
        total += nbytes
        if total > MAX_ARRAYS_BYTES:
            raise ModelFileError(f"{path}: {ARRAYS} declares over {MAX_ARRAYS_BYTES // 2**20} MB of arrays")
        if info.file_size != header_len + nbytes:
            raise ModelFileError(
                f"{path}: {ARRAYS}: {name} holds {info.file_size - header_len:,} bytes of data where its header "
                f"declares {nbytes:,} (damaged)"
            )


def duplicate(names: list[str]) -> str | None:
    """The first name that occurs twice in ``names``, if any."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def check_arrays(arrays: dict[str, np.ndarray], meta: ModelMeta, source: str | Path) -> None:
    """ModelFileError (one line) unless the side arrays are what ``meta``'s domain guard reads: every array
    present, finite, of consistent shapes (k components of D features), scales and variances positive. A
    missing or infinite ``domain_scale`` would not fail loudly: it would switch the guard off."""
    for name, a in arrays.items():
        if a.dtype.kind not in _ARRAY_KINDS or not np.all(np.isfinite(a)):
            raise ModelFileError(f"{source}: {ARRAYS}: {name} holds values that are not finite numbers")
    if (ref := arrays.get(OCCLUSION_REFERENCE)) is not None:
        size = meta.preprocessing.image_size
        if ref.ndim != 3 or not 1 <= len(ref) <= 16 or ref.shape[1:] != (size, size) or ref.dtype.kind != "f":
            raise ModelFileError(
                f"{source}: {ARRAYS}: {OCCLUSION_REFERENCE} has shape {'x'.join(map(str, ref.shape)) or 'scalar'} "
                f"({ref.dtype}), not K x {size}x{size} floats, K 1 to 16 (the input size; damaged model file)"
            )
    if (drawn := arrays.get(OCCLUSION_DRAWN_FROM)) is not None and (
        drawn.ndim != 0 or drawn.dtype.kind not in "iu" or drawn < 2 or OCCLUSION_REFERENCE not in arrays
    ):
        raise ModelFileError(
            f"{source}: {ARRAYS}: {OCCLUSION_DRAWN_FROM} must be one integer of at least 2 beside "
            f"{OCCLUSION_REFERENCE} (damaged model file)"
        )
    if (field := arrays.get(LUNG_FIELD)) is not None:
        size = meta.preprocessing.image_size
        if field.shape != (size, size) or field.dtype.kind != "f" or field.min() < 0 or field.max() > 1:
            raise ModelFileError(
                f"{source}: {ARRAYS}: {LUNG_FIELD} has shape {'x'.join(map(str, field.shape)) or 'scalar'} "
                f"({field.dtype}), not {size}x{size} floats in [0, 1] (the input size; damaged model file)"
            )
    guard = meta.domain_guard
    if guard is None:
        return
    wanted = dict(GUARD_ARRAYS)
    if any(k in arrays for k in _GUARD_SCALING):
        wanted.update(_GUARD_SCALING)
    missing = [k for k in wanted if k not in arrays]
    if missing:
        raise ModelFileError(
            f"{source}: the domain guard needs {ARRAYS} entry {missing[0]!r}, which is missing (damaged model file)"
        )
    dims = {"k": guard.components, "2": 2, "D": arrays["domain_mean"].shape[0] if arrays["domain_mean"].ndim else -1}
    for name, axes in wanted.items():
        shape = arrays[name].shape
        expected = tuple(dims.get(a, shape[i] if i < len(shape) else -1) for i, a in enumerate(axes))
        if shape != expected or 0 in shape:
            want = "x".join(str(dims.get(a, a)) for a in axes)
            raise ModelFileError(
                f"{source}: {ARRAYS}: {name} has shape {'x'.join(map(str, shape)) or 'scalar'}, not {want} "
                f"(domain guard of {guard.components} components; damaged model file)"
            )
    for name in _POSITIVE:
        if name in arrays and not np.all(arrays[name] > 0):
            raise ModelFileError(f"{source}: {ARRAYS}: {name} must be positive (damaged model file)")
