"""The model file's metadata (``meta.json``): :class:`ModelMeta` and its typed parts, the site calibration and the
INT8 figures, and the JSON views of it a server gives out. Every number is checked as it is read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, model_validator

from pneumo._version import __version__
from pneumo.choices import DEFAULT_IMAGE_SIZE
from pneumo.labels import TASK_CLASSES
from pneumo.modelfile.card import figures_lines
from pneumo.modelfile.validation import Validation, measured_on_label

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
    """An interval as a site file stores it: the schema, checked on load, of what
    :meth:`pneumo.evaluation.intervals.Interval.as_json` writes (the computing type lives there; the inference path
    reads files without importing evaluation code)."""

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
    validation: Validation = Field(default_factory=Validation, description="metrics measured on validation")
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

    def lung_field(self) -> float | None:
        """The atlas share above which the network sees the image (``lung_field`` of the training config: the rest
        is mean grey, or its block means with ``arch_kwargs["field_blur"]``, inside the graph); None when it sees the
        whole frame."""
        value = (self.training.get("config") or {}).get("lung_field")
        return None if value is None else float(value)

    def figures_summary(self) -> list[str]:
        """The validation figures in words, each labelled with what it was measured on (for ``pneumo info``)."""
        heading = f"{self.name} {self.version}: threshold {self.threshold:.4f}"
        return figures_lines(self.validation, heading, self.site is not None)


def meta_json(meta: ModelMeta) -> dict[str, Any]:
    """The metadata as plain JSON-able data (for the REST API and reports)."""
    return json.loads(meta.model_dump_json())


# Config fields that hold paths of the training machine: a model file records their last part only.
PATH_FIELDS = ("data_dir", "out", "cache_dir", "split_csv")


# The same in the config's ``augment`` mapping.
AUGMENT_PATH_FIELDS = ("lung_atlas",)


def _names(mapping: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: (Path(v).name if k in fields and isinstance(v, str) and v else v) for k, v in mapping.items()}


def without_paths(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every path of :data:`PATH_FIELDS` (and of :data:`AUGMENT_PATH_FIELDS` in its ``augment``)
    cut to its last part (a folder or file name)."""
    out = _names(config, PATH_FIELDS)
    if isinstance(out.get("augment"), dict):
        out["augment"] = _names(out["augment"], AUGMENT_PATH_FIELDS)
    return out


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
    if isinstance(meta.validation.measured_on, str):
        out["validation"]["measured_on"] = measured_on_label(meta.validation.measured_on)
    return out
