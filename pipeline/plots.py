"""Pictures people would rather look at than read: training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt


def plot_history(history: dict[str, list[float]], path: Path) -> Path:
    """Accuracy and loss per epoch, train vs validation, side by side (as the tutorial plots them).

    A dashed line marks the epoch of lowest validation loss, whose weights the
    exported model carries (early stopping restores them).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    val_loss = history.get("val_loss", [])
    best_epoch = val_loss.index(min(val_loss)) + 1 if val_loss else None
    for ax, metric in zip(axes, ("accuracy", "loss")):
        epochs = range(1, len(history.get(metric, [])) + 1)
        ax.plot(epochs, history.get(metric, []), marker="o", label=f"train {metric}")
        ax.plot(epochs, history.get(f"val_{metric}", []), marker="o", label=f"validation {metric}")
        if best_epoch is not None:
            ax.axvline(
                best_epoch, color="grey", linestyle="--", linewidth=1, label=f"restored (epoch {best_epoch})"
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion_matrix(confusion: dict, path: Path, title: str = "Test confusion matrix") -> Path:
    """Counts per (true, predicted) class, annotated, with true classes as rows."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    size = max(4.5, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(
                j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
