"""Prediction on ONNX Runtime: the path behind ``pneumo predict`` and ``pneumo serve``.

Needs numpy, Pillow, pydicom and onnxruntime only: no torch, no Lightning. Decoding (Pillow/pydicom release the
GIL) runs in a thread pool while the previous batch is on the network.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from pneumo.decision import check_threshold, decide
from pneumo.domain import check_guard_arrays, classify_domain
from pneumo.imaging import ImageLoadError
from pneumo.modelfile import ModelFile, ModelFileError, load_model_file, load_onnx_file, onnx_session
from pneumo.preprocess import averaged_views, prepare_input, to_input
from pneumo.probability import calibrated_probability, pneumonia_log_odds, subtype_probabilities

Source = str | os.PathLike | bytes

SUBTYPE_COLUMNS = ["p_normal", "p_bacterial", "p_viral"]
REFER_COLUMNS = ["refer_low", "refer_high"]  # only with a site REFER band in force (pneumo adapt --refer)


class Prediction(BaseModel):
    """One file's result; ``error`` is set (and the rest empty) when the file could not be read.

    ``prediction`` is NORMAL or PNEUMONIA, or REFER when a site's REFER band (``pneumo adapt --refer``) is in force
    and the probability lies in it (``refer_low <= probability <= refer_high``). The fields, in this order, are the
    columns of ``pneumo predict`` and ``pneumo batch``; the API's answer extends them (``serve.app.PredictResponse``).
    """

    path: str
    probability: float | None = None
    prediction: str | None = None  # str, not labels.Decision: the DICOM writers refuse unknown ones themselves
    threshold: float = Field(description="operating threshold: at or above it the decision is PNEUMONIA")
    # str, not a Literal: the batch writers type columns from these annotations (pneumo.domain.DOMAINS are the values)
    domain: str | None = Field(
        default=None,
        description="typical; unusual_acquisition (a pediatric chest X-ray framed or exposed unlike the validation "
        "films: the result stands, with a note); not_pediatric (not a pediatric chest X-ray: do not rely on the "
        "result); null on error rows and for models without a domain guard",
    )
    in_domain: bool | None = Field(
        default=None, description="false (domain not_pediatric): not like a pediatric chest X-ray; do not rely on it"
    )
    domain_score: float | None = Field(
        default=None,
        description="share of held-out pediatric X-rays that lie further from the training images than this one "
        "(near 1: typical; 0: stranger than all of them)",
    )
    error: str | None = None
    p_normal: float | None = Field(default=None, description="subtype models only, else null")
    p_bacterial: float | None = Field(default=None, description="subtype models only, else null")
    p_viral: float | None = Field(default=None, description="subtype models only, else null")
    refer_low: float | None = Field(default=None, description="REFER band, lower end (inclusive); null if none")
    refer_high: float | None = Field(default=None, description="REFER band, upper end (inclusive); null if none")
    # Uncalibrated pneumonia log-odds, what pneumo adapt refits the calibration on: in-process only, in no output.
    log_odds: float | None = Field(default=None, exclude=True)


def columns(subtypes: bool, refer: bool = False) -> list[str]:
    """The result columns of ``predict`` and ``batch``: :class:`Prediction`'s fields in order, but those kept
    in-process and the optional groups not asked for."""
    left_out = (SUBTYPE_COLUMNS if not subtypes else []) + (REFER_COLUMNS if not refer else [])
    return [name for name, f in Prediction.model_fields.items() if not f.exclude and name not in left_out]


def open_model(model: str | Path | None = None) -> ModelFile:
    """A ``.pneumo`` model file, a run directory, an exported ``.onnx``, or ``None`` for the bundled model."""
    if model is not None and Path(model).suffix.lower() == ".onnx" and Path(model).is_file():
        return load_onnx_file(model)
    mf = load_model_file(model, parts=("onnx",))
    if mf.onnx is None:
        raise ModelFileError(f"{mf.path}: this model file has no ONNX graph; run `pneumo export` on it")
    return mf


class Predictor:
    """Calibrated pneumonia probabilities, decisions and domain checks from one loaded model."""

    def __init__(self, model: ModelFile, *, threshold: float | None = None, threads: int | None = None):
        self.session = onnx_session(model.onnx, source=f"{model.path}: model.onnx", threads=threads, meta=model.meta)
        self.model = model
        self.meta = model.meta
        self.threshold = self.meta.threshold if threshold is None else check_threshold(threshold)
        self.size = self.meta.preprocessing.image_size
        # The site's REFER band belongs to the site's operating point: an explicit threshold means two-way decisions.
        self.refer = self.meta.site.refer if self.meta.site is not None and threshold is None else None
        names = {o.name for o in self.session.get_outputs()}
        if self.meta.domain_guard is not None and model.arrays:  # refused here, not as a silent wrong answer later
            check_guard_arrays(self.meta.domain_guard, model.arrays, feature_dim=self.meta.feature_dim or None,
                               source=model.path or "model")  # fmt: skip
        self.outputs = ["logits", "features"] + (["subtype_logits"] if "subtype_logits" in names else [])

    @classmethod
    def load(cls, model: str | Path | None = None, **kwargs) -> Predictor:
        return cls(open_model(model), **kwargs)

    def _run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        outs = self.session.run(self.outputs, {"image": batch})
        return outs[0], outs[1], outs[2] if len(outs) > 2 else None

    def predict_arrays(
        self, images: Sequence[np.ndarray], names: Sequence[str], mirror: bool = False
    ) -> list[Prediction]:
        """Predict images already decoded at the model's input size (2-D, [0, 1])."""
        if not images:
            return []
        return self.predict_prepared(
            to_input(list(images), self.meta.preprocessing, content_scales=True), names, mirror
        )

    def network_outputs(self, x: np.ndarray, mirror: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Logits and subtype logits averaged over the model's test-time views (and their mirror images with
        ``mirror``), and the domain features of the image as it is. ``x`` is N x V x H x W from ``to_input(...,
        content_scales=True)``."""
        n, v = x.shape[:2]
        logits, features, sub = self._run(x.reshape(n * v, 1, *x.shape[2:]))
        if mirror:  # the model was trained with horizontal flips, so the mirror views are in-distribution too
            flipped = self._run(np.ascontiguousarray(x.reshape(n * v, 1, *x.shape[2:])[..., ::-1]))
            logits = np.concatenate([logits, flipped[0]])
            sub = None if sub is None else np.concatenate([sub, flipped[2]])
        averaged = averaged_views(self.meta.preprocessing, v)

        def mean_over_views(a: np.ndarray) -> np.ndarray:
            a = a.reshape(-1, n, v, a.shape[-1])  # (mirror, image, view, class)
            return a[:, :, averaged].mean(axis=(0, 2))

        features = features.reshape(n, v, -1)[:, 0]
        return mean_over_views(logits), features, None if sub is None else mean_over_views(sub)

    def decide(self, p: float) -> str:
        """NORMAL / PNEUMONIA at the threshold; with a REFER band, NORMAL below it, PNEUMONIA above, REFER in it."""
        return decide(p, self.threshold, None if self.refer is None else (self.refer.low, self.refer.high))

    def prepare(self, source: Source, name: str | None = None) -> np.ndarray:
        """Decode one input and prepare it as the network's input (V x H x W, one channel per test-time view):
        what :meth:`predict_sources` does to every input. :class:`~pneumo.imaging.ImageLoadError` (naming
        ``name``) when it cannot be read. Stack prepared inputs for :meth:`predict_prepared`."""
        return prepare_input(source, self.meta.preprocessing, name=name)

    def predict_prepared(self, x: np.ndarray, names: Sequence[str], mirror: bool = False) -> list[Prediction]:
        """Predict a batch of prepared inputs (N x V x H x W, from :meth:`prepare`), one result per name."""
        logits, features, sub = self.network_outputs(x, mirror=mirror)
        m = self.meta
        prob = calibrated_probability(logits, m.temperature, m.calibration_bias)
        log_odds = pneumonia_log_odds(logits)
        subtypes = subtype_probabilities(logits, m.temperature, m.calibration_bias, sub) if m.has_subtypes else None
        if m.domain_guard is not None and self.model.arrays:
            domain, in_domain, score = classify_domain(features, m.domain_guard, self.model.arrays)
        else:
            domain = in_domain = score = [None] * len(names)
        out = []
        for i, name in enumerate(names):
            p = float(prob[i])
            if not np.isfinite(p):  # never a decision: a NaN compares below every threshold and would read NORMAL
                why = "the model gave no finite probability for this image (not a valid result; check the model file)"
                out.append(Prediction(path=name, threshold=self.threshold, error=f"{name}: {why}"))
                continue
            pred = Prediction(
                path=name,
                probability=p,
                prediction=self.decide(p),
                threshold=self.threshold,
                domain=None if domain[i] is None else str(domain[i]),
                in_domain=None if in_domain[i] is None else bool(in_domain[i]),
                domain_score=None if score[i] is None else float(score[i]),
                refer_low=None if self.refer is None else self.refer.low,
                refer_high=None if self.refer is None else self.refer.high,
                log_odds=float(log_odds[i]),
            )
            if subtypes is not None:
                pred.p_normal, pred.p_bacterial, pred.p_viral = (float(v) for v in subtypes[i])
            out.append(pred)
        return out

    def _try_prepare(self, item: tuple[str, Source]) -> tuple[str, np.ndarray | None, str | None]:
        """:meth:`prepare` in a worker thread, so that equalisation overlaps inference too; the error as text."""
        name, source = item
        try:
            return name, self.prepare(source, name), None
        except ImageLoadError as exc:
            return name, None, str(exc)

    def predict_sources(
        self, sources: Iterable[tuple[str, Source]], *, batch_size: int = 64, workers: int = 2, mirror: bool = False
    ) -> Iterator[Prediction]:
        """Decode and predict ``(name, path-or-bytes)`` pairs, yielding one result per input in input order.

        Batches of 64 keep ONNX Runtime busy long enough for the decoding of the next batch to overlap it."""
        items = iter(sources)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

            def submit_batch():
                chunk = [pool.submit(self._try_prepare, it) for _, it in zip(range(batch_size), items, strict=False)]
                return chunk

            pending = submit_batch()
            while pending:
                decoded = [f.result() for f in pending]
                pending = submit_batch()  # the next batch decodes while this one is on the network
                good = [(n, x) for n, x, err in decoded if err is None]
                batch = np.stack([g[1] for g in good]) if good else None
                preds = iter(self.predict_prepared(batch, [g[0] for g in good], mirror) if good else [])
                for name, _, err in decoded:
                    yield next(preds) if err is None else Prediction(path=name, threshold=self.threshold, error=err)

    def predict_one(self, source: Source, name: str, mirror: bool = False) -> Prediction:
        """Predict a single path or in-memory file."""
        return next(self.predict_sources([(name, source)], batch_size=1, workers=1, mirror=mirror))
