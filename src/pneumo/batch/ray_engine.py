"""The Ray Data engine of ``pneumo batch``.

Ray Data reads the list of inputs, decodes and prepares the images in stateless tasks (``map_batches`` with a
function), runs the network in a pool of ONNX Runtime actors (``map_batches`` with a class and ``concurrency``),
and streams the predictions back to the driver, which commits the part files atomically. The same
:class:`~pneumo.inference.Predictor` code computes every number, so the results match the local engine.

On one machine it starts a local Ray runtime with the machine's cores; ``address`` (``auto`` or
``ray://HOST:PORT``) connects to a running cluster instead, whose nodes need Pneumo installed and the input
paths readable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pneumo.batch.parts import BatchInputs, PartWriter, Progress, has_refer, predictions_table
from pneumo.imaging import ImageLoadError
from pneumo.inference import Prediction, Predictor
from pneumo.modelfile import ModelFile, Preprocessing
from pneumo.preprocess import prepare_input, views

# One ONNX Runtime predictor uses this many threads: the network's kernels scale to about two cores, beyond
# that a second actor gains more than a wider one.
THREADS_PER_ACTOR = 2


def decode_batch(batch: dict[str, np.ndarray], preprocessing: str) -> dict[str, np.ndarray]:
    """A Ray task: decode and prepare a batch of inputs with :func:`~pneumo.preprocess.prepare_input`, what
    ``Predictor.prepare`` does (a task holds no Predictor); a file that cannot be read keeps its row, with its
    one-line error and zero pixels."""
    pre = Preprocessing.model_validate_json(preprocessing)
    size = pre.image_size
    n = len(batch["index"])
    x = np.zeros((n, len(views(pre)), size, size), dtype=np.float32)
    errors = []
    for j, (name, source) in enumerate(zip(batch["path"], batch["source"], strict=True)):
        try:
            x[j] = prepare_input(str(source), pre, name=str(name))
        except ImageLoadError as exc:
            errors.append(str(exc))
            continue
        errors.append("")
    return {"index": batch["index"], "path": batch["path"], "x": x, "error": np.array(errors, dtype=object)}


class OnnxPredictorActor:
    """A Ray actor holding one ONNX Runtime session; turns decoded batches into ``predict`` rows."""

    def __init__(self, model_ref: list, threshold: float | None, threads: int, mirror: bool):
        import ray

        # The model travels through the object store once, not inside every actor's constructor arguments;
        # the reference sits in a list so that Ray hands it over unresolved.
        model: ModelFile = ray.get(model_ref[0])
        self.predictor = Predictor(model, threshold=threshold, threads=threads)
        self.subtypes = model.meta.has_subtypes
        self.refer = has_refer(self.predictor)
        self.mirror = mirror

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        names = [str(n) for n in batch["path"]]
        errors = [str(e) for e in batch["error"]]
        ok = [j for j, e in enumerate(errors) if not e]
        good = iter(self.predictor.predict_prepared(batch["x"][ok], [names[j] for j in ok], self.mirror) if ok else [])
        threshold = self.predictor.threshold
        preds = [
            next(good) if not e else Prediction(path=names[j], threshold=threshold, error=e)
            for j, e in enumerate(errors)
        ]
        table = predictions_table(preds, self.subtypes, self.refer)
        return table.append_column("index", pa.array(batch["index"], type=pa.int64()))


def _connect(address: str | None) -> bool:
    """Start (or join) a Ray runtime; True when this call started it, so that the caller shuts it down."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def run_ray(
    predictor: Predictor,
    inputs: BatchInputs,
    todo: Sequence[int],
    writer: PartWriter,
    *,
    batch_size: int,
    mirror: bool,
    progress: Progress,
    address: str | None = None,
    actors: int | None = None,
    threshold: float | None = None,
) -> None:
    """Predict the inputs at ``todo`` on Ray Data, committing parts through ``writer`` as results arrive;
    ``threshold`` is the user's override (None: the model's, and a site's REFER band with it)."""
    import ray
    import ray.data

    started = _connect(address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the CLI shows one bar for the whole run
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        pool = actors or max(1, cpus // THREADS_PER_ACTOR)
        paths = inputs.paths
        rows = [{"index": i, "path": paths[i], "source": inputs.sources[i]} for i in todo]
        mf = predictor.model
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // batch_size, 256)))
        ds = ds.map_batches(
            decode_batch,
            batch_size=batch_size,
            batch_format="numpy",
            fn_kwargs={"preprocessing": mf.meta.preprocessing.model_dump_json()},
            # Half a CPU, unlike the actors' one: Ray Data does not fuse operators with different resources, so
            # decoding stays in tasks that overlap the network, two of them beside each actor.
            num_cpus=0.5,
        )
        ds = ds.map_batches(
            OnnxPredictorActor,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_kwargs={
                "model_ref": [ray.put(mf.model_copy(update={"weights": None}))],
                "threshold": threshold,  # as the user gave it: None keeps a site's REFER band, as locally
                "threads": THREADS_PER_ACTOR,
                "mirror": mirror,
            },
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=1,
        )
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
            index = table.column("index").to_pylist()
            writer.add(index, table.drop_columns(["index"]))
            progress(len(index))
    finally:
        if started:
            ray.shutdown()
