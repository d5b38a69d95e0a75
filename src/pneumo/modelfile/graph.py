"""The ONNX graph of a model file: the one place an ONNX Runtime session is made, the check that a graph fits its
metadata, and bare ``.onnx`` files that carry the metadata inside the graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.atomic import atomic_open
from pneumo.errors import ModelFileError
from pneumo.modelfile.arrays import check_arrays, first_line
from pneumo.modelfile.files import MAX_MEMBER_BYTES, ModelFile
from pneumo.modelfile.meta import ONNX, ModelMeta


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
        raise ModelFileError(f"{path}: its embedded arrays are damaged ({first_line(exc)})") from exc
    meta = ModelMeta.model_validate_json(props[ONNX_META])
    check_arrays(arrays, meta, path)
    return ModelFile(meta=meta, onnx=data, arrays=arrays, path=path)
