"""Classification metrics computed from the exported model's own predictions.

Evaluation always calls the exported `serving_default` signature (through
`model.export.ExportedModel`), so the figures describe the artifact that is
served, not an in-memory object that could differ from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from preprocessing import names

if TYPE_CHECKING:  # only for annotations: importing TensorFlow here would slow every caller
    from model.export import ExportedModel
    from pipeline.data import Dataset


def classification_metrics(
    true_labels: Sequence[str], predicted_labels: Sequence[str], label_names: Sequence[str]
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix.

    Args:
      true_labels: the reference class of each document.
      predicted_labels: the model's class of each document.
      label_names: the model's classes; reference labels outside them are
        appended as extra rows (a model can never predict them).

    Returns:
      `{"accuracy", "macro_f1", "count", "per_class": {label: {...}},
      "confusion_matrix": {"labels": [...], "matrix": [[...]]}}` where matrix
      rows are true classes and columns predicted classes.
    """
    if len(true_labels) != len(predicted_labels):
        raise ValueError(f"got {len(true_labels)} reference labels but {len(predicted_labels)} predictions.")
    labels = list(label_names) + sorted(set(true_labels) - set(label_names))
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for true, predicted in zip(true_labels, predicted_labels):
        matrix[index[true], index[predicted]] += 1
    correct = np.diag(matrix)
    predicted_totals, true_totals = matrix.sum(axis=0), matrix.sum(axis=1)
    per_class = {}
    for i, label in enumerate(labels):
        precision = correct[i] / predicted_totals[i] if predicted_totals[i] else 0.0
        recall = correct[i] / true_totals[i] if true_totals[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(true_totals[i]),
        }
    # Macro-F1 over the classes that occur in the reference or the predictions.
    present = [label for i, label in enumerate(labels) if true_totals[i] or predicted_totals[i]]
    count = int(matrix.sum())
    return {
        "count": count,
        "accuracy": float(correct.sum() / count) if count else 0.0,
        "macro_f1": float(np.mean([per_class[label]["f1"] for label in present])) if present else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
    }


def evaluate_export(model: ExportedModel, data: Dataset) -> dict:
    """Metrics of an exported model on labelled documents, from its own `serving_default` labels."""
    predicted = [label.decode("utf-8") for label in model.predict(data.texts)[names.PREDICTED_LABEL]]
    return classification_metrics(data.labels, predicted, model.label_names)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned numbers, two spaces between columns."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in [header, *rows]
    ]


def format_metrics(name: str, metrics: dict) -> str:
    """Headline figures, per-class table and confusion matrix, as aligned plain-text tables.

    Args:
      name: what was evaluated (data and model), for the first line.
      metrics: a dict from `classification_metrics`.

    Returns:
      Text for a terminal; `--json` output is the dict itself.
    """
    lines = [
        f"{name}",
        f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
        f"documents {metrics['count']}",
        "",
    ]
    per_class = metrics["per_class"]
    lines += _table(
        ["class", "precision", "recall", "F1", "support"],
        [
            [label, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
            for label, v in per_class.items()
        ],
    )
    confusion = metrics.get("confusion_matrix")
    if confusion:
        labels = confusion["labels"]
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        lines += _table(
            ["true \\ predicted", *labels],
            [[label, *(str(count) for count in row)] for label, row in zip(labels, confusion["matrix"])],
        )
    return "\n".join(lines)
