"""INT8 model files: a statically quantised QDQ graph (ONNX Runtime quantisation) that must keep the fp32
model's accuracy on its validation images, or it is not written.

Calibration runs the images of a folder through the model's own preprocessing, every test-time view included
(the views are what the graph sees at prediction), and never uses a validation image, so that parity is
measured on images the calibration has not seen; but without a split CSV, a folder whose images are all validation
images (a plain NORMAL/ PNEUMONIA/ folder) calibrates on them all the same, and :class:`Parity` says so. Weights
are quantised per channel to 7 bits (``reduce_range``): on x86 CPUs without VNNI, ONNX Runtime's u8 x s8 kernels
add pairs of products in 16 bits, which saturates with full 8-bit weights and cost this model 0.6 points of AUC
and the domain guard entirely.

Parity (:class:`ParityBounds`): on the validation images the ROC AUC may drop by at most 0.002, decisions at the
model's threshold must agree on at least 99 % of the images, and the domain guard's flag rate may move by at most
1 point, all measured on at least 100 readable validation images (the summary says how many). The figures go
into ``meta.quantization`` of the model file, whose ``precision`` is ``int8``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pneumo.atomic import write_bytes
from pneumo.errors import PneumoError
from pneumo.evaluation.metrics import binary_metrics
from pneumo.imaging import ImageLoadError
from pneumo.inference import Prediction, Predictor
from pneumo.inputs import ImageRecord, expand_inputs, scan_dataset, select_records
from pneumo.labels import BINARY_CLASSES
from pneumo.modelfile import Quantization, load_model_file, save_model_file

CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 32
PARITY_BATCH = 64
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


class QuantizationError(PneumoError, ValueError):
    """The INT8 graph cannot be made, or does not keep the model's accuracy; nothing was written."""


@dataclass(frozen=True)
class ParityBounds:
    """How far the INT8 graph may stray from the fp32 one on the validation images."""

    max_auc_drop: float = 0.002
    min_agreement: float = 0.99
    max_flag_rate_change: float = 0.01
    # Fewer images cannot show agreement at the 1 % level: 2 images "agree 100 %" and say nothing of the 2.5 % of
    # decisions that flipped on 80 others. 100 is the fewest where one flipped decision is one point.
    min_images: int = 100


@dataclass
class Parity:
    """fp32 against INT8 on the same validation images (readable by both)."""

    n: int
    auc_fp32: float
    auc_int8: float
    agreement: float
    flag_rate_fp32: float
    flag_rate_int8: float
    max_probability_change: float
    # Calibration images that are validation images too: 0 unless no split CSV told them apart (then the parity
    # figures are measured on images the calibration has seen).
    calibrated_on_validation: int = 0

    @property
    def auc_drop(self) -> float:
        return self.auc_fp32 - self.auc_int8

    @property
    def flag_rate_change(self) -> float:
        return abs(self.flag_rate_int8 - self.flag_rate_fp32)

    def failures(self, bounds: ParityBounds) -> list[str]:
        out = []
        if not self.auc_drop <= bounds.max_auc_drop:
            out.append(
                f"AUC drops by {self.auc_drop:.4f} ({self.auc_fp32:.4f} -> {self.auc_int8:.4f}; "
                f"at most {bounds.max_auc_drop:g})"
            )
        if not self.agreement >= bounds.min_agreement:
            out.append(f"decisions agree on {100 * self.agreement:.2f} % (at least {100 * bounds.min_agreement:g} %)")
        if not self.flag_rate_change <= bounds.max_flag_rate_change:
            out.append(
                f"the domain guard flags {100 * self.flag_rate_int8:.2f} % instead of "
                f"{100 * self.flag_rate_fp32:.2f} % (at most {100 * bounds.max_flag_rate_change:g} points)"
            )
        if self.n < bounds.min_images:
            out.append(
                f"parity was measured on {self.n} validation image{'s' if self.n != 1 else ''} only (at least "
                f"{bounds.min_images} are needed to show agreement at the 1 % level; give more with --validation-data)"
            )
        return out

    def calibration_note(self) -> str | None:
        """One line when the calibration used validation images (no split CSV told them apart), else None."""
        if not self.calibrated_on_validation:
            return None
        return (
            f"no split CSV tells the calibration images from the validation images: {self.calibrated_on_validation} "
            "validation images were calibrated on, so the parity figures are measured on images calibration has seen"
        )

    def summary(self) -> str:
        return (
            f"AUC {self.auc_fp32:.4f} -> {self.auc_int8:.4f} (drop {self.auc_drop:+.4f}), decisions agree on "
            f"{100 * self.agreement:.2f} %, domain flags {100 * self.flag_rate_fp32:.2f} % -> "
            f"{100 * self.flag_rate_int8:.2f} %, on {self.n} validation images"
        )


# ---------------------------------------------------------------------------------------------------- the images


