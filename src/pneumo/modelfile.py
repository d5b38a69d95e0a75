"""Self-describing model files.

A model file (``*.pneumo``) is a zip archive that needs no unpickling to load:

- ``meta.json``          -- :class:`ModelMeta`: architecture, preprocessing, classes, threshold, temperature,
                            validation metrics, data summary, domain-guard cut-off
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
import json
import math
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AliasChoices, BaseModel, Field, ValidationError, model_validator

from pneumo._version import __version__
from pneumo.atomic import atomic_open
from pneumo.errors import ModelFileError
from pneumo.labels import TASK_CLASSES

FORMAT_VERSION = 1
META = "meta.json"
ONNX = "model.onnx"
WEIGHTS = "weights.safetensors"
ARRAYS = "arrays.npz"
SUFFIX = ".pneumo"
# A site file (``pneumo adapt``) is a zip of ``site.json`` and the base model file, stored byte for byte.
SITE = "site.json"
BASE = "base.pneumo"


# Every number read from meta.json is checked: a NaN threshold or a zero std would not fail loudly, it would
# turn every result into NORMAL (the unsafe direction). pydantic refuses NaN and infinity with allow_inf_nan=False.
Finite = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
ContentScale = Annotated[float, Field(ge=0.5, le=2.0, allow_inf_nan=False)]
MIN_INPUT, MAX_INPUT = 16, 1024  # pixels: below, no architecture here has a spatial map left; above, no CPU budget
# The input size a model is trained at unless told otherwise (``TrainConfig.image_size``), and what a model file's
# preprocessing says when it names none; files written by save_model_file always name theirs.
DEFAULT_IMAGE_SIZE = 128


class Preprocessing(BaseModel):
    """How a decoded grayscale image in [0, 1] becomes the network's input (see :mod:`pneumo.preprocess`)."""

    image_size: int = Field(default=DEFAULT_IMAGE_SIZE, ge=MIN_INPUT, le=MAX_INPUT)
    normalization: Literal["none", "equalize"] = "equalize"
    mean: Finite = 0.5
    std: Annotated[float, Field(ge=1e-3, allow_inf_nan=False)] = 0.25
    content_scales: list[ContentScale] = Field(
        validation_alias=AliasChoices("content_scales", "tta"),  # "tta" in files made before the rename
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
    pediatric: DomainGuard | None = Field(
        default=None,
        description="the 'not a pediatric chest X-ray' guard (arrays pediatric_*), fitted under the framing shifts; "
        "None in files made before it: this guard's flag then means not pediatric (pneumo.domain)",
    )


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Temperature = Annotated[float, Field(ge=1e-2, le=1e2, allow_inf_nan=False)]
Threshold = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]


class SiteBase(BaseModel):
    """The model a site calibration was fitted for, and the calibration it shipped with."""

    name: str
    version: str
    file: str = Field(description="file name of the base model when the site file was made")
    sha256: Sha256 = Field(description="SHA-256 of the base model file, checked on every load")
    temperature: Temperature
    calibration_bias: Finite
    threshold: Threshold


class SiteSample(BaseModel):
    """The labelled sample the site calibration was fitted on."""

    folder: str
    n: Annotated[int, Field(ge=2)]
    n_normal: Annotated[int, Field(ge=1)]
    n_pneumonia: Annotated[int, Field(ge=1)]
    n_patients: Annotated[int, Field(ge=2)]
    unreadable: Count = 0
    out_of_domain: Count = 0
    patients_from: str = Field(default="file names", description="where the patient ids came from")


class Interval(BaseModel):
    value: Probability
    lo: Probability
    hi: Probability


class SiteFigures(BaseModel):
    """Cross-validated figures on the site sample: k-fold by patient, calibration and threshold (and band) fitted
    on k-1 folds and measured on the held-out one; patient-level bootstrap 95 % intervals."""

    folds: Annotated[int, Field(ge=2)]
    sensitivity: Interval
    specificity: Interval
    ece: Interval
    roc_auc: Interval
    referred: Interval | None = None
    miss_rate: Interval | None = Field(default=None, description="with REFER: pneumonia cases called NORMAL")
    false_alarm_rate: Interval | None = Field(default=None, description="with REFER: normal cases called PNEUMONIA")


