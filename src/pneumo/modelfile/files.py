"""Reading and writing model files (``*.pneumo``) and site files: zip archives that need no unpickling to load.

- ``meta.json``          -- :class:`~pneumo.modelfile.meta.ModelMeta`: architecture, preprocessing, classes,
                            threshold, temperature, validation metrics, data summary, domain-guard cut-off
- ``model.onnx``         -- the exported graph (inputs ``image`` N x 1 x H x W float32; outputs ``logits`` N x C
                            and ``features`` N x D, then ``subtype_logits`` N x 3 with a subtype head, and last
                            ``cam`` N x h x w, the heat map, where the architecture allows); what predict, serve
                            and explain run
- ``weights.safetensors`` -- the PyTorch twin's weights; what export (and Grad-CAM for graphs without ``cam``) need
- ``arrays.npz``         -- numeric side data (domain-guard statistics), loaded with ``allow_pickle=False``

Nothing here imports torch: the inference path reads these files with the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from pneumo.atomic import atomic_open
from pneumo.errors import ModelFileError
from pneumo.modelfile.arrays import check_arrays, duplicate, read_npz
from pneumo.modelfile.meta import (
    ARRAYS,
    BASE,
    FORMAT_VERSION,
    META,
    ONNX,
    SITE,
    SUFFIX,
    WEIGHTS,
    ModelMeta,
    SiteCalibration,
)


class ModelFile(BaseModel):
    """A loaded model file: metadata plus the raw bytes of its parts."""

    model_config = {"arbitrary_types_allowed": True}

    meta: ModelMeta
    onnx: bytes | None = None
    weights: bytes | None = None
    arrays: dict[str, np.ndarray] = Field(default_factory=dict)
    path: Path | None = None


def save_model_file(path: str | Path, model: ModelFile) -> Path:
    """Write ``model`` to ``path`` atomically (a partially written model file is never left behind)."""
    path = Path(path)
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(META, model.meta.model_dump_json(indent=2))
        if model.onnx is not None:
            zf.writestr(ONNX, model.onnx)
        if model.weights is not None:
            zf.writestr(WEIGHTS, model.weights)
        if model.arrays:
            buf = io.BytesIO()
            np.savez(buf, **model.arrays)
            zf.writestr(ARRAYS, buf.getvalue())
    return path


def resolve_model_path(model: str | Path | None) -> Path:
    """A model file, a run directory holding ``model.pneumo``, or ``None`` for the bundled default model."""
    if model is None:
        return bundled_model_path()
    p = Path(model)
    if p.is_dir():
        candidate = p / f"model{SUFFIX}"
        if not candidate.is_file():
            raise ModelFileError(f"{p}: no model{SUFFIX} in this run directory (has training finished?)")
        return candidate
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file")
    return p


def bundled_model_path() -> Path:
    """The default model shipped inside the package."""
    p = Path(__file__).parents[1] / "assets" / f"default{SUFFIX}"
    if not p.is_file():
        raise ModelFileError(f"{p}: the bundled default model is missing from this installation; pass --model")
    return p


def load_model_file(model: str | Path | None = None, *, parts: tuple[str, ...] = ("onnx", "weights")) -> ModelFile:
    """Load a model file (see :func:`resolve_model_path`); ``parts`` limits which large members are read."""
    path = resolve_model_path(model)
    try:
        with zipfile.ZipFile(path) as zf:
            if META not in zf.namelist() and SITE in zf.namelist():
                return _read_site_file(zf, path, parts)
            mf = _read_members(zf, path, parts)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ModelFileError(f"{path}: not a Pneumo model file or damaged ({exc})") from exc
    except ValidationError as exc:  # pydantic validation of meta.json: name the first bad field and why
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "meta.json"
        raise ModelFileError(
            f"{path}: invalid model metadata: {where}: {err['msg']} (got {err.get('input')!r:.40})"
        ) from exc
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid model metadata: {exc}".splitlines()[0]) from exc
    return mf


def _read_members(zf: zipfile.ZipFile, path: Path, parts: tuple[str, ...]) -> ModelFile:
    if dup := duplicate(zf.namelist()):  # zipfile would silently read the last of two entries with one name
        raise ModelFileError(f"{path}: holds {dup} twice (damaged, or not a Pneumo model file)")
    names = set(zf.namelist())
    if META not in names:
        raise ModelFileError(f"{path}: not a Pneumo model file (no {META})")
    meta = ModelMeta.model_validate_json(_read_member(zf, META, path))
    if meta.format_version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: made by a newer Pneumo (format {meta.format_version}); upgrade pneumo")
    onnx = _read_member(zf, ONNX, path) if "onnx" in parts and ONNX in names else None
    weights = _read_member(zf, WEIGHTS, path) if "weights" in parts and WEIGHTS in names else None
    arrays = read_npz(_read_member(zf, ARRAYS, path), path) if ARRAYS in names else {}
    check_arrays(arrays, meta, path)
    return ModelFile(meta=meta, onnx=onnx, weights=weights, arrays=arrays, path=path)


def _read_site_file(zf: zipfile.ZipFile, path: Path, parts: tuple[str, ...]) -> ModelFile:
    """The base model with the site's calibration in force; refused unless the base is byte for byte the one the
    calibration was fitted on (a calibration is only valid for the network it was measured with)."""
    if dup := duplicate(zf.namelist()):
        raise ModelFileError(f"{path}: holds {dup} twice (damaged, or not a Pneumo model file)")
    site = SiteCalibration.model_validate_json(_read_member(zf, SITE, path))
    if site.format_version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: made by a newer Pneumo (format {site.format_version}); upgrade pneumo")
    if BASE not in zf.namelist():
        raise ModelFileError(f"{path}: a site file without its base model ({BASE})")
    data = _read_member(zf, BASE, path)
    digest = hashlib.sha256(data).hexdigest()
    if digest != site.base.sha256:
        raise ModelFileError(
            f"{path}: refused: its base model (SHA-256 {digest[:16]}...) is not the one the site calibration was "
            f"fitted on ({site.base.sha256[:16]}..., {site.base.name} {site.base.version}); run `pneumo adapt` again"
        )
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        base = _read_members(inner, path, parts)
    if base.meta.site is not None:
        raise ModelFileError(f"{path}: the base model of a site file cannot itself carry a site calibration")
    in_force = {k: getattr(site, k) for k in ("temperature", "calibration_bias", "threshold", "target_sensitivity")}
    meta = ModelMeta.model_validate({**base.meta.model_dump(), **in_force, "site": site.model_dump()})
    return base.model_copy(update={"meta": meta})


def save_site_file(path: str | Path, site: SiteCalibration, base: bytes) -> Path:
    """Write a site file: ``site.json`` and the base model file's bytes, untouched (stored, not recompressed)."""
    if hashlib.sha256(base).hexdigest() != site.base.sha256:
        raise ValueError("the base model bytes do not match site.base.sha256")
    path = Path(path)
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w") as zf:
        zf.writestr(SITE, site.model_dump_json(indent=2), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr(BASE, base, compress_type=zipfile.ZIP_STORED)
    return path


def base_model_bytes(path: str | Path) -> bytes:
    """The bytes of the base model behind ``path``: a site file's embedded base, else the file itself."""
    path = resolve_model_path(path)
    with zipfile.ZipFile(path) as zf:
        if META not in zf.namelist() and SITE in zf.namelist():
            return zf.read(BASE)
    return path.read_bytes()


# Largest uncompressed size accepted per member, read from the zip directory before anything is inflated: the
# largest network here (DenseNet-121) is ~30 MB as ONNX and as safetensors, so these leave ample room while a
# 4.5 MB file that inflates to 4 GiB is refused in a millisecond. (zipfile never inflates past the declared size.)
MAX_MEMBER_BYTES: dict[str, int] = {
    META: 16 * 2**20,
    SITE: 16 * 2**20,
    ONNX: 1 * 2**30,
    WEIGHTS: 1 * 2**30,
    ARRAYS: 256 * 2**20,
    BASE: 2 * 2**30,
}


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """``zf.read(name)``, refused with one line when the zip directory declares more than the member's cap."""
    size, cap = zf.getinfo(name).file_size, MAX_MEMBER_BYTES[name]
    if size > cap:
        raise ModelFileError(
            f"{path}: {name} declares {size / 2**20:,.0f} MB uncompressed, over the limit of {cap / 2**20:,.0f} MB "
            "(damaged, or not a Pneumo model file)"
        )
    try:
        return zf.read(name)
    except MemoryError as exc:
        raise ModelFileError(f"{path}: not enough memory to read {name} ({size / 2**20:,.0f} MB)") from exc


def read_meta(model: str | Path | None = None) -> ModelMeta:
    """Only the metadata of a model file."""
    return load_model_file(model, parts=()).meta
