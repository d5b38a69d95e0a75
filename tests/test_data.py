"""Dataset scan, Kermany names, patient-grouped split and inspect report, on tiny synthetic folders."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pneumo.data import block_split, make_split, patient_number, patient_sequence, split_dataset
from pneumo.inputs import ImageRecord, parse_kermany_name, read_split_csv, scan_dataset, write_split_csv
from pneumo.inspect_report import inspect_dataset, write_inspect_plots


def _image(path: Path, seed: int, size: int = 32, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


# class folder -> (file name, kind); kinds other than png/jpeg are the broken or ignored files.
_FILES = {
    "normal": [
        ("IM-0001-0001.png", "png"),
        ("IM-0001-0002.jpeg", "jpeg"),
        ("IM-0002-0001-0002.png", "png"),
        ("NORMAL2-IM-0001-0001.jpeg", "jpeg"),
        ("zero.jpeg", "empty"),
    ],
    "Pneumonia": [
        ("person1_bacteria_1.jpeg", "jpeg"),
        ("person1_bacteria_2.png", "png"),
        ("person2_virus_3.JPEG", "jpeg"),
        ("person3_bacteria_4", "png"),  # no extension: still an image
        ("notes.jpeg", "text"),
        ("readme.txt", "text"),  # ignored: not an image suffix
        (".DS_Store", "text"),  # ignored: hidden
    ],
}


def _make_tree(root: Path, with_splits: bool) -> Path:
    seed = 0
    for split in ("train", "val") if with_splits else (None,):
        for folder, files in _FILES.items():
            base = root / split / folder if split else root / folder
            for name, kind in files:
                seed += 1
                path = base / name
                if kind in ("png", "jpeg"):
                    _image(path, seed, fmt=kind.upper())
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"" if kind == "empty" else b"this is not an image\n")
    return root


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    return _make_tree(tmp_path / "flat", with_splits=False)


@pytest.fixture
def nested(tmp_path: Path) -> Path:
    return _make_tree(tmp_path / "nested", with_splits=True)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1234_bacteria_5678.jpeg", ("person1234_bacteria", "bacteria")),
        ("person56_virus_112.jpeg", ("person56_virus", "virus")),
        ("person1_bacteria_1.jpeg", ("person1_bacteria", "bacteria")),
        ("person447_virus_921_1.jpeg", ("person447_virus", "virus")),
        ("IM-0115-0001.jpeg", ("IM-0115", "none")),
        ("IM-0429-0001-0002.jpeg", ("IM-0429", "none")),
        ("NORMAL2-IM-0427-0001.jpeg", ("NORMAL2-IM-0427", "none")),
        ("NORMAL2-IM-1345-0001-0002.jpeg", ("NORMAL2-IM-1345", "none")),
        ("some/dir/person7_virus_9.png", ("person7_virus", "virus")),
        ("person7_virus_9", ("person7_virus", "virus")),
        ("scan_0042.png", ("scan_0042", "unknown")),
        ("person7_fungus_9.jpeg", ("person7_fungus_9", "unknown")),
        ("IM-0115.jpeg", ("IM-0115", "unknown")),
    ],
)
def test_parse_kermany_name_golden(name: str, expected: tuple[str, str]) -> None:
    assert parse_kermany_name(name) == expected


@given(
    number=st.integers(0, 10**6),
    subtype=st.sampled_from(["bacteria", "virus"]),
    image=st.integers(0, 10**5),
    suffix=st.sampled_from([".jpeg", ".jpg", ".png", ".JPEG", ""]),
)
def test_person_id_round_trips(number: int, subtype: str, image: int, suffix: str) -> None:
    assert parse_kermany_name(f"person{number}_{subtype}_{image}{suffix}") == (f"person{number}_{subtype}", subtype)


@given(
    prefix=st.sampled_from(["", "NORMAL-", "NORMAL2-", "NORMAL13-"]),
    series=st.integers(0, 9999),
    views=st.lists(st.integers(0, 9999), min_size=1, max_size=3),
)
def test_im_id_round_trips(prefix: str, series: int, views: list[int]) -> None:
    patient = f"{prefix}IM-{series:04d}"
    name = patient + "".join(f"-{v:04d}" for v in views) + ".jpeg"
    assert parse_kermany_name(name) == (patient, "none")


def test_scan_flat_layout(flat: Path) -> None:
    ds = scan_dataset(flat)
    assert ds.classes == ["NORMAL", "PNEUMONIA"]
    names = [Path(r.rel).name for r in ds.records]
    assert "readme.txt" not in names and ".DS_Store" not in names
    assert "person3_bacteria_4" in names and "zero.jpeg" in names and "notes.jpeg" in names
    assert Counter(r.label for r in ds.records) == {"NORMAL": 5, "PNEUMONIA": 5}
    assert {r.split for r in ds.records} == {None}
    subtypes = Counter((r.label, r.subtype) for r in ds.records)
    assert subtypes == {
        ("NORMAL", "none"): 5,
        ("PNEUMONIA", "bacteria"): 3,
        ("PNEUMONIA", "virus"): 1,
        ("PNEUMONIA", "unknown"): 1,
    }
    assert all(r.class_index == ds.classes.index(r.label) for r in ds.records)
    assert [(r.label, r.rel) for r in ds.records] == sorted((r.label, r.rel) for r in ds.records)


def test_scan_with_split_level_is_deterministic(nested: Path) -> None:
    ds = scan_dataset(nested)
    assert ds.splits == ["train", "val"]
    assert Counter((r.split, r.label) for r in ds.records) == {
        ("train", "NORMAL"): 5,
        ("train", "PNEUMONIA"): 5,
        ("val", "NORMAL"): 5,
        ("val", "PNEUMONIA"): 5,
    }
    assert ds.records == scan_dataset(nested).records
    assert all(r.path == nested / r.rel for r in ds.records)
    assert len(ds.training_records()) == 10


def test_scan_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        scan_dataset(tmp_path / "nope")


def test_inspect_lists_bad_files_and_counts(nested: Path) -> None:
    report = inspect_dataset(nested)
    assert report.images == {"train": {"NORMAL": 5, "PNEUMONIA": 5}, "val": {"NORMAL": 5, "PNEUMONIA": 5}}
    assert report.subtypes["PNEUMONIA"] == {"bacteria": 6, "unknown": 2, "virus": 2}
    bad = {u.path: u.reason for u in report.unreadable}
    assert sorted(bad) == sorted(
        f"{s}/{c}" for s in ("train", "val") for c in ("normal/zero.jpeg", "Pneumonia/notes.jpeg")
    )
    assert all(Path(p).name in why for p, why in bad.items())  # each reason names its file
    assert report.common_sizes == [("32x32", 16)]
    assert report.width.max == 32 and report.height.min == 32
    assert sum(report.formats.values()) == 16 and set(report.formats) == {"PNG", "JPEG"}
    # Patients: IM-0001, IM-0002, NORMAL2-IM-0001, zero, person1, person2, person3, notes (same names in both splits)
    assert report.n_patients == 8
    assert report.images_per_patient.max == 4  # IM-0001 and person1: 2 images in each of two splits
    text = report.to_text()
    assert "notes.jpeg" in text and "PNEUMONIA 5" in text
    assert json.loads(report.model_dump_json())["n_images"] == 20
    assert "sizes" not in json.loads(report.model_dump_json())


def test_inspect_without_probe_reads_no_header(flat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pneumo.inspect_report as ir

    def boom(*a, **k):
        raise AssertionError("probe_image called")

    monkeypatch.setattr(ir, "probe_image", boom)
    report = inspect_dataset(flat, probe=False)
    assert report.n_images == 10 and report.unreadable == [] and not report.probed


def test_inspect_plots(nested: Path, tmp_path: Path) -> None:
    written = write_inspect_plots(inspect_dataset(nested), tmp_path / "plots")
    assert [p.name for p in written] == ["images_per_class.png", "image_sizes.png", "images_per_patient.png"]
    for p in written:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100


def _synthetic_records(n_patients: int = 400, seed: int = 1) -> list[ImageRecord]:
    rng = random.Random(seed)
    records = []
    for p in range(n_patients):
        label, subtype = rng.choice([("NORMAL", "none"), ("PNEUMONIA", "bacteria"), ("PNEUMONIA", "virus")])
        patient = f"IM-{p:04d}" if label == "NORMAL" else f"person{p}"
        for k in range(rng.choice([1, 1, 1, 2, 2, 3, 5, 8])):
            name = f"{patient}-{k:04d}.jpeg" if label == "NORMAL" else f"{patient}_{subtype}_{k}.jpeg"
            rel = f"{label}/{name}"
            records.append(ImageRecord(Path(rel), rel, None, label, int(label != "NORMAL"), patient, subtype))
    return records


def _val_fractions(records: list[ImageRecord], splits: list[str]) -> dict[tuple[str, str], float]:
    total, val = Counter(), Counter()
    for r, s in zip(records, splits, strict=True):
        total[r.label, r.subtype] += 1
        val[r.label, r.subtype] += s == "val"
    return {k: val[k] / total[k] for k in total}


def _leaks(records: list[ImageRecord], splits: list[str]) -> set[str]:
    sides = defaultdict(set)
    for r, s in zip(records, splits, strict=True):
        sides[r.patient_id].add(s)
    return {p for p, s in sides.items() if len(s) > 1}


def test_split_groups_patients_and_stratifies() -> None:
    records = _synthetic_records()
    splits = split_dataset(records, val_fraction=0.2, seed=3)
    assert set(splits) == {"train", "val"}
    assert _leaks(records, splits) == set()
    for stratum, frac in _val_fractions(records, splits).items():
        assert frac == pytest.approx(0.2, abs=0.03), stratum


def test_bacterial_and_viral_numbers_are_different_children() -> None:
    # Kermany numbers bacterial and viral patients separately: person100_bacteria and person100_virus are two
    # children, and merging them would put one child's images on both sides of nothing and two children together.
    a, b = (parse_kermany_name(n)[0] for n in ("person9999_bacteria_1.jpeg", "person9999_virus_2.jpeg"))
    assert a != b
    assert patient_sequence(a) == ("person_bacteria", 9999) and patient_sequence(b) == ("person_virus", 9999)
    assert patient_number("person9999_virus_2.jpeg") == 9999


def test_split_keeps_a_patients_images_together() -> None:
    records = _synthetic_records(50)
    names = ("person9999_bacteria_1.jpeg", "person9999_bacteria_2.jpeg")
    same = [ImageRecord(Path(n), n, None, "PNEUMONIA", 1, *parse_kermany_name(n)) for n in names]
    for seed in range(20):
        splits = split_dataset(records + same, val_fraction=0.3, seed=seed)
        assert splits[-1] == splits[-2]


def _sequence_records(n: int = 200) -> list[ImageRecord]:
    """``n`` patients in each of the four Kermany sequences, 1-3 images each, numbered from 1."""
    rng = random.Random(5)
    names = []
    for k in range(1, n + 1):
        for v in range(rng.choice([1, 2, 3])):
            names += [("NORMAL", f"IM-{k:04d}-{v + 1:04d}.jpeg"), ("NORMAL", f"NORMAL2-IM-{k:04d}-{v + 1:04d}.jpeg")]
            names += [("PNEUMONIA", f"person{k}_bacteria_{v}.jpeg"), ("PNEUMONIA", f"person{k}_virus_{v}.jpeg")]
    return [
        ImageRecord(Path(f"{c}/{n}"), f"{c}/{n}", None, c, int(c != "NORMAL"), *parse_kermany_name(n)) for c, n in names
    ]


def test_block_split_holds_out_contiguous_blocks_at_both_ends_and_inside() -> None:
    records = _sequence_records(200)
    result = block_split(records, val_fraction=0.1, n_blocks=3)
    assert _leaks(records, result.splits) == set() and result.unsequenced == 0
    held: dict[str, set[int]] = defaultdict(set)
    for r, side, block in zip(records, result.splits, result.blocks, strict=True):
        assert (side == "val") == bool(block)
        if block:
            seq, number = patient_sequence(r.patient_id)
            assert block.startswith(f"{r.label} {seq} ")
            held[seq].add(number)
    assert set(held) == {"IM", "NORMAL2-IM", "person_bacteria", "person_virus"}
    for numbers in held.values():
        assert len(numbers) == 20  # 10 % of each sequence's 200 patients
        runs = np.split(sorted(numbers), np.flatnonzero(np.diff(sorted(numbers)) > 1) + 1)
        assert [len(r) for r in runs] == [7, 7, 6]  # three contiguous blocks...
        assert runs[0][0] == 1 and runs[-1][-1] == 200  # ...one at each end...
        assert runs[1][0] >= 80 and runs[1][-1] <= 120  # ...and one in the middle
    # the rule reads names only: another seed gives the same split
    assert block_split(records, val_fraction=0.1, n_blocks=3, seed=7).splits == result.splits


def test_block_split_falls_back_to_random_for_other_names() -> None:
    records = _sequence_records(40) + [
        ImageRecord(Path(f"NORMAL/scan{i}.png"), f"NORMAL/scan{i}.png", None, "NORMAL", 0, f"scan{i}", "none")
        for i in range(30)
    ]
    result = block_split(records, val_fraction=0.2)
    assert result.unsequenced == 30
    loose = [
        (s, b) for r, s, b in zip(records, result.splits, result.blocks, strict=True) if r.rel.startswith("NORMAL/scan")
    ]
    assert {b for s, b in loose if s == "val"} == {"random"} and sum(s == "val" for s, _ in loose) == 6


def test_block_split_csv_round_trips_the_block(tmp_path: Path) -> None:
    records = _sequence_records(30)
    result = block_split(records)
    write_split_csv(tmp_path / "s.csv", records, result.splits, result.blocks)
    rows = read_split_csv(tmp_path / "s.csv")
    assert [r.block for r in rows] == result.blocks
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "path,split,label,patient_id,subtype,block"


def test_split_csv_reproducible(tmp_path: Path) -> None:
    records = _synthetic_records()
    a, b, c = (tmp_path / f"{n}.csv" for n in "abc")
    write_split_csv(a, records, split_dataset(records, seed=0))
    write_split_csv(b, records, split_dataset(records, seed=0))
    write_split_csv(c, records, split_dataset(records, seed=1))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = read_split_csv(a)
    assert a.read_text().splitlines()[0] == "path,split,label,patient_id,subtype"
    assert [(r.path, r.label, r.patient_id, r.subtype) for r in rows] == [
        (r.rel, r.label, r.patient_id, r.subtype) for r in records
    ]


def test_split_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_dataset(_synthetic_records(5), val_fraction=1.0)


def test_read_split_csv_names_missing_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.png,NORMAL\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*patient_id"):
        read_split_csv(bad)


@pytest.mark.parametrize("by", ["patient", "blocks"])
def test_make_split_uses_train_only(nested: Path, tmp_path: Path, by: str) -> None:
    rows, unsequenced = make_split(nested, tmp_path / "split.csv", val_fraction=0.5, seed=0, by=by)
    assert len(rows) == 10 and all(r.path.startswith("train/") for r in rows)
    assert read_split_csv(tmp_path / "split.csv") == rows
    assert unsequenced == (2 if by == "blocks" else 0)  # zero.jpeg and notes.jpeg number no sequence


# Real data: the scan and header probe only, no decode.


def test_real_inspect_counts(kermany_train: Path) -> None:
    report = inspect_dataset(kermany_train)
    assert report.images == {"all": {"NORMAL": 1341, "PNEUMONIA": 3875}}
    assert report.subtypes["PNEUMONIA"] == {"bacteria": 2530, "virus": 1345}
    assert report.subtypes["NORMAL"] == {"none": 1341}
    assert report.unreadable == []
    # bacterial and viral children are numbered separately: 1,353 + 1,090 children, not ~1,600 merged numbers
    assert report.patients_per_class["PNEUMONIA"] == 2443


def test_real_split_no_leak_and_fractions(kermany_train: Path) -> None:
    records = scan_dataset(kermany_train).records
    splits = split_dataset(records, val_fraction=0.1, seed=0)
    assert _leaks(records, splits) == set()
    for stratum, frac in _val_fractions(records, splits).items():
        assert frac == pytest.approx(0.1, abs=0.005), stratum
    per_class = Counter(r.label for r, s in zip(records, splits, strict=True) if s == "val")
    assert per_class["NORMAL"] / 1341 == pytest.approx(0.1, abs=0.01)
    assert per_class["PNEUMONIA"] / 3875 == pytest.approx(0.1, abs=0.01)