class ReferBand(BaseModel):
    """REFER when ``low <= probability <= high``: the band where the site data cannot back either decision."""

    low: Probability
    high: Probability
    max_error: Annotated[float, Field(gt=0.0, lt=0.5, allow_inf_nan=False)] = Field(
        description="bound on each confident decision's error rate among the cases of the other class"
    )
    method: Literal["class-conditional split conformal"] = "class-conditional split conformal"

    @model_validator(mode="after")
    def _ordered(self) -> ReferBand:
        if self.low > self.high:
            raise ValueError(f"refer band low {self.low} is above high {self.high}")
        return self


class SiteCalibration(BaseModel):
    """A site's own calibration, threshold and optional REFER band over an untouched base model, with provenance."""

    format_version: int = FORMAT_VERSION
    name: str = Field(description="the site, as given to pneumo adapt (default: the sample's folder name)")
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    pneumo_version: str = __version__
    base: SiteBase
    temperature: Temperature
    calibration_bias: Finite
    threshold: Threshold
    target_sensitivity: Probability
    refer: ReferBand | None = None
    sample: SiteSample
    cross_validated: SiteFigures
    warnings: list[str] = Field(default_factory=list)


class Quantization(BaseModel):
    """How an INT8 graph was made and what it measured against its fp32 source on the validation images
    (``pneumo export --int8``, :mod:`pneumo.quantize`)."""

    method: Literal["onnxruntime-static-qdq"] = "onnxruntime-static-qdq"
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_images: int = Field(ge=1)
    calibrated_on_validation: int = Field(
        default=0, ge=0, description="calibration images that are validation images too (no split CSV was given)"
    )
    validation_images: int = Field(ge=1)
    auc_fp32: Probability
    auc_int8: Probability
    auc_drop: Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
    agreement: Probability = Field(description="share of validation images with the same decision")
    flag_rate_fp32: Probability
    flag_rate_int8: Probability
    max_probability_change: Probability
    bounds: dict[str, Finite] = Field(default_factory=dict, description="the parity bounds it passed")
    source_onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the fp32 graph")


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
    precision: Literal["fp32", "int8"] = Field(default="fp32", description="number format of model.onnx")
    quantization: Quantization | None = Field(default=None, description="INT8 only: how it was made and checked")
    site: SiteCalibration | None = Field(default=None, description="the site calibration in force (pneumo adapt)")

    @model_validator(mode="after")
    def _site_in_force(self) -> ModelMeta:
        # A site section whose figures are not the ones in force would describe a calibration nobody runs.
        s = self.site
        if s is not None and (s.temperature, s.calibration_bias, s.threshold) != (
            self.temperature,
            self.calibration_bias,
            self.threshold,
        ):
            raise ValueError("site calibration differs from the temperature, bias and threshold in force")
        return self

    @model_validator(mode="after")
    def _precision_figures(self) -> ModelMeta:
        # An INT8 graph without its parity figures would be trusted on faith; an fp32 one with them, misdescribed.
        if (self.precision == "int8") != (self.quantization is not None):
            raise ValueError("precision int8 goes with quantization figures, and only int8 does")
        return self

    @property
    def has_subtypes(self) -> bool:
        return self.task == "subtype" or bool(self.arch_kwargs.get("subtype_head"))

    def figures_summary(self) -> list[str]:
        """The validation figures in words, each labelled with what it was measured on (for ``pneumo info``)."""
        v, lines = self.validation, [f"{self.name} {self.version}: threshold {self.threshold:.4f}"]
        where = measured_on_label(v.get("measured_on", "validation"))
        if "sensitivity" in v and "specificity" in v:
            lines.append(f"  sensitivity {v['sensitivity']:.3f}, specificity {v['specificity']:.3f} ({where})")
        lines += _block_lines(v.get("blocks"), where) + _lung_lines(v.get("lung_checks"))
        if (worst := v.get("geometry_shift", {}).get("worst")) is not None:
            shifts = ", ".join(k for k in v["geometry_shift"] if k != "worst")
            lines.append(
                f"  worst case under framing shift: sensitivity {worst['sensitivity']:.3f}, specificity "
                f"{worst['specificity']:.3f}, ROC AUC {worst['roc_auc']:.3f} (validation under {shifts})"
            )
        if "bacterial_vs_viral_accuracy" in v:
            line = f"  bacterial vs viral {v['bacterial_vs_viral_accuracy']:.3f} ({where}"
            if worst is not None and "bacterial_vs_viral" in worst:
                line += (f"; worst under framing shift {worst['bacterial_vs_viral']:.3f}, "
                         f"{worst['subtype_flipped']:.1%} of calls flipped")  # fmt: skip
            lines.append(line + "); indicative only")
        lines += _operating_point_lines(v.get("operating_point"), where, self.site is not None)
        if (line := _border_hidden_line(v, where)) is not None:
            lines.append(line)
        lines.append("  expect lower figures on X-rays from other sites or periods")
        return lines


