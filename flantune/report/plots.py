"""Report figures as PNG bytes: confusion matrices and training curves.

Figures are drawn on matplotlib's Agg canvas through the object-oriented API (Figure +
FigureCanvasAgg), never through pyplot: no window, no global backend switch imposed on a program
that imports flantune, and no figure left open in pyplot's registry. PNGs carry no metadata
(matplotlib's version stamp), so the same numbers give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from flantune.metrics.classification import INVALID  # a prediction that matches no choice

DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def confusion_counts(gold_idx: Sequence[int], pred_idx: Sequence[int], n_labels: int) -> tuple[np.ndarray, bool]:
    """Rows: gold class; columns: predicted class, plus a last "invalid" column only when some
    prediction matched no choice. Returns (counts, has_invalid)."""
    pred = np.asarray(pred_idx)
    has_invalid = bool(np.any(pred == INVALID))
    labels = list(range(n_labels)) + ([INVALID] if has_invalid else [])
    counts = confusion_matrix(np.asarray(gold_idx), pred, labels=labels)
    return counts[:n_labels], has_invalid  # gold is never invalid: drop that row


def confusion_matrix_png(counts: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """`counts` as `confusion_counts` gives them: one more column than `labels` when some prediction
    matched no choice."""
    has_invalid = counts.shape[1] > len(labels)
    columns = list(labels) + (["invalid"] if has_invalid else [])
    side = 1.6 + 0.55 * len(columns)
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
    ax.set_xticks(range(len(columns)), columns, rotation=45 if len(columns) > 3 else 0, ha="right"
                  if len(columns) > 3 else "center")
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=9)
    if has_invalid:  # set the "matched no choice" column apart from the real classes
        ax.axvline(len(labels) - 0.5, color="grey", linewidth=1.5)
    dark = counts.max() / 2
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{v:d}", ha="center", va="center", fontsize=8, color="white" if v > dark else "black")
    return _png(fig)


def training_curves_png(log_history: list[dict[str, Any]] | None, primary_key: str, title: str) -> bytes | None:
    """Training loss by step (left) and the validation `primary_key` (e.g. "eval_imdb/accuracy" or
    "eval_score") by step (right). None when the log holds neither."""
    log = log_history or []
    train = [(e["step"], e["loss"]) for e in log if "loss" in e and "step" in e]
    valid = [(e["step"], e[primary_key]) for e in log if primary_key in e and "step" in e]
    if not train and not valid:
        return None
    fig = Figure(figsize=(8, 3), layout="constrained")
    fig.suptitle(title, fontsize=10)
    left, right = fig.subplots(1, 2)
    for ax, points, label, colour in ((left, train, "training loss", "tab:blue"),
                                      (right, valid, f"validation {primary_key.removeprefix('eval_')}",
                                       "tab:orange")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, color=colour, marker="o" if len(points) < 30 else None, markersize=3)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    return _png(fig)


def overlaid_curves_png(runs: list[tuple[str, int, list[dict[str, Any]] | None]], primary_key: str,
                        title: str) -> bytes | None:
    """Training curves of several runs in one figure: training loss (left) and validation `primary_key` (right)
    by step. `runs`: (group, replicate, log_history); a group (a sweep's setting) has one colour, its replicates
    (seeds) line styles. None when no log holds either."""
    groups = list(dict.fromkeys(g for g, _, _ in runs))
    colours = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    styles = ("-", "--", ":", "-.")
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    fig.suptitle(title, fontsize=10)
    left, right = fig.subplots(1, 2)
    drawn = False
    for group, replicate, log in runs:
        for ax, key in ((left, "loss"), (right, primary_key)):
            points = [(e["step"], e[key]) for e in log or [] if key in e and "step" in e]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=colours[group], linestyle=styles[replicate % len(styles)],
                        marker="o" if len(points) < 30 else None, markersize=3,
                        label=group if replicate == 0 else None)
                drawn = True
    if not drawn:
        return None
    for ax, label in ((left, "training loss"), (right, f"validation {primary_key.removeprefix('eval_')}")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    right.legend(fontsize=7, loc="best")
    return _png(fig)
