"""Heat maps without PyTorch: agreement with Grad-CAM, time to the first heat map, server memory under load.

Re-exports the model (the bundled one unless --model) so that its ONNX graph has the class activation map
(``pneumo.training.export.export_model``, as ``pneumo export --output X.pneumo`` does), then prints

1. agreement of the ONNX map (numpy) with PyTorch Grad-CAM on real X-rays, at the network's input size, and
   that the re-export predicts what the original does;
2. the time of the first heat map in a fresh process (imports, model load, one image), with the ONNX map and with
   the PyTorch Grad-CAM fallback of the original file, and whether torch was imported;
3. the peak resident memory of ``pneumo serve`` while 8 clients at once ask for heat maps, for both files.

    python benchmarks/cam_bench.py [--model M] [--images DIR] [--n 16] [--clients 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import DEFAULT_IMAGES, free_port, run_load, start_server, stop_server, wait_healthy

_FIRST_HEATMAP = """
import time; t0 = time.perf_counter()
import sys
from pathlib import Path
from pneumo.inference import Predictor
from pneumo.serve.upload_result import Analyser
model, image = sys.argv[1:3]
result = Analyser(Predictor.load(model)).analyse(Path(image).read_bytes(), "x.jpeg", explain=True)
assert result.heatmap_png is not None, result.explain_error
print(time.perf_counter() - t0, "torch" in sys.modules)
"""


def agreement(original: Path, exported: Path, images: list[Path]) -> dict:
    """ONNX map against Grad-CAM on the original file's PyTorch twin, both at the input size."""
    from pneumo.explain.cam import HeatMapper
    from pneumo.imaging import load_image
    from pneumo.inference import Predictor
    from pneumo.modelfile import load_model_file
    from pneumo.training.grad_cam import GradCam

    old, new = Predictor.load(original), Predictor.load(exported)
    mapper, grad_cam = HeatMapper(new, "cam"), GradCam(load_model_file(original))
    assert mapper.method == "onnx-cam"
    max_err, mean_err, corr, prob, flat = [], [], [], [], 0
    for path in images:
        x = load_image(path, new.size)
        got, ref = mapper.heatmap(x), grad_cam.heatmap(x)
        max_err.append(float(np.abs(got - ref).max()))
        mean_err.append(float(np.abs(got - ref).mean()))
        if got.std() == 0 or ref.std() == 0:  # nothing pushes towards pneumonia: an all-zero map
            flat += got.std() == ref.std() == 0
        else:
            corr.append(float(np.corrcoef(got.ravel(), ref.ravel())[0, 1]))
        a, b = old.predict_one(path, path.name), new.predict_one(path, path.name)
        prob.append(abs(a.probability - b.probability))
    return {"max_err": max(max_err), "mean_err": float(np.mean(mean_err)), "min_corr": min(corr, default=np.nan),
            "both_flat": int(flat), "max_prob_diff": max(prob)}  # fmt: skip


def first_heatmap(model: Path, image: Path) -> tuple[float, float, bool]:
    """(wall time of the whole process, time inside it from the first import, torch imported?)."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _FIRST_HEATMAP, str(model), str(image)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"first heat map failed:\n{run.stderr[-2000:]}")
    inner, torch_loaded = run.stdout.split()
    return wall, float(inner), torch_loaded == "True"


def peak_memory(model: Path, image: Path, clients: int, rounds: int) -> tuple[float, float, int, list[float]]:
    """(peak RSS in MB, RSS after start-up in MB, errors, latencies in s) of a server answering ``clients``
    concurrent heat-map requests ``rounds`` times each."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile() as log:
        proc = start_server(model, port, log)
        try:
            wait_healthy(url, proc, log)
            idle = _rss_mb(proc.pid, "VmRSS")
            lat, errors, _ = run_load(url, image.read_bytes(), image.name, clients, rounds, True, 600.0)
            peak = _rss_mb(proc.pid, "VmHWM")  # the kernel's high-water mark of resident memory
        finally:
            stop_server(proc)
    return peak, idle, len(errors), lat


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} for process {pid}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file [default: the bundled model]")
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of real X-rays (recursive)")
    ap.add_argument("--n", type=int, default=16, help="images for the agreement check")
    ap.add_argument("--clients", type=int, default=8, help="concurrent heat-map requests")
    ap.add_argument("--rounds", type=int, default=3, help="requests per client")
    args = ap.parse_args(argv)

    from pneumo.explain.cam import CAM_OUTPUT
    from pneumo.inference import Predictor
    from pneumo.modelfile import resolve_model_path
    from pneumo.training.export import export_model

    images = sorted(args.images.rglob("*.jpeg"))[: args.n]
    if not images:
        raise SystemExit(f"no X-rays in {args.images}: pass --images")
    original = resolve_model_path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        exported = export_model(original, Path(tmp) / "cam.pneumo")
        export_s = time.perf_counter() - t0
        had_map = CAM_OUTPUT in {o.name for o in Predictor.load(original).session.get_outputs()}
        meta = Predictor.load(exported).meta
        print(
            f"model            {original} ({meta.arch}, {meta.preprocessing.image_size} px)"
            f"{'' if not had_map else '  (already had the map: the fallback figures below are the ONNX map too)'}"
        )
        print(f"re-export        {export_s:.1f} s (export_model(model, 'X.pneumo'), verified against PyTorch)")
        a = agreement(original, exported, images)
        print(f"agreement        {len(images)} real X-rays, ONNX map vs PyTorch Grad-CAM at the input size, [0, 1]:")
        print(
            f"                 max |diff| {a['max_err']:.1e}, mean |diff| {a['mean_err']:.1e}, "
            f"lowest correlation {a['min_corr']:.6f} ({a['both_flat']} maps all zero in both)"
        )
        print(f"                 re-exported probabilities differ from the original's by <= {a['max_prob_diff']:.1e}")
        for label, model in (("ONNX map", exported), ("Grad-CAM fallback", original)):
            wall, inner, torch_loaded = first_heatmap(model, images[0])
            print(
                f"first heat map   {label:18s} {wall:5.1f} s whole process ({inner:.1f} s from the first "
                f"import), torch imported: {'yes' if torch_loaded else 'no'}"
            )
        for label, model in (("ONNX map", exported), ("Grad-CAM fallback", original)):
            peak, idle, errors, lat = peak_memory(model, images[0], args.clients, args.rounds)
            ms = np.array(lat) * 1000 if lat else np.array([np.nan])
            print(
                f"server memory    {label:18s} peak {peak:6.0f} MB (idle {idle:.0f} MB) over {args.clients} "
                f"concurrent x {args.rounds} heat maps, {errors} errors, p50 {np.percentile(ms, 50):.0f} ms"
            )
    print(json.dumps({"agreement": a}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
