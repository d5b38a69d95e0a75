"""Self-describing model files.

A model file (``*.pneumo``) is a zip archive that needs no unpickling to load:

- ``meta.json``          -- :class:`ModelMeta`: architecture, preprocessing, classes, threshold, temperature,
                            validation metrics, data summary, domain-guard cut-off
- ``model.onnx``         -- the exported graph (inputs ``image`` N x 1 x H x W float32; outputs ``logits`` N x C
                            and ``features`` N x D); what predict and serve run
- ``weights.safetensors`` -- the PyTorch twin's weights; what explain (Grad-CAM) and export need
- ``arrays.npz``         -- numeric side data (domain-guard statistics), loaded with ``allow_pickle=False``

Nothing here imports torch: the inference path reads these files with the standard library and numpy.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from pneumo import __version__
from pneumo.atomic import atomic_open

FORMAT_VERSION = 1
META = "meta.json"
ONNX = "model.onnx"
WEIGHTS = "weights.safetensors"
ARRAYS = "arrays.npz"
SUFFIX = ".pneumo"

TASK_CLASSES: dict[str, list[str]] = {
    "binary": ["NORMAL", "PNEUMONIA"],
    "subtype": ["NORMAL", "BACTERIA", "VIRUS"],
}


class ModelFileError(Exception):
    """A model file is missing, unreadable or not a Pneumo model."""


# Every number read from meta.json is checked: a NaN threshold or a zero std would not fail loudly, it would
# turn every result into NORMAL (the unsafe direction). pydantic refuses NaN and infinity with allow_inf_nan=False.
Finite = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
ContentScale = Annotated[float, Field(ge=0.5, le=2.0, allow_inf_nan=False)]
MIN_INPUT, MAX_INPUT = 16, 1024  # pixels: below, no architecture here has a spatial map left; above, no CPU budget


class Preprocessing(BaseModel):
    """How a decoded grayscale image in [0, 1] becomes the network's input (see :mod:`pneumo.preprocess`)."""

    image_size: int = Field(default=224, ge=MIN_INPUT, le=MAX_INPUT)
    normalization: Literal["none", "equalize"] = "equalize"
    mean: Finite = 0.5
    std: Annotated[float, Field(ge=1e-3, allow_inf_nan=False)] = 0.25
    tta: list[ContentScale] = Field(
        default_factory=list,
        max_length=8,
        description="content scales whose logits are averaged at prediction (padded when < 1); empty: none",
    )


class DomainGuard(BaseModel):
    """Mahalanobis distance in a PCA subspace of the network's pooled features (arrays live in ``arrays.npz``)."""

    method: Literal["mahalanobis-pca"] = "mahalanobis-pca"
    components: int = Field(ge=1)
    cutoff: Positive
    quantile: Probability = Field(description="validation quantile the cut-off was set at")
    validation_flag_rate: Probability


class ModelMeta(BaseModel):
    """Everything needed to use a model correctly, stored beside its weights."""

    format_version: int = FORMAT_VERSION
    name: str = "pneumo-model"
    version: str = "0.0.0"
    pneumo_version: str = __version__
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    task: Literal["binary", "subtype"] = "binary"
    class_names: list[str] = Field(default_factory=lambda: list(TASK_CLASSES["binary"]))
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    temperature: Annotated[float, Field(ge=1e-2, le=1e2, allow_inf_nan=False)] = 1.0
    calibration_bias: Finite = Field(default=0.0, description="added to the pneumonia log-odds after 1/temperature")
    threshold: Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)] = 0.5
    target_sensitivity: Probability = 0.98
    params: int = 0
    feature_dim: int = 0
    validation: dict[str, Any] = Field(default_factory=dict, description="metrics measured on validation")
    data: dict[str, Any] = Field(default_factory=dict, description="what the model was trained and validated on")
    training: dict[str, Any] = Field(default_factory=dict, description="resolved training config and timings")
    domain_guard: DomainGuard | None = None
    members: list[str] = Field(default_factory=list, description="ensemble members' names, if an ensemble")

    @property
    def has_subtypes(self) -> bool:
        return self.task == "subtype" or bool(self.arch_kwargs.get("subtype_head"))


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
    p = Path(__file__).parent / "assets" / f"default{SUFFIX}"
    if not p.is_file():
        raise ModelFileError(f"{p}: the bundled default model is missing from this installation; pass --model")
    return p


def load_model_file(model: str | Path | None = None, *, parts: tuple[str, ...] = ("onnx", "weights")) -> ModelFile:
    """Load a model file (see :func:`resolve_model_path`); ``parts`` limits which large members are read."""
    path = resolve_model_path(model)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if META not in names:
                raise ModelFileError(f"{path}: not a Pneumo model file (no {META})")
            meta = ModelMeta.model_validate_json(zf.read(META))
            onnx = zf.read(ONNX) if "onnx" in parts and ONNX in names else None
            weights = zf.read(WEIGHTS) if "weights" in parts and WEIGHTS in names else None
            arrays = _read_arrays(zf, path) if ARRAYS in names else {}
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
    if meta.format_version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: made by a newer Pneumo (format {meta.format_version}); upgrade pneumo")
    return ModelFile(meta=meta, onnx=onnx, weights=weights, arrays=arrays, path=path)


def _read_arrays(zf: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(zf.read(ARRAYS)), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as exc:  # e.g. an object array, which would need unpickling
        raise ModelFileError(f"{path}: {ARRAYS} refused: {exc}".splitlines()[0]) from exc


def read_meta(model: str | Path | None = None) -> ModelMeta:
    """Only the metadata of a model file."""
    return load_model_file(model, parts=()).meta


def meta_json(meta: ModelMeta) -> dict[str, Any]:
    """The metadata as plain JSON-able data (for the REST API and reports)."""
    return json.loads(meta.model_dump_json())
