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


def format_metrics(name: str, metrics: dict) -> str:
    """A short human-readable block: headline figures and per-class F1."""
    lines = [
        f"{name}: accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
        f"({metrics['count']} documents)"
    ]
    for label, values in metrics["per_class"].items():
        lines.append(
            f"  {label:<16} precision {values['precision']:.3f}  recall {values['recall']:.3f}  "
            f"F1 {values['f1']:.3f}  n={values['support']}"
        )
    return "\n".join(lines)
