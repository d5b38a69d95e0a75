"""The commands that measure a model: ``evaluate``, ``compare``, ``robustness``, ``adapt``, ``info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumo.cli.common import ModelOpt, Split, ThresholdOpt, _default, checked_threshold, err, out


def evaluate(
    data_dir: Annotated[Path, typer.Argument(help="Folder of NORMAL/ and PNEUMONIA/ (or a root with a split level)")],
    out_dir: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="Folder for report.txt, metrics.json and plots")
    ],
    model: ModelOpt = None,
    split: Annotated[
        Split | None,
        typer.Option(help="Which split of a root with train/val/test" + _default("test; val with --split-csv")),
    ] = None,
    split_csv: Annotated[Path | None, typer.Option(help="Evaluate the 'val' rows of a `pneumo data split` CSV")] = None,
    threshold: ThresholdOpt = None,
    mirror: Annotated[bool, typer.Option("--tta", help="Average with the mirrored image")] = False,
) -> None:
    """Evaluate a model on labelled images: report, metrics with 95 % intervals, plots and a gallery.

    Intervals: Wilson for accuracy, sensitivity, specificity, precision and NPV; a class-stratified bootstrap for
    AUC, F1, ECE and Brier. Files: report.txt, metrics.json, predictions.csv (predict's columns, then label and
    correct), confusion matrix, ROC, PR, reliability and gallery PNGs.

    Example: pneumo evaluate chest_xray --split test -o eval/
    """
    from pneumo.evaluation.run import evaluate_folder

    threshold = checked_threshold(threshold)
    split_name = None if split is None else split.value
    result = evaluate_folder(
        data_dir, out_dir, model=model, split=split_name, split_csv=split_csv, threshold=threshold, mirror=mirror
    )
    out.print(result["report"], highlight=False)
    out.print(f"wrote {out_dir}", highlight=False)


def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run directories, model files or `evaluate` output folders")],
    out_md: Annotated[
        Path | None, typer.Option("--output", "-o", "--out", help="Markdown table to write" + _default("print it"))
    ] = None,
    out_csv: Annotated[Path | None, typer.Option("--csv", help="CSV to write")] = None,
    by_recipe: Annotated[
        bool,
        typer.Option(
            "--by-recipe",
            help="Also pool runs whose training configs differ only by seed: each figure as the mean (lowest-highest "
            "seed), with what each recipe changes against the first",
        ),
    ] = False,
) -> None:
    """One comparison table of trained models (accuracy, sensitivity, specificity, AUC, F1, the worst shift and the
    worst held-out period, the lung checks, size, speed).

    Example: pneumo compare runs/* -o comparison.md --csv comparison.csv --by-recipe
    """
    from pneumo import atomic
    from pneumo.evaluation.compare import format_markdown, write_comparison

    rows = write_comparison(runs, None, out_csv)
    text = format_markdown(rows)
    if by_recipe:
        from pneumo.recipes import format_recipes, group_recipes

        text += "\nBy recipe (mean, lowest-highest run):\n\n" + format_recipes(group_recipes(rows))
    if out_md is not None:
        atomic.write_text(out_md, text + "\n")
    print(text)


def robustness(
    data_dir: Annotated[Path, typer.Argument(help="Dataset root the split CSV refers to")],
    split_csv: Annotated[Path, typer.Option(help="A `pneumo data split` CSV; its val rows are used")],
    model: ModelOpt = None,
    extra: Annotated[
        list[Path] | None, typer.Option(help="More labelled folders to report, e.g. original-size images")
    ] = None,
    out_json: Annotated[Path | None, typer.Option("--output", "-o", "--out", help="Write the results as JSON")] = None,
    mirror: Annotated[bool, typer.Option("--tta", help="Also average with the mirror images")] = False,
    atlas: Annotated[
        Path | None,
        typer.Option(help="Lung atlas PNG for the lung checks on validation" + _default("../shared/data's, if there")),
    ] = None,
    lung_masks: Annotated[
        Path | None,
        typer.Option(
            help="Folder of per-image lung masks (CLASS/STEM.png, 255 = lung) for the --extra sets"
            + _default("../shared/data's, if there")
        ),
    ] = None,
) -> None:
    """The shift suite: metrics under zoom, squeeze, translation, exposure, contrast, blur, sharpening, JPEG,
    resolution loss and noise, the worst case over them first; the bacterial / viral split too, for a subtype model;
    the lung checks (the lungs hidden, only the lungs shown) with an atlas and with per-image masks.

    Example: pneumo robustness chest_xray --split-csv split.csv -o robustness.json

    Example (your own lung masks): pneumo robustness chest_xray --split-csv split.csv --extra test --lung-masks masks
    """
    from pneumo.evaluation.robustness import format_table
    from pneumo.evaluation.run import shift_suite

    results = shift_suite(
        data_dir, split_csv, model=model, extra=extra or (), mirror=mirror, out_json=out_json,
        atlas=atlas or True, lung_masks=lung_masks or True,
    )  # fmt: skip
    print(format_table(results))


def adapt(
    site_folder: Annotated[Path, typer.Argument(help="The site's labelled sample: NORMAL/ and PNEUMONIA/ folders")],
    out_file: Annotated[
        Path, typer.Option("--output", "-o", "--out", help="Site model file to write, e.g. site.pneumo")
    ],
    model: ModelOpt = None,
    target_sensitivity: Annotated[float, typer.Option(help="Sensitivity the site threshold is chosen for")] = 0.98,
    report: Annotated[Path | None, typer.Option(help="Folder for report.txt, metrics.json and plots")] = None,
    refer: Annotated[bool, typer.Option("--refer", help="Three-way NORMAL / REFER / PNEUMONIA decisions")] = False,
    refer_error: Annotated[
        float | None,
        typer.Option(help="With --refer: bound on each confident decision's error" + _default("1 - target")),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds (by patient)")] = 5,
    name: Annotated[
        str | None, typer.Option(help="Site name recorded in the file" + _default("the folder name"))
    ] = None,
    patients: Annotated[
        Path | None,
        typer.Option(help="CSV path,patient_id (paths relative to SITE_FOLDER)" + _default("from the file names")),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the folds and the bootstrap")] = 0,
) -> None:
    """Refit calibration, threshold (and a REFER band) on a site's own labelled sample; write a site model file.

    Example: pneumo adapt site_sample/ -o site.pneumo --report site_report/
    """
    from pneumo.adapt.site import adapt_site

    result = adapt_site(
        site_folder, out_file, model=model, target_sensitivity=target_sensitivity, report_dir=report, refer=refer,
        refer_error=refer_error, folds=folds, name=name, seed=seed, patients_csv=patients,
    )  # fmt: skip
    out.print(result.report, highlight=False, markup=False, soft_wrap=True)
    for w in result.warnings:
        err.print(f"[bold red]WARNING:[/] {w}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_file}" + (f" and {report}/" if report else ""), highlight=False)


def info(model: ModelOpt = None) -> None:
    """Print a model file's metadata (its model card) as JSON.

    Its figures, labelled with what they were measured on, and a site calibration in force go to stderr.

    Example: pneumo info -m site.pneumo
    """
    from pneumo.modelfile import heat_map_filler, load_model_file

    mf = load_model_file(model, parts=())
    meta = mf.meta
    print(meta.model_dump_json(indent=2))
    for line in meta.figures_summary():
        err.print(line, highlight=False, soft_wrap=True)
    filler = heat_map_filler(mf.arrays)
    err.print(f"heat map: occlusion, each hidden region filled with {filler}", highlight=False, soft_wrap=True)
    if (level := meta.lung_field()) is not None:
        blur = meta.arch_kwargs.get("field_blur")
        rest = f"averaged over {blur}-px squares" if blur else "mean grey"
        err.print(
            f"input: the network sees only the lung field (where at least {level:.0%} of the training images have "
            f"lung); the rest of the frame is {rest} inside the graph",
            highlight=False,
            soft_wrap=True,
        )
    if (site := meta.site) is not None:
        cv = site.cross_validated
        band = f"; REFER {site.refer.low:.3f}-{site.refer.high:.3f}" if site.refer else ""
        err.print(
            f"site calibration in force: {site.name} ({site.created}, {site.sample.n} images; threshold "
            f"{site.threshold:.4f}{band}; cross-validated sensitivity {cv.sensitivity.value:.3f}, specificity "
            f"{cv.specificity.value:.3f}) over {site.base.name} {site.base.version}",
            highlight=False,
            soft_wrap=True,
        )
