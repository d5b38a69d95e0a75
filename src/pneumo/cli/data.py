"""``pneumo data inspect`` and ``pneumo data split``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumo.cli.common import SplitBy, _default, err, out
from pneumo.errors import InputError


def data_inspect(
    directory: Annotated[
        Path, typer.Argument(help="Dataset root: CLASS/ folders (NORMAL/, PNEUMONIA/), optionally under train/val/test")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    plots: Annotated[Path | None, typer.Option(help="Write histogram PNGs into this folder.")] = None,
    no_probe: Annotated[bool, typer.Option("--no-probe", help="Skip reading image headers.")] = False,
    verify: Annotated[
        bool | None,
        typer.Option(help="Decode every image to find damaged ones" + _default("on below 20,000 images")),
    ] = None,
) -> None:
    """Count images per split, class, subtype and patient; image sizes and modes; unreadable files.

    Example: pneumo data inspect chest_xray/train --plots plots/
    """
    from contextlib import nullcontext

    from pneumo.inspect_report import inspect_dataset, write_inspect_plots

    if not directory.is_dir():
        raise InputError(f"{directory}: not a folder")
    bar = nullcontext(None)
    if err.is_terminal and verify is not False and not no_probe:
        from rich.progress import Progress

        bar = Progress(console=err, transient=True)
    with bar as progress:
        advance = None
        if progress is not None:
            task = progress.add_task("decoding", total=None)
            advance = lambda n, total: progress.update(task, advance=n, total=total)  # noqa: E731
        report = inspect_dataset(directory, probe=not no_probe, workers=2, verify=verify, progress=advance)
    if json_out:
        print(report.model_dump_json(indent=2))
    else:
        out.print(report.to_text(), highlight=False, markup=False)
    if plots:
        for p in write_inspect_plots(report, plots):
            err.print(f"wrote {p}")


def data_split(
    directory: Annotated[Path, typer.Argument(help="Dataset root")],
    out_csv: Annotated[
        Path,
        typer.Option("--output", "-o", "--out", help="CSV to write (path,split,label,patient_id,subtype[,block])"),
    ],
    by: Annotated[
        SplitBy,
        typer.Option(
            help="blocks: hold out contiguous blocks of each patient-numbering sequence (acquisition periods), per "
            "class; patient: random patient-grouped split (flatters: every period on both sides)"
        ),
    ] = SplitBy.blocks,
    blocks: Annotated[int, typer.Option(min=1, help="Blocks per sequence (one at each end, the rest inside)")] = 3,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of each class held out for validation")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed (random split, or the block split's fallback)")] = 0,
) -> None:
    """Patient-grouped train/val split, by acquisition blocks (default) or at random; reproducible.

    Example: pneumo data split chest_xray -o split.csv
    """
    from collections import Counter

    from pneumo.data import make_split

    by = by.value
    rows, unsequenced = make_split(directory, out_csv, val_fraction=val_fraction, seed=seed, by=by, n_blocks=blocks)
    counts = Counter((r.split, r.label) for r in rows)
    patients = {s: len({r.patient_id for r in rows if r.split == s}) for s in ("train", "val")}
    for s in ("train", "val"):
        per_class = ", ".join(f"{lbl} {n}" for (sp, lbl), n in sorted(counts.items()) if sp == s)
        out.print(f"{s}: {per_class} ({patients[s]} patients)", highlight=False)
    if by == "blocks":
        held = Counter(r.block for r in rows if r.split == "val" and r.block != "random")
        for block, n in sorted(held.items()):
            out.print(f"  held-out block {block}: {n} images", highlight=False)
        if unsequenced:
            err.print(
                f"WARNING: {unsequenced} of {len(rows)} images have names outside every patient-numbering sequence "
                "(IM-, NORMAL2-IM-, person…_bacteria, person…_virus); they were split AT RANDOM by patient (block "
                "'random'), which flatters the validation figures",
                highlight=False,
            )
    out.print(f"wrote {out_csv}", highlight=False)
