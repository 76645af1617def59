"""Matplotlib figures of one run: learning curves, confusion matrix, misclassified images.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`), not pyplot:
no global figure registry to leak from inside long sweeps, no GUI backend needed; saving
a PNG renders with Agg. Each function returns the Figure; tracking logs it to MLflow
(`log_figure`), and nothing here knows about MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fmnist_core.data import IMAGE_SIDE


def learning_curves(history: Sequence[dict[str, float]], *, title: str = "") -> Figure:
    """Loss and accuracy per epoch, train and validation, side by side."""
    epochs = list(range(1, len(history) + 1))
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, acc_axes = figure.subplots(1, 2)
    for axes, metric in ((loss_axes, "loss"), (acc_axes, "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                axes.plot(epochs, [m[key] for m in history], style, markersize=3, label=split)
        axes.set_xlabel("epoch")
        epoch_axis(axes)
        axes.set_ylabel("cross-entropy" if metric == "loss" else "accuracy")
        axes.grid(alpha=0.3)
        axes.legend()
    loss_axes.set_title("loss")
    acc_axes.set_title("accuracy")
    if title:
        figure.suptitle(title)
    return figure


def epoch_axis(axes) -> None:
    """Whole epochs as the x ticks, for one epoch too: MaxNLocator wants two ticks by default and, with
    one epoch in view, falls back to fractions (0.945 ... 1.050)."""
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def curve_marker(points: int) -> str:
    """The marker of a per-epoch curve of `points` epochs: a dot for one (a line through one point draws
    nothing), none otherwise."""
    return "o" if points == 1 else ""


def confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], *, title: str = "") -> Figure:
    """Counts of (true, predicted) pairs; the colour is the share of the true class's samples."""
    counts = confusion.cpu().long()
    shares = counts.double() / counts.sum(1, keepdim=True).clamp(min=1)
    n = len(classes)
    figure = Figure(figsize=(8, 7), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="share of the true class")
    for row in range(n):
        for column in range(n):
            axes.text(column, row, str(int(counts[row, column])), ha="center", va="center", fontsize=8,
                      color="white" if shares[row, column] > 0.5 else "black")
    axes.set_xticks(range(n), classes, rotation=45, ha="right")
    axes.set_yticks(range(n), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or f"confusion matrix ({int(counts.sum())} images)")
    return figure


def misclassified_grid(pixels: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                       classes: Sequence[str], *, limit: int = 36, columns: int = 6) -> Figure:
    """Up to `limit` misclassified images (pixels 0..255 [N, 784]), each labelled true -> predicted.

    One mosaic image on one axes, not an axes per image: it renders in a fraction of the time,
    which a sweep pays once per trial."""
    wrong = (labels.cpu() != predictions.cpu()).nonzero().flatten()[:limit].tolist()
    rows = max(1, -(-len(wrong) // columns))
    cell, width = IMAGE_SIDE + 10, IMAGE_SIDE + 2  # pixels: a strip above each image for its label, a gap
    mosaic = torch.zeros(rows * cell, columns * width)
    for slot, i in enumerate(wrong):
        row, column = divmod(slot, columns)
        top, left = row * cell + 10, column * width + 1
        mosaic[top:top + IMAGE_SIDE, left:left + IMAGE_SIDE] = pixels[i].reshape(IMAGE_SIDE, IMAGE_SIDE).cpu()
    figure = Figure(figsize=(columns * 1.8, rows * 2.0))
    axes = figure.add_axes((0, 0, 1, 0.93))
    axes.imshow(mosaic.numpy(), cmap="gray", vmin=0, vmax=255, aspect="auto",
                extent=(0, columns * width, rows * cell, 0))
    for slot, i in enumerate(wrong):
        row, column = divmod(slot, columns)
        axes.text((column + 0.5) * width, row * cell + 5,
                  f"{classes[int(labels[i])]} -> {classes[int(predictions[i])]}",
                  ha="center", va="center", fontsize=6.5, color="white")
    axes.set_axis_off()
    figure.suptitle(f"misclassified test images, true -> predicted (first {len(wrong)})" if wrong
                    else "no misclassified images")
    return figure