def validation_records(data_dir: Path, split_csv: Path | None) -> list[ImageRecord]:
    """The model's validation images: the ``val`` rows of a split CSV, the ``val`` level of a dataset root, or
    every image of a labelled folder."""
    if split_csv is not None:
        recs, _ = select_records(data_dir, "val", split_csv)
    elif any(s == "val" for s in scan_dataset(data_dir).splits):
        recs, _ = select_records(data_dir, "val")
    else:
        recs, _ = select_records(data_dir)
    labels = {r.label for r in recs}
    if labels != set(BINARY_CLASSES):
        raise QuantizationError(
            f"{data_dir}: parity needs labelled NORMAL and PNEUMONIA validation images (found {sorted(labels)})"
        )
    return recs


def calibration_paths(
    folder: Path, exclude: set[Path], count: int, seed: int = 0, *, fall_back: bool = False
) -> list[Path]:
    """Up to ``count`` images of ``folder`` (recursive), none of them in ``exclude``, drawn reproducibly. With
    ``fall_back``, when every image is in ``exclude`` they are drawn from all of them instead of refused."""
    files, _ = expand_inputs([str(folder)])
    if not files:
        raise QuantizationError(f"{folder}: no calibration images in it")
    pool = [f for f in files if f.resolve() not in exclude]
    if not pool and not fall_back:
        raise QuantizationError(f"{folder}: no calibration images outside the validation images")
    pool = pool or files
    if len(pool) > count:
        keep = np.sort(np.random.default_rng(seed).choice(len(pool), count, replace=False))
        pool = [pool[i] for i in keep]
    return pool


def _views(predictor: Predictor, paths: Sequence[Path]) -> np.ndarray:
    """Readable images of ``paths`` as the network's inputs, one row per test-time view: (N * V) x 1 x H x W."""
    prepared = []
    for p in paths:
        try:
            prepared.append(predictor.prepare(p))
        except ImageLoadError:
            continue  # an unreadable calibration image teaches nothing; the rest still calibrate
    if not prepared:
        return np.zeros((0, 1, predictor.size, predictor.size), dtype=np.float32)
    x = np.stack(prepared)
    return x.reshape(-1, 1, *x.shape[2:])


