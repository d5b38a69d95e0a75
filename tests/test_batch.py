"""``pneumo batch``: the Ray engine against the local one, kill -9 then --resume, manifests, refusals.

One Ray runtime for the whole module (2 CPUs, as the CI machine has): starting one costs seconds.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import xray

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from pneumo.batch.run import MODEL_COLUMNS, BatchError, read_results, run_batch  # noqa: E402
from pneumo.cli import main  # noqa: E402
from pneumo.inference import columns  # noqa: E402

# Both engines run the same Predictor code on the same float32 inputs; only the batch composition differs,
# which moves ONNX Runtime's float32 sums by a few ulps of values in [0, 1]: far below 1e-6.
TOLERANCE = 1e-6
BAD = {"d_empty.png", "e_truncated.jpg", "f_text.jpeg"}


def _folder(root: Path, n: int, bad: bool = True) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        sub = root / ("sub" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        kind = i % 3
        if kind == 0:
            xray(i, 72).save(sub / f"img{i:04d}.png")
        elif kind == 1:
            xray(i, 72).save(sub / f"img{i:04d}.jpg", quality=90)
        else:
            xray(i, 72).save(sub / f"img{i:04d}", "PNG")  # no extension: the content decides
    if bad:
        (root / "d_empty.png").write_bytes(b"")
        buf = io.BytesIO()
        xray(999, 160).save(buf, "JPEG", quality=95)
        (root / "e_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        (root / "f_text.jpeg").write_text("this is not a JPEG\n")
    return root


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """31 readable images (PNG, JPEG, extension-less; two folder levels) and 3 unreadable files."""
    return _folder(tmp_path_factory.mktemp("batch") / "in", 31)


def _by_path(table) -> dict[str, dict]:
    rows = table.to_pylist()
    assert len({r["path"] for r in rows}) == len(rows), "a path appears twice"
    return {r["path"]: r for r in rows}


def test_ray_engine_matches_local_and_predict(ray_runtime, mixed, tiny_subtype_model, tmp_path):
    # Parts of 7 rows against batches of 8: parts never line up with batches, so rows are split across parts.
    kw = {"model": tiny_subtype_model, "batch_size": 8, "part_size": 7}
    local = run_batch([str(mixed)], tmp_path / "local.parquet", engine="local", **kw)
    ray = run_batch([str(mixed)], tmp_path / "ray.parquet", engine="ray", actors=1, **kw)
    assert (local.rows, local.errors, local.parts) == (34, 3, 5)
    assert (ray.rows, ray.errors) == (34, 3)

    a, b = read_results(tmp_path / "local.parquet"), read_results(tmp_path / "ray.parquet")
    assert a.column_names == b.column_names == [*columns(True), *MODEL_COLUMNS]
    ra, rb = _by_path(a), _by_path(b)
    assert ra.keys() == rb.keys() and len(ra) == 34
    for path, x in ra.items():
        y = rb[path]
        assert (x["error"], y["error"]) == (y["error"], x["error"])
        assert x["prediction"] == y["prediction"] and x["in_domain"] == y["in_domain"]
        for col in ("probability", "domain_score", "p_normal", "p_bacterial", "p_viral"):
            assert (x[col] is None) == (y[col] is None), (path, col)
            if x[col] is not None:
                assert abs(x[col] - y[col]) <= TOLERANCE, (path, col, x[col], y[col])
    errors = {Path(p).name: r["error"] for p, r in rb.items() if r["error"]}
    assert set(errors) == BAD and all(e.startswith(str(mixed)) for e in errors.values())
    sha = hashlib.sha256(tiny_subtype_model.read_bytes()).hexdigest()
    assert set(b.column("model_sha256").to_pylist()) == {sha}
    assert set(b.column("model_name").to_pylist()) == {"tiny-subtype"}

    # The same rows as `pneumo predict` (its CSV rounds to 6 decimals: half a unit of the last place).
    out_csv = tmp_path / "predict.csv"
    assert main(["predict", str(mixed), "--model", str(tiny_subtype_model), "--output", str(out_csv)]) == 3
    with open(out_csv, newline="") as f:
        predicted = {r["path"]: r for r in csv.DictReader(f)}
    assert predicted.keys() == ra.keys()
    for path, r in predicted.items():
        x = ra[path]
        assert r["error"] == (x["error"] or "") and r["prediction"] == (x["prediction"] or "")
        if x["probability"] is not None:
            assert abs(float(r["probability"]) - x["probability"]) <= 5e-7 + TOLERANCE


def test_kill_9_then_resume_gives_every_row_once(ray_runtime, tiny_model, tmp_path):
    src = _folder(tmp_path / "in", 240, bad=False)
    out = tmp_path / "out.parquet"
    cmd = [sys.executable, "-m", "pneumo.cli", "batch", str(src), "-o", str(out), "-m", str(tiny_model),
           "--batch-size", "1", "--part-size", "5"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("part-*.parquet"))) < 2:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-300:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = read_results(out)
    assert 0 < before.num_rows < 240, "killed mid-run: some rows committed, not all"
    assert len(set(before.column("path").to_pylist())) == before.num_rows

    # Resume on the other engine: it must read the killed run's parts and do only the rest.
    result = run_batch([str(src)], out, model=tiny_model, engine="ray", resume=True, batch_size=16, part_size=50)
    assert result.skipped == before.num_rows
    assert result.rows == 240 - before.num_rows
    after = read_results(out)
    paths = after.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 240
    assert sorted(paths) == sorted(str(p) for p in src.rglob("img*"))
    # A finished run resumed does nothing.
    again = run_batch([str(src)], out, model=tiny_model, resume=True)
    assert (again.rows, again.skipped, again.parts) == (0, 240, 0)


def test_manifests_carry_their_columns(tiny_model, tmp_path):
    src = _folder(tmp_path / "imgs", 6, bad=False)
    files = sorted(p.relative_to(tmp_path) for p in src.rglob("img*"))
    man = tmp_path / "manifest.csv"  # relative paths: relative to the manifest's folder, not to the cwd
    with open(man, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "path", "site"])
        for i, rel in enumerate(files[:4]):
            w.writerow([f"{i:05d}", str(rel), f"site{i % 2}"])
        w.writerow(["00099", "imgs/missing.png", "site1"])
    pq.write_table(
        pa.table({"path": [str(tmp_path / r) for r in files[4:]], "age": pa.array([3, 5], type=pa.int32())}),
        tmp_path / "more.parquet",
    )
    plain = _folder(tmp_path / "plain", 2, bad=False)
    out = tmp_path / "out.parquet"
    result = run_batch([str(man), str(tmp_path / "more.parquet"), str(plain)], out, model=tiny_model, part_size=3)
    assert (result.rows, result.errors, result.parts) == (9, 1, 3)
    t = read_results(out)
    assert t.column_names == [*columns(False), "patient", "site", "age", *MODEL_COLUMNS]
    assert t.schema.field("patient").type == pa.string() and t.schema.field("age").type == pa.int32()
    rows = _by_path(t)
    for i, rel in enumerate(files[:4]):
        r = rows[str(rel)]  # the path as the manifest wrote it
        assert (r["patient"], r["site"], r["age"], r["error"]) == (f"{i:05d}", f"site{i % 2}", None, None)
    assert rows["imgs/missing.png"]["patient"] == "00099"  # leading zeros kept: a CSV's cells stay text
    assert "file not found" in rows["imgs/missing.png"]["error"]
    assert [rows[str(tmp_path / r)]["age"] for r in files[4:]] == [3, 5]
    assert all(rows[str(p)]["patient"] is None for p in plain.rglob("img*"))


def test_refusals(tiny_model, tiny_subtype_model, tmp_path):
    src = _folder(tmp_path / "in", 3, bad=False)
    out = tmp_path / "out.parquet"
    run_batch([str(src)], out, model=tiny_model)
    with pytest.raises(BatchError, match="--resume"):
        run_batch([str(src)], out, model=tiny_model)
    with pytest.raises(BatchError, match="another model"):
        run_batch([str(src)], out, model=tiny_subtype_model, resume=True)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,site\na.png,x\n")
    with pytest.raises(BatchError, match="'path' column"):
        run_batch([str(bad)], tmp_path / "o2.parquet", model=tiny_model)
    clash = tmp_path / "clash.csv"
    clash.write_text("path,probability\na.png,0.3\n")
    with pytest.raises(BatchError, match="clashes"):
        run_batch([str(clash)], tmp_path / "o3.parquet", model=tiny_model)
    with pytest.raises(BatchError, match="no such file"):
        run_batch([str(tmp_path / "nowhere")], tmp_path / "o4.parquet", model=tiny_model)


def test_cli_summary_and_exit_code(mixed, tiny_model, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    assert main(["batch", str(mixed), "-o", str(out), "-m", str(tiny_model), "--part-size", "10"]) == 3
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("34 rows (3 errors) in ") and "images/s (local engine)" in line and "4 parts" in line
    assert main(["batch", str(mixed), "-o", str(out), "-m", str(tiny_model), "--resume"]) == 0
    assert "34 skipped" in capsys.readouterr().out
    # A library refusal is one line and a usage error (exit 2, as predict's), not a traceback.
    assert main(["batch", str(mixed), "-o", str(out), "-m", str(tiny_model)]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert main(["batch", str(mixed), "-o", str(out), "--engine", "spark"]) == 2


# --- issue 25, item 7: one writer per output, one operating point per output, names as predict writes them ---


def test_a_second_concurrent_run_is_refused(tiny_model, tmp_path):
    import threading

    src = _folder(tmp_path / "in", 6, bad=False)
    out = tmp_path / "out.parquet"
    inside, release = threading.Event(), threading.Event()
    results = {}

    def first() -> None:
        def hold(n: int) -> None:
            inside.set()
            release.wait(60)

        results["first"] = run_batch([str(src)], out, model=tiny_model, on_start=hold)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert inside.wait(60)
        for resume in (False, True):
            with pytest.raises(BatchError, match=r"another pneumo batch \(pid \d+\) is writing to this output"):
                run_batch([str(src)], out, model=tiny_model, resume=resume)
    finally:
        release.set()
        t.join(60)
    table = read_results(out)
    assert table.num_rows == 6 and len(set(table.column("path").to_pylist())) == 6  # every row once
    assert run_batch([str(src)], out, model=tiny_model, resume=True).skipped == 6  # the lock went with the run


def test_two_rows_for_one_input_are_refused_on_resume(tiny_model, tmp_path):
    src = _folder(tmp_path / "in", 4, bad=False)
    out = tmp_path / "out.parquet"
    (part,) = run_batch([str(src)], out, model=tiny_model).written
    (out / "part-copy-00000.parquet").write_bytes(part.read_bytes())  # what two unlocked runs left behind
    with pytest.raises(BatchError, match="has two rows"):
        run_batch([str(src)], out, model=tiny_model, resume=True)


def test_resume_with_other_settings_is_refused(tiny_model, tmp_path):
    src = _folder(tmp_path / "in", 4, bad=False)
    out = tmp_path / "out.parquet"
    (part,) = run_batch([str(src)], out, model=tiny_model, threshold=0.3).written
    assert json.loads(pq.read_schema(part).metadata[b"pneumo_settings"]) == {"threshold": 0.3, "tta": False}
    with pytest.raises(BatchError, match=r"written with --threshold 0.3, not --threshold 0.6"):
        run_batch([str(src)], out, model=tiny_model, threshold=0.6, resume=True)
    with pytest.raises(BatchError, match=r"written with no --tta, not --tta"):
        run_batch([str(src)], out, model=tiny_model, threshold=0.3, mirror=True, resume=True)
    with pytest.raises(BatchError, match=r"written with --threshold 0.3, not --threshold 0.5"):
        run_batch([str(src)], out, model=tiny_model, resume=True)  # the model's own threshold is another one
    assert run_batch([str(src)], out, model=tiny_model, threshold=0.3, resume=True).skipped == 4


def test_names_that_are_not_utf8_are_written_as_predict_writes_them(tiny_model, tmp_path):
    src = _folder(tmp_path / "in", 2, bad=False)
    odd = os.fsencode(src) + b"/caf\xe9.png"
    xray(7, 72).save(os.fsdecode(odd))
    out = tmp_path / "out.parquet"
    result = run_batch([str(src)], out, model=tiny_model)
    assert result.rows == 3 and result.errors == 0
    batch_paths = set(read_results(out).column("path").to_pylist())
    csv_out = tmp_path / "p.csv"
    main(["predict", str(src), "-m", str(tiny_model), "-o", str(csv_out)])
    with csv_out.open(newline="", encoding="utf-8") as f:
        predict_paths = {row["path"] for row in csv.DictReader(f)}
    assert batch_paths == predict_paths and any(p.endswith("caf\\xe9.png") for p in batch_paths)
    assert run_batch([str(src)], out, model=tiny_model, resume=True).skipped == 3


@pytest.mark.parametrize(("header", "message"), [("path,site,site", "two columns named 'site'"),
                                                 ("path,,site", "a column without a name")])  # fmt: skip
def test_manifest_header_damage_is_one_line(header, message, tiny_model, tmp_path):
    man = tmp_path / "m.csv"
    man.write_text(f"{header}\na.png,x,y\n")
    with pytest.raises(BatchError, match=message):
        run_batch([str(man)], tmp_path / "o.parquet", model=tiny_model)
