"""Evaluation figures written as PNG files: confusion matrix, ROC, precision-recall, reliability, image gallery.

Figures are built with matplotlib's object API (``Figure`` rendered by the Agg canvas), not ``pyplot``: no global
backend switch, no figure registry to leak, and safe to call from a server thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pneumo.evaluation.metrics import RELIABILITY_BINS, expected_calibration_error, operating_point, reliability_bins

DPI = 120
WRONG = "#c62828"
RIGHT = "#1b5e20"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Confusion matrix",
) -> Path:
    """Counts and row-normalised percentages (rows true, columns predicted); colour is the row percentage."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    k = len(class_names)
    fig = Figure(figsize=(1.6 * k + 2, 1.4 * k + 1.5))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row %")
    for i in range(k):
        for j in range(k):
            colour = "white" if frac[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.1f}%", ha="center", va="center", color=colour, fontsize=11)
    ax.set_xticks(range(k), labels=class_names)
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc(y: np.ndarray, prob: np.ndarray, path: str | Path, threshold: float | None = None) -> Path:
    """ROC curve with its AUC; the operating point at ``threshold`` is marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if _one_class(ax, y, "ROC curve"):
        return _save(fig, path)
    fpr, tpr, _ = roc_curve(y, prob)
    ax.plot(fpr, tpr, lw=2, label=f"AUC = {roc_auc_score(y, prob):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    if threshold is not None:
        op = operating_point(y, prob, threshold)
        ax.plot(1 - op["specificity"], op["sensitivity"], "o", c=WRONG, ms=8, label=_op_label(op))
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="1 - specificity", ylabel="Sensitivity", title="ROC curve")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def _one_class(ax, y: np.ndarray, title: str) -> bool:
    """Say so on the axes instead of raising when the curve is undefined (e.g. a pneumonia-only folder)."""
    if np.unique(np.asarray(y)).size >= 2:
        return False
    ax.text(0.5, 0.5, "undefined: only one class\nin these labels", ha="center", va="center", fontsize=12)
    ax.set_title(title)
    ax.set_axis_off()
    return True


def _op_label(op: dict) -> str:
    return f"t={op['threshold']:.3f}: sens {op['sensitivity']:.3f}, spec {op['specificity']:.3f}"


def plot_pr(y: np.ndarray, prob: np.ndarray, path: str | Path, threshold: float | None = None) -> Path:
    """Precision-recall curve with its average precision and the prevalence baseline; operating point marked."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if _one_class(ax, y, "Precision-recall curve"):
        return _save(fig, path)
    precision, recall, _ = precision_recall_curve(y, prob)
    ax.step(recall, precision, where="post", lw=2, label=f"AP = {average_precision_score(y, prob):.3f}")
    ax.axhline(float(np.mean(y)), ls="--", c="grey", lw=1, label="prevalence")
    if threshold is not None:
        op = operating_point(y, prob, threshold)
        ax.plot(op["sensitivity"], op["ppv"], "o", c=WRONG, ms=8, label=f"t={threshold:.3f}: PPV {op['ppv']:.3f}")
    ax.set(xlim=(-0.01, 1.01), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
    ax.set_title("Precision-recall curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_reliability(prob: np.ndarray, y: np.ndarray, path: str | Path, n_bins: int = RELIABILITY_BINS) -> Path:
    """Reliability diagram: observed pneumonia rate per probability bin against the diagonal, case counts below."""
    rel = reliability_bins(prob, y, n_bins)
    edges, count = rel["edges"], rel["count"]
    width = edges[1] - edges[0]
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = count > 0
    top.bar(edges[:-1][filled], rel["accuracy"][filled], width=width, align="edge", alpha=0.6, ec="k", label="observed")
    top.plot(rel["confidence"][filled], rel["accuracy"][filled], "o", c=WRONG, ms=4, label="bin mean p")
    top.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="Observed pneumonia rate")
    top.set_title(f"Reliability (ECE = {expected_calibration_error(prob, y, n_bins):.3f})")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], count, width=width, align="edge", color="grey", ec="k")
    for x, c in zip(edges[:-1], count, strict=True):
        if c:
            bottom.text(x + width / 2, c, str(int(c)), ha="center", va="bottom", fontsize=7)
    bottom.set(xlim=(0, 1), xlabel="Predicted probability of pneumonia", ylabel="Cases")
    bottom.set_ylim(0, max(1, int(count.max())) * 1.25)
    return _save(fig, path)


def select_gallery(correct: np.ndarray, n: int, seed: int = 0) -> list[int]:
    """Indices for a gallery of ``n``: all mistakes if they fill at most half (else a random half), the rest
    correct cases; mistakes first. Deterministic for a given ``seed``."""
    correct = np.asarray(correct, dtype=bool)
    wrong, right = np.flatnonzero(~correct), np.flatnonzero(correct)
    n_wrong = min(wrong.size, max(n // 2, n - right.size))
    n_right = min(right.size, n - n_wrong)
    rng = np.random.default_rng(seed)
    pick_w = np.sort(rng.choice(wrong, n_wrong, replace=False)) if n_wrong else wrong[:0]
    pick_r = np.sort(rng.choice(right, n_right, replace=False)) if n_right else right[:0]
    return [int(i) for i in np.concatenate([pick_w, pick_r])]


def _thumbnail(img: np.ndarray, side: int = 256) -> np.ndarray:
    img = np.asarray(img)
    step = max(1, max(img.shape[:2]) // side)  # striding is enough for a 2-inch tile and avoids a resize library
    return img[::step, ::step]


def plot_gallery(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    pred_names: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    path: str | Path,
    rows: int = 4,
    cols: int = 6,
    seed: int = 0,
) -> Path:
    """A rows x cols grid of images titled ``"true / pred p=0.93"`` (``p`` = probability of pneumonia).

    Mistakes (true != pred) get a red title and frame and come first; see :func:`select_gallery`.
    """
    correct = np.array([t == p for t, p in zip(true_names, pred_names, strict=True)])
    chosen = select_gallery(correct, rows * cols, seed)
    fig = Figure(figsize=(2.1 * cols, 2.35 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    for ax, i in zip(axes, chosen, strict=False):
        img = _thumbnail(images[i])
        ax.set_axis_on()
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        colour = RIGHT if correct[i] else WRONG
        ax.set_title(f"{true_names[i]} / {pred_names[i]} p={float(scores[i]):.2f}", color=colour, fontsize=8)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(1 if correct[i] else 3)
    fig.suptitle(f"{int((~correct).sum())} mistakes of {correct.size}; red = wrong (shown first)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