def _block_lines(blocks: Any, where: str) -> list[str]:
    """The worst held-out acquisition block's specificity and sensitivity (a block split's validation)."""
    if not isinstance(blocks, dict):
        return []
    lines = []
    for rate in ("specificity", "sensitivity"):
        w = blocks.get(f"worst_{rate}")
        if isinstance(w, dict) and {"value", "block", "n"} <= w.keys():
            lines.append(f"  worst held-out acquisition block: {rate} {w['value']:.3f} ({w['block']}, {w['n']} images; "
                         f"{where})")  # fmt: skip
    return lines


def _lung_lines(checks: Any) -> list[str]:
    """The lung checks: ROC AUC with the lungs hidden and with only the lungs shown, per set they were measured on.
    A model that reads the lungs loses its AUC with them hidden and keeps it with only them shown."""
    if not isinstance(checks, dict):
        return []
    lines = []
    for on, c in checks.items():
        if isinstance(c, dict) and {"clean", "lungs_hidden", "only_lungs"} <= c.keys():
            lines.append(f"  ROC AUC with the lungs hidden {c['lungs_hidden']:.3f}, with only the lungs shown "
                         f"{c['only_lungs']:.3f}, clean {c['clean']:.3f} ({on}; reported, never part of the worst "
                         f"case)")  # fmt: skip
    return lines


# The check of pneumo.evaluation.shifts.TRAINING_CHECKS that hides the image border (a name, not an import: the
# inference
# path does not load the perturbation suite); tests/test_modelfile.py checks that the suite still has it.
BORDER_HIDDEN_CHECK = "border masked 15%"
_CONDITION_WORDS = {"clean": "clean validation"}
_WORST_KEYS = ("sensitivity", "sensitivity_of", "specificity", "specificity_of")


def _rule_words(name: str, op: dict) -> str:
    """How a threshold rule chose its threshold, in words."""
    sens, spec = op.get("target_sensitivity"), op.get("target_specificity")
    if name == "worst_case" and isinstance(sens, float | int) and isinstance(spec, float | int):
        return (f"the worst-case rule (the largest margin to sensitivity {sens:.2f} / specificity {spec:.2f} in the "
                f"worst framing condition)")  # fmt: skip
    if name == "pooled" and isinstance(sens, float | int):
        return (f"the pooled rule (the highest threshold with sensitivity {sens:.2f} on validation pooled with its "
                f"checked copies)")  # fmt: skip
    return f"the {name.replace('_', '-')} rule"


def _rule_figures(rule: dict, where: str) -> str | None:
    """A rule's sensitivity / specificity in the worst framing condition (naming it) and on validation pooled with
    its checked copies; None unless all of them are recorded."""
    worst, pooled = rule.get("worst_framing"), rule.get("pooled")
    if not (isinstance(worst, dict) and set(_WORST_KEYS) <= worst.keys()):
        return None
    if not (isinstance(pooled, dict) and {"sensitivity", "specificity"} <= pooled.keys()):
        return None
    of_sens, of_spec = (_CONDITION_WORDS.get(worst[k], worst[k]) for k in ("sensitivity_of", "specificity_of"))
    at_worst = (
        f"sensitivity {worst['sensitivity']:.3f} / specificity {worst['specificity']:.3f} at worst ({of_sens})"
        if of_sens == of_spec
        else f"sensitivity {worst['sensitivity']:.3f} at worst ({of_sens}) / specificity "
        f"{worst['specificity']:.3f} at worst ({of_spec})"
    )
    return (
        f"{at_worst}; sensitivity {pooled['sensitivity']:.3f} / specificity {pooled['specificity']:.3f} on "
        f"validation pooled with its checked copies, {where}"
    )


def _operating_point_lines(op: Any, where: str, site_in_force: bool) -> list[str]:
    """The threshold rule in force and the other one, each with its operating point; none for model files made
    before both rules were recorded."""
    if not isinstance(op, dict) or not isinstance(op.get("rules"), dict) or op.get("rule") not in op["rules"]:
        return []
    in_force = "threshold rule in force"
    if site_in_force:
        in_force = "threshold rule as shipped (a site calibration now sets the threshold)"
    lines = []
    for name in sorted(op["rules"], key=lambda n: n != op["rule"]):  # the rule in force first
        rule = op["rules"][name]
        figures = _rule_figures(rule, where) if isinstance(rule, dict) else None
        if figures is None or not isinstance(rule.get("threshold"), float | int):
            continue
        said = f"threshold {rule['threshold']:.3f} by {_rule_words(name, op)}"
        lines.append(
            f"  {in_force}: {said}: {figures}"
            if name == op["rule"]
            else f"  the other rule, not in force: {said} would give {figures}"
        )
    return lines


