"""Classification metrics computed from the exported model's own predictions.

Evaluation always calls the exported `serving_default` signature (through
`model.export.ExportedModel`), so the figures describe the artifact that is
served, not an in-memory object that could differ from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from pipeline.splits import FingerprintSet
from preprocessing import names

if TYPE_CHECKING:  # only for annotations: importing TensorFlow here would slow every caller
    from model.export import ExportedModel


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


def predict_labels(model: ExportedModel, texts: Sequence[str]) -> list[str]:
    """The class names an exported model's `serving_default` gives `texts`."""
    return [label.decode("utf-8") for label in model.predict(list(texts))[names.PREDICTED_LABEL]]


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


# --- Uncertainty --------------------------------------------------------------------------


def wilson_interval(successes: int, count: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (well-behaved at 0 and 1, unlike the normal one).

    Args:
      successes: e.g. correctly classified documents.
      count: all documents.
      confidence: e.g. 0.95.

    Returns:
      `(low, high)`; `(0.0, 1.0)` when `count` is 0.
    """
    if count == 0:
        return 0.0, 1.0
    z = float(NormalDist().inv_cdf(0.5 + confidence / 2))
    p = successes / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


def _resampled_scores(
    weights: np.ndarray, truth: np.ndarray, predicted: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 for each row of bootstrap weights (documents drawn n times each row)."""
    true_hot = np.eye(classes, dtype=np.float64)[truth]
    pred_hot = np.eye(classes, dtype=np.float64)[predicted]
    n = weights.sum(axis=1)
    accuracy = weights @ (truth == predicted).astype(np.float64) / n
    tp = weights @ (true_hot * pred_hot)
    support = weights @ true_hot + weights @ pred_hot
    present = support > 0
    f1 = np.divide(2 * tp, support, out=np.zeros_like(tp), where=present)
    macro = f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return accuracy, macro


def paired_bootstrap(
    true_labels: Sequence[str],
    candidate_labels: Sequence[str],
    baseline_labels: Sequence[str] | None,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap intervals of accuracy and macro-F1, paired between two models.

    Both models are scored on the same resampled documents, so the interval of
    their difference reflects only how they disagree, not how hard the sample is.
    The seed is fixed: the same predictions always give the same intervals.

    Args:
      true_labels: the reference class of each document.
      candidate_labels: the candidate's class of each document.
      baseline_labels: the baseline's, or None for the candidate alone.
      confidence: e.g. 0.95.
      resamples: bootstrap resamples.
      seed: the resampling seed.

    Returns:
      `{"candidate": {"accuracy": (lo, hi), "macro_f1": (lo, hi)}, "baseline": ...
      or None, "difference": {"accuracy": (lo, hi), "macro_f1": (lo, hi)} or None}`;
      differences are candidate − baseline.
    """
    labels = sorted(set(true_labels) | set(candidate_labels) | set(baseline_labels or []))
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index[label] for label in true_labels], dtype=np.int64)
    models = {"candidate": np.array([index[label] for label in candidate_labels], dtype=np.int64)}
    if baseline_labels is not None:
        models["baseline"] = np.array([index[label] for label in baseline_labels], dtype=np.int64)
    count = len(truth)
    if count == 0:
        raise ValueError("the bootstrap needs at least one document.")
    rng = np.random.default_rng(seed)
    scores: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in models}
    chunk = max(1, min(resamples, 4_000_000 // count))  # bound the weight matrix to ~32 MB
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        weights = rng.multinomial(count, np.full(count, 1.0 / count), size=rows).astype(np.float64)
        for name, predicted in models.items():
            scores[name].append(_resampled_scores(weights, truth, predicted, len(labels)))
    tail = (1 - confidence) / 2 * 100

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.percentile(values, [tail, 100 - tail])
        return float(low), float(high)

    joined = {name: [np.concatenate([s[i] for s in parts]) for i in (0, 1)] for name, parts in scores.items()}
    result: dict = {"baseline": None, "difference": None}
    for name, (accuracy, macro) in joined.items():
        result[name] = {"accuracy": interval(accuracy), "macro_f1": interval(macro)}
    if "baseline" in joined:
        result["difference"] = {
            metric: interval(joined["candidate"][i] - joined["baseline"][i])
            for i, metric in enumerate(("accuracy", "macro_f1"))
        }
    return result


# --- Leakage: documents the model trained on ------------------------------------------------


def leakage_report(
    card: dict,
    texts: Sequence[str],
    true_labels: Sequence[str],
    predicted_labels: Sequence[str],
    label_names: Sequence[str],
) -> dict:
    """How many evaluated documents the model trained on, and the metrics on the others.

    Used by `textserve evaluate` and by scoring with a label column: figures on
    training documents flatter a model, so they are reported apart.

    Args:
      card: the model card of the exported model (`ExportedModel.card`).
      texts: the evaluated documents.
      true_labels: their reference classes.
      predicted_labels: the model's classes for them.
      label_names: the model's classes.

    Returns:
      `{"known": bool, "trained_on": int | None, "unseen": int | None,
      "unseen_metrics": dict | None, "note": str}`; `known` is False when the
      card records no training fingerprints (an older export).
    """
    try:
        trained = FingerprintSet.from_card(card)
    except ValueError as error:
        return {
            "known": False,
            "trained_on": None,
            "unseen": None,
            "unseen_metrics": None,
            "note": str(error),
        }
    if trained is None:
        return {
            "known": False,
            "trained_on": None,
            "unseen": None,
            "unseen_metrics": None,
            "note": "the model card records no training fingerprints (exported by an older textserve), "
            "so these figures may include documents the model trained on",
        }
    seen = trained.contains(texts)
    unseen = [i for i, was_seen in enumerate(seen) if not was_seen]
    metrics = None
    if unseen:
        metrics = classification_metrics(
            [true_labels[i] for i in unseen], [predicted_labels[i] for i in unseen], label_names
        )
    trained_on = int(seen.sum())
    if trained_on:
        note = (
            f"warning: the model trained on {trained_on} of these {len(texts)} documents; "
            f"the figures on all of them overstate it. On the {len(unseen)} it never saw: "
            + (
                f"accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
                if metrics
                else "none left"
            )
        )
    else:
        note = f"none of these {len(texts)} documents is among the model's training documents"
    return {
        "known": True,
        "trained_on": trained_on,
        "unseen": len(unseen),
        "unseen_metrics": metrics,
        "note": note,
    }