def _reader(predictor: Predictor, paths: Sequence[Path]):
    """A CalibrationDataReader that decodes lazily, a batch at a time (the calibrator keeps only statistics)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (
                b
                for i in range(0, len(paths), CALIBRATION_BATCH)
                if len(b := _views(predictor, paths[i : i + CALIBRATION_BATCH]))
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    return _Reader()


# ---------------------------------------------------------------------------------------------------- the graph


def _feature_only_nodes(model) -> list[str]:
    """Nodes that only the ``features`` output depends on (the domain guard's mean / std statistics): left in
    float, because their small per-channel differences are what the guard's Mahalanobis distance magnifies."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def ancestors(name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            stack.extend(node.input)
        return seen

    others: set[str] = set()
    for out in model.graph.output:
        if out.name != "features":
            others |= ancestors(out.name)
    return sorted(ancestors("features") - others)


def quantize_graph(onnx_bytes: bytes, predictor: Predictor, paths: Sequence[Path], method: str = "minmax") -> bytes:
    """The static QDQ INT8 graph of ``onnx_bytes``, calibrated on ``paths`` through the model's preprocessing."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise QuantizationError(f"calibration method {method!r}: one of {', '.join(CALIBRATION_METHODS)}")
    with tempfile.TemporaryDirectory(prefix="pneumo-int8-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_bytes)
        quant_pre_process(str(src), str(pre))  # shape inference and graph optimisation, as the docs advise
        exclude = _feature_only_nodes(onnx.load(str(pre)))
        quantize_static(
            str(pre),
            str(dst),
            _reader(predictor, paths),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            nodes_to_exclude=exclude,
        )
        return dst.read_bytes()


# ---------------------------------------------------------------------------------------------------- parity


def measure_parity(fp32: Predictor, int8: Predictor, paths: Sequence[Path], labels: np.ndarray) -> Parity:
    """Both graphs on the same decoded validation images (decoded once, a batch at a time)."""
    p32: list[Prediction] = []
    p8: list[Prediction] = []
    keep: list[int] = []
    for start in range(0, len(paths), PARITY_BATCH):
        prepared, idx = [], []
        for i in range(start, min(start + PARITY_BATCH, len(paths))):
            try:
                prepared.append(fp32.prepare(paths[i]))
                idx.append(i)
            except ImageLoadError:
                continue
        if not prepared:
            continue
        x = np.stack(prepared)
        names = [str(paths[i]) for i in idx]
        p32 += fp32.predict_prepared(x, names)
        p8 += int8.predict_prepared(x, names)
        keep += idx
    ok = [j for j, (a, b) in enumerate(zip(p32, p8, strict=True)) if a.error is None and b.error is None]
    if not ok:
        raise QuantizationError("none of the validation images gave a result with both graphs")
    y = labels[[keep[j] for j in ok]]
    prob32 = np.array([p32[j].probability for j in ok])
    prob8 = np.array([p8[j].probability for j in ok])

    def auc(p: np.ndarray) -> float:
        return float(binary_metrics(y, p, fp32.threshold)["roc_auc"])

    return Parity(
        n=len(ok),
        auc_fp32=auc(prob32),
        auc_int8=auc(prob8),
        agreement=float(np.mean([p32[j].prediction == p8[j].prediction for j in ok])),
        flag_rate_fp32=float(np.mean([p32[j].in_domain is False for j in ok])),
        flag_rate_int8=float(np.mean([p8[j].in_domain is False for j in ok])),
        max_probability_change=float(np.max(np.abs(prob32 - prob8))),
    )


# ---------------------------------------------------------------------------------------------------- the command


def quantize_model(
    model: str | Path | None,
    output: str | Path,
    calibration_data: str | Path,
    *,
    validation_data: str | Path | None = None,
    split_csv: str | Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    method: str = "minmax",
    bounds: ParityBounds | None = None,
    seed: int = 0,
) -> tuple[Path, Parity]:
    """``pneumo export --int8``: write the INT8 model file (``.pneumo``, or ``.onnx`` with the metadata
    embedded) only if it passes ``bounds`` on the validation images; otherwise raise :class:`QuantizationError`
    with the figures. ``validation_data`` defaults to ``calibration_data`` (with ``split_csv``, its ``val`` rows
    are the validation images and the others calibrate)."""
    bounds = bounds or ParityBounds()
    output = Path(output)
    if output.suffix not in (".pneumo", ".onnx"):
        raise QuantizationError(f"{output}: the INT8 model is written as .pneumo or .onnx")
    if calibration_images < 1:
        raise QuantizationError("--calibration-images must be at least 1")
    mf = load_model_file(model)
    if mf.onnx is None:
        raise QuantizationError(f"{mf.path}: this model file has no ONNX graph to quantise; run `pneumo export`")
    if mf.meta.precision != "fp32":
        raise QuantizationError(f"{mf.path}: already {mf.meta.precision}; quantise the fp32 model file")
    calibration_data = Path(calibration_data)
    val_dir = Path(validation_data) if validation_data is not None else calibration_data
    recs = validation_records(val_dir, Path(split_csv) if split_csv is not None else None)
    val_paths = [r.path for r in recs]
    labels = np.array([BINARY_CLASSES.index(r.label) for r in recs])
    fp32 = Predictor(mf)
    val_set = {p.resolve() for p in val_paths}
    # Without a split CSV a folder of training images is often all the user has: it calibrates, and says so.
    cal = calibration_paths(calibration_data, val_set, calibration_images, seed, fall_back=split_csv is None)
    int8_bytes = quantize_graph(mf.onnx, fp32, cal, method)
    int8 = Predictor(mf.model_copy(update={"onnx": int8_bytes}))
    parity = measure_parity(fp32, int8, val_paths, labels)
    parity.calibrated_on_validation = sum(p.resolve() in val_set for p in cal)
    failures = parity.failures(bounds)
    if failures:
        note = parity.calibration_note()
        raise QuantizationError(
            "the INT8 graph was not written: "
            + "; ".join(failures)
            + f" ({parity.summary()})"
            + (f"; {note}" if note else "")
        )
    quant = Quantization(
        calibration_images=len(cal),
        calibrated_on_validation=parity.calibrated_on_validation,
        calibration_method=method,
        validation_images=parity.n,
        auc_fp32=parity.auc_fp32,
        auc_int8=parity.auc_int8,
        auc_drop=parity.auc_drop,
        agreement=parity.agreement,
        flag_rate_fp32=parity.flag_rate_fp32,
        flag_rate_int8=parity.flag_rate_int8,
        max_probability_change=parity.max_probability_change,
        bounds=asdict(bounds),
        source_onnx_sha256=hashlib.sha256(mf.onnx).hexdigest(),
    )
    meta = mf.meta.model_copy(update={"precision": "int8", "quantization": quant})
    meta = type(meta).model_validate(meta.model_dump())  # the whole metadata re-validated, as a load would
    if output.suffix == ".pneumo":
        save_model_file(output, mf.model_copy(update={"meta": meta, "onnx": int8_bytes}))
    else:
        write_bytes(output, _embed_meta(int8_bytes, meta.model_dump_json(), mf.arrays))
    return output, parity


def _embed_meta(onnx_bytes: bytes, meta_json: str, arrays: dict[str, np.ndarray]) -> bytes:
    """The metadata inside a bare ``.onnx``, as ``pneumo export`` writes it (read by ``pneumo predict``)."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes)
    onnx.helper.set_model_props(proto, {"pneumo_meta": meta_json})
    if arrays:
        proto.metadata_props.add(key="pneumo_arrays", value=json.dumps({k: v.tolist() for k, v in arrays.items()}))
    return proto.SerializeToString()