def _border_hidden_line(v: dict, where: str) -> str | None:
    """The AUC with the image border hidden against the clean one: a model that reads the lungs keeps it."""
    hidden = v.get("geometry_shift", {}).get(BORDER_HIDDEN_CHECK)
    if not isinstance(hidden, dict) or "roc_auc" not in hidden:
        return None
    clean = f" against {v['roc_auc']:.3f} clean" if isinstance(v.get("roc_auc"), float | int) else ""
    return f"  ROC AUC with the image border hidden (outer 15 % flat grey): {hidden['roc_auc']:.3f}{clean} ({where})"


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
    if dup := _duplicate(zf.namelist()):  # zipfile would silently read the last of two entries with one name
        raise ModelFileError(f"{path}: holds {dup} twice (damaged, or not a Pneumo model file)")
    names = set(zf.namelist())
    if META not in names:
        raise ModelFileError(f"{path}: not a Pneumo model file (no {META})")
    meta = ModelMeta.model_validate_json(_read_member(zf, META, path))
    if meta.format_version > FORMAT_VERSION:
        raise ModelFileError(f"{path}: made by a newer Pneumo (format {meta.format_version}); upgrade pneumo")
    onnx = _read_member(zf, ONNX, path) if "onnx" in parts and ONNX in names else None
    weights = _read_member(zf, WEIGHTS, path) if "weights" in parts and WEIGHTS in names else None
    arrays = _read_arrays(zf, path) if ARRAYS in names else {}
    check_arrays(arrays, meta, path)
    return ModelFile(meta=meta, onnx=onnx, weights=weights, arrays=arrays, path=path)


def _read_site_file(zf: zipfile.ZipFile, path: Path, parts: tuple[str, ...]) -> ModelFile:
    """The base model with the site's calibration in force; refused unless the base is byte for byte the one the
    calibration was fitted on (a calibration is only valid for the network it was measured with)."""
    if dup := _duplicate(zf.namelist()):
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


