"""``pneumo compare`` is the library's :func:`pneumo.evaluation.compare.write_comparison`: the table printed, and
the same table (with its final newline) and the CSV written when asked."""

from __future__ import annotations

import csv
import json

from pneumo.cli import main


def _sources(tmp_path):
    out = []
    for name, acc in (("eval_a", 0.9), ("eval_b", 0.8)):
        d = tmp_path / name
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"accuracy": acc, "sensitivity": 0.97, "model": {"arch": "tiny"}}))
        out.append(str(d))
    return out


def test_compare_prints_the_table(tmp_path, capsys):
    assert main(["compare", *_sources(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("|") and "eval_a" in printed and "eval_b" in printed
    assert not list(tmp_path.glob("*.md"))


def test_compare_writes_what_it_prints(tmp_path, capsys):
    md, table = tmp_path / "out" / "cmp.md", tmp_path / "out" / "cmp.csv"
    assert main(["compare", *_sources(tmp_path), "-o", str(md), "--csv", str(table)]) == 0
    assert md.read_text() == capsys.readouterr().out  # the printed table, final newline included
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["eval_a", "eval_b"] and float(rows[1]["accuracy"]) == 0.8


def test_compare_csv_alone(tmp_path, capsys):
    assert main(["compare", *_sources(tmp_path), "--csv", str(tmp_path / "c.csv")]) == 0
    assert (tmp_path / "c.csv").is_file() and not list(tmp_path.glob("*.md"))
