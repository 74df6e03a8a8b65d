"""Pictures people would rather look at than read: training curves, confusion matrices, TensorBoard."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

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


def plot_confusion_matrix(confusion: dict, path: Path, title: str = "Test split") -> Path:
    """Counts and row-normalised rates per (true, predicted) class, side by side.

    The left panel shows raw counts; the right one divides each row by its
    class's documents, so a small class's errors are as visible as a large
    one's. The title gives the number of documents and the accuracy.

    Args:
      confusion: `{"labels": [...], "matrix": [[...]]}`, rows true, columns predicted.
      path: the PNG to write.
      title: what the matrix is of.

    Returns:
      `path`.
    """
    labels = confusion["labels"]
    counts = np.asarray(confusion["matrix"], dtype=np.int64).reshape(len(labels), len(labels))
    total = int(counts.sum())
    accuracy = float(np.trace(counts) / total) if total else 0.0
    row_totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    size = max(4.5, 0.9 * len(labels) + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    panels = ((counts, "counts", "{:d}", None), (rates, "row-normalised (recall per class)", "{:.2f}", 1.0))
    for ax, (values, name, fmt, vmax) in zip(axes, panels):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
        peak = vmax if vmax is not None else max(int(values.max()), 1)
        for i in range(len(labels)):
            for j in range(len(labels)):
                value = values[i, j]
                ax.text(
                    j,
                    i,
                    fmt.format(int(value) if fmt == "{:d}" else value),
                    ha="center",
                    va="center",
                    color="white" if value > peak / 2 else "black",
                )
    fig.suptitle(f"{title}: n = {total}, accuracy = {accuracy:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_tensorboard_summaries(
    log_dir: Path, confusion_png: Path, hparams: dict[str, bool | int | float | str], metrics: dict
) -> Path:
    """Adds what Keras's TensorBoard callback does not write to a run's `logs/`.

    The callback writes the per-epoch curves to `logs/train` and
    `logs/validation`; this writes, to `logs/` itself, the confusion-matrix
    picture (Images tab), the run's hyperparameters (HParams tab) and the
    exported model's final validation and test figures as scalars, so the
    HParams table can sort runs by them (`tensorboard --logdir runs`).

    Args:
      log_dir: the run's `logs/` directory.
      confusion_png: the picture `plot_confusion_matrix` wrote.
      hparams: flat `section.key` → value.
      metrics: `{"validation": {...}, "test": {...}}` with accuracy and macro_f1.

    Returns:
      `log_dir`.
    """
    import tensorflow as tf  # only training needs it; plots alone stay light
    from tensorboard.plugins.hparams import api as hparams_api

    with tf.summary.create_file_writer(str(log_dir)).as_default():
        picture = tf.image.decode_png(tf.io.read_file(str(confusion_png)), channels=4)
        tf.summary.image("confusion_matrix", picture[tf.newaxis], step=0)
        hparams_api.hparams(hparams, trial_id=str(log_dir.parent.name))
        for split in ("validation", "test"):
            for key in ("accuracy", "macro_f1"):
                tf.summary.scalar(f"{split}/{key}", metrics[split][key], step=0)
    return log_dir