def _read_arrays(zf: zipfile.ZipFile, path: Path) -> dict[str, np.ndarray]:
    data = _read_member(zf, ARRAYS, path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            _check_npz_directory(inner, path)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise ModelFileError(f"{path}: {ARRAYS} is damaged ({_first(exc)})") from exc
    except MemoryError as exc:  # the checks above make this unreachable for a file within the caps
        raise ModelFileError(f"{path}: not enough memory to load {ARRAYS}") from exc
    except ValueError as exc:  # e.g. an object array, which would need unpickling
        raise ModelFileError(f"{path}: {ARRAYS} refused: {_first(exc)}") from exc


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _check_npz_directory(inner: zipfile.ZipFile, path: Path) -> None:
    """Every member of arrays.npz: unique, a ``.npy`` whose header declares a numeric array within the element and
    byte caps, and whose declared uncompressed size is that header plus exactly the array's bytes."""
    names = inner.namelist()
    if dup := _duplicate(names):
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
                    f"{path}: {ARRAYS}: {info.filename} has no valid .npy header ({_first(exc)})"
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


def _duplicate(names: list[str]) -> str | None:
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


def check_graph(session: Any, meta: ModelMeta, source: str | Path) -> None:
    """ModelFileError unless the graph takes ``N x 1 x S x S`` images with S the metadata's image size (a dynamic
    axis passes) and gives ``logits`` and ``features``."""
    inputs = {i.name: i.shape for i in session.get_inputs()}
    size = meta.preprocessing.image_size
    shape = inputs.get("image")
    if shape is None or len(shape) != 4:
        raise ModelFileError(f"{source}: the graph has no N x C x H x W input named 'image' (damaged model file)")
    fixed = [d for d in shape[2:] if isinstance(d, int)]
    if any(d != size for d in fixed):
        raise ModelFileError(
            f"{source}: the graph takes {shape[2]}x{shape[3]} images but meta.json says {size}x{size} "
            "(preprocessing.image_size; damaged or mismatched model file)"
        )
    outputs = {o.name for o in session.get_outputs()}
    if not {"logits", "features"} <= outputs:
        raise ModelFileError(f"{source}: the graph lacks a 'logits' or 'features' output (damaged model file)")


def onnx_session(
    graph: bytes, *, source: str | Path = "model.onnx", threads: int | None = None, meta: ModelMeta | None = None
) -> Any:
    """The one place an ONNX Runtime CPU session is made; a graph ONNX Runtime cannot load is a one-line
    :class:`ModelFileError` naming ``source``, and with ``meta`` so is one whose input size or outputs do not
    match it (:func:`check_graph`)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad graph
        lines = str(exc).strip().splitlines()
        reason = lines[0][:200] if lines else type(exc).__name__
        raise ModelFileError(f"{source} is not a readable ONNX graph ({reason})") from exc
    if meta is not None:
        check_graph(session, meta, source)
    return session


# A bare ``.onnx`` (``pneumo export -o m.onnx``) carries the metadata and side arrays in the graph's metadata
# props, so the graph alone is enough for ``pneumo predict``.
ONNX_META, ONNX_ARRAYS = "pneumo_meta", "pneumo_arrays"


def save_onnx_file(path: str | Path, model: ModelFile) -> Path:
    """Write ``model``'s graph to a bare ``.onnx`` atomically, with its metadata and arrays embedded."""
    import onnx  # only export writes one; reading it back needs onnxruntime alone

    proto = onnx.load_from_string(model.onnx)
    onnx.helper.set_model_props(proto, {ONNX_META: model.meta.model_dump_json()})
    if model.arrays:
        proto.metadata_props.add(key=ONNX_ARRAYS, value=json.dumps({k: v.tolist() for k, v in model.arrays.items()}))
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def load_onnx_file(path: str | Path) -> ModelFile:
    """A bare ``.onnx`` written by :func:`save_onnx_file`; refused unless it carries Pneumo metadata."""
    path = Path(path)
    if (size := path.stat().st_size) > (cap := MAX_MEMBER_BYTES[ONNX]):
        raise ModelFileError(f"{path}: {size / 2**20:,.0f} MB, over the limit of {cap / 2**20:,.0f} MB for a model")
    data = path.read_bytes()
    props = onnx_session(data, source=path).get_modelmeta().custom_metadata_map
    if ONNX_META not in props:
        raise ModelFileError(f"{path}: an ONNX graph without Pneumo metadata; export it with `pneumo export`")
    try:
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in json.loads(props.get(ONNX_ARRAYS, "{}")).items()}
    except (ValueError, TypeError, AttributeError) as exc:  # ragged lists, text, a JSON that is not an object
        raise ModelFileError(f"{path}: its embedded arrays are damaged ({_first(exc)})") from exc
    meta = ModelMeta.model_validate_json(props[ONNX_META])
    check_arrays(arrays, meta, path)
    return ModelFile(meta=meta, onnx=data, arrays=arrays, path=path)


def read_meta(model: str | Path | None = None) -> ModelMeta:
    """Only the metadata of a model file."""
    return load_model_file(model, parts=()).meta


def meta_json(meta: ModelMeta) -> dict[str, Any]:
    """The metadata as plain JSON-able data (for the REST API and reports)."""
    return json.loads(meta.model_dump_json())


# Config fields that hold paths of the training machine: a model file records their last part only.
PATH_FIELDS = ("data_dir", "out", "cache_dir", "split_csv")


def without_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every path of :data:`PATH_FIELDS` cut to its last part (a folder or file name)."""
    return {k: (Path(v).name if k in PATH_FIELDS and isinstance(v, str) and v else v) for k, v in config.items()}


def public_meta_json(meta: ModelMeta) -> dict[str, Any]:
    """:func:`meta_json` without the training machine's paths, for anyone who asks a server: model files written
    before paths were left out still carry ``data.data_dir`` and the config's folders, and they stay readable."""
    out = meta_json(meta)
    data = out.get("data", {})
    if "data_dir" in data:
        data.setdefault("dataset", Path(data.pop("data_dir")).name)
    if isinstance(data.get("split"), str) and ("/" in data["split"] or "\\" in data["split"]):
        data["split"] = Path(data["split"]).name
    config = out.get("training", {}).get("config")
    if isinstance(config, dict):
        out["training"]["config"] = without_paths(config)
    validation = out.get("validation", {})
    if isinstance(validation.get("measured_on"), str):
        validation["measured_on"] = measured_on_label(validation["measured_on"])
    return out


def measured_on_label(where: str) -> str:
    """``"internal validation: /a/b/split.csv"`` (as older model files record it) -> ``"... : split.csv"``."""
    label, sep, split = where.partition(": ")
    return f"{label}{sep}{Path(split).name}" if sep and ("/" in split or "\\" in split) else where
