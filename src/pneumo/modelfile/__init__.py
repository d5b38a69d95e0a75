"""Self-describing model files: the metadata and its typed records (:mod:`.meta`, :mod:`.validation`), the model
card in words (:mod:`.card`), the zip files (:mod:`.files`), their side arrays (:mod:`.arrays`) and ONNX graphs
(:mod:`.graph`). Import from here: ``from pneumo.modelfile import load_model_file``."""

from pneumo.errors import ModelFileError
from pneumo.labels import TASK_CLASSES
from pneumo.modelfile.arrays import (
    GUARD_ARRAYS,
    LUNG_FIELD,
    OCCLUSION_DRAWN_FROM,
    OCCLUSION_REFERENCE,
    check_arrays,
    heat_map_filler,
)
from pneumo.modelfile.card import BORDER_HIDDEN_CHECK
from pneumo.modelfile.files import (
    MAX_MEMBER_BYTES,
    ModelFile,
    base_model_bytes,
    bundled_model_path,
    load_model_file,
    read_meta,
    resolve_model_path,
    save_model_file,
    save_site_file,
)
from pneumo.modelfile.graph import check_graph, load_onnx_file, onnx_session, save_onnx_file
from pneumo.modelfile.meta import (
    ARRAYS,
    BASE,
    DEFAULT_IMAGE_SIZE,
    FORMAT_VERSION,
    META,
    ONNX,
    SITE,
    SUFFIX,
    WEIGHTS,
    DomainGuard,
    Interval,
    ModelMeta,
    Preprocessing,
    Quantization,
    ReferBand,
    SiteBase,
    SiteCalibration,
    SiteFigures,
    SiteSample,
    meta_json,
    public_meta_json,
    without_paths,
)
from pneumo.modelfile.validation import VALIDATION_VERSION, Validation, measured_on_label

__all__ = [
    "ARRAYS", "BASE", "BORDER_HIDDEN_CHECK", "DEFAULT_IMAGE_SIZE", "FORMAT_VERSION", "GUARD_ARRAYS", "LUNG_FIELD",
    "MAX_MEMBER_BYTES", "META", "OCCLUSION_DRAWN_FROM", "OCCLUSION_REFERENCE", "ONNX", "SITE", "SUFFIX", "TASK_CLASSES",
    "VALIDATION_VERSION", "WEIGHTS", "DomainGuard", "Interval", "ModelFile", "ModelFileError", "ModelMeta",
    "Preprocessing", "Quantization", "ReferBand", "SiteBase", "SiteCalibration", "SiteFigures", "SiteSample",
    "Validation", "base_model_bytes", "bundled_model_path", "check_arrays", "check_graph", "heat_map_filler",
    "load_model_file", "load_onnx_file", "measured_on_label", "meta_json", "onnx_session", "public_meta_json",
    "read_meta", "resolve_model_path", "save_model_file", "save_onnx_file", "save_site_file", "without_paths",
]  # fmt: skip
