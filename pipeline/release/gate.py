"""The release gate: never score a model on documents it trained on.

The gate compares the candidate with the latest served version (the baseline)
on documents that neither trained on, using the exact sets of training-document
fingerprints their model cards carry (pipeline/splits.py):

* evaluation documents: the candidate's own test split, or `--eval-data PATH`
  (a holdout of the user's; documents the candidate trained on are excluded
  with a warning);
* floors: the candidate's accuracy and macro-F1 on all evaluation documents
  must reach `release.min_accuracy` and `release.min_macro_f1`;
* regression: candidate and baseline are scored on the evaluation documents
  minus those the baseline trained on, paired. The gate refuses when the 95%
  confidence interval (`release.confidence`, paired bootstrap) of
  candidate − baseline lies wholly below −`release.max_regression`, i.e. when
  the candidate is worse by more than the allowed regression with that
  confidence; a small test set cannot flip the decision on noise alone;
* fewer than `release.min_eval_docs` documents for either check is a refusal,
  as is a baseline with another label set.

Accuracy intervals are Wilson score intervals; macro-F1 intervals and the
differences come from the paired bootstrap with a fixed seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from model.export import ExportedModel
from pipeline.config import ReleaseConfig
from pipeline.data import Dataset
from pipeline.evaluate import classification_metrics, paired_bootstrap, predict_labels, wilson_interval
from pipeline.splits import FingerprintSet

METRICS = ("accuracy", "macro_f1")


@dataclass(frozen=True)
class EvaluationSet:
    """Documents one check uses, and why others were left out.

    Attributes:
      data: the documents.
      source: where they came from ("the run's test split", "--eval-data PATH").
      excluded: reason → number of documents left out for it.
    """

    data: Dataset
    source: str
    excluded: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """`N documents (K excluded: reason)`."""
        text = f"{len(self.data.ids)} documents"
        if self.excluded:
            text += " (" + "; ".join(f"{count} excluded: {why}" for why, count in self.excluded.items()) + ")"
        return text


def without(data: Dataset, trained: FingerprintSet | None) -> tuple[Dataset, int]:
    """`data` minus the documents in `trained`, and how many were removed."""
    if trained is None or not data.ids:
        return data, 0
    seen = trained.contains(data.texts)
    keep = [doc_id for doc_id, was_seen in zip(data.ids, seen) if not was_seen]
    return data.subset(keep), len(data.ids) - len(keep)


@dataclass(frozen=True)
class Comparison:
    """The candidate against the thresholds and the baseline, and the gate's verdict.

    Attributes:
      candidate: candidate metrics on the floor set (every evaluation document it never trained on).
      baseline: baseline metrics on the comparison set, or None when nothing is served.
      baseline_version: its number.
      thresholds: the release section of the config.
      failures: one sentence per failed check; empty when the gate passes.
      floor_set: how the floor set was made.
      comparison_set: how the comparison set was made, or None without a baseline.
      candidate_on_shared: candidate metrics on the comparison set.
      intervals: confidence intervals (see `paired_bootstrap`), for the floor
        set ("floor") and the comparison set ("shared").
    """

    candidate: dict
    baseline: dict | None
    baseline_version: int | None
    thresholds: ReleaseConfig
    failures: tuple[str, ...]
    floor_set: EvaluationSet | None = None
    comparison_set: EvaluationSet | None = None
    candidate_on_shared: dict | None = None
    intervals: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> dict:
        """The JSON-ready account for the release record."""
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "floor_documents": self.floor_set.describe() if self.floor_set else None,
            "comparison_documents": self.comparison_set.describe() if self.comparison_set else None,
            "intervals": self.intervals,
        }


def _interval(metrics: dict, bootstrap: dict, metric: str, confidence: float) -> tuple[float, float]:
    if metric == "accuracy":
        correct = sum(
            metrics["confusion_matrix"]["matrix"][i][i]
            for i in range(len(metrics["confusion_matrix"]["labels"]))
        )
        return wilson_interval(correct, metrics["count"], confidence)
    return bootstrap[metric]


def compare(
    candidate_predictions: list[str],
    floor_set: EvaluationSet,
    label_names: list[str],
    thresholds: ReleaseConfig,
    *,
    baseline_version: int | None = None,
    comparison_set: EvaluationSet | None = None,
    shared_predictions: tuple[list[str], list[str]] | None = None,
) -> Comparison:
    """Applies the floors, `min_eval_docs` and the allowed regression (see the module docstring).

    Args:
      candidate_predictions: the candidate's labels for `floor_set`, in order.
      floor_set: every evaluation document the candidate never trained on.
      label_names: the candidate's classes.
      thresholds: the `[release]` section.
      baseline_version: the served version compared against, or None.
      comparison_set: `floor_set` minus what the baseline trained on.
      shared_predictions: (candidate, baseline) labels for `comparison_set`.

    Returns:
      The comparison with its failures.
    """
    t = thresholds
    failures = []
    candidate = classification_metrics(floor_set.data.labels, candidate_predictions, label_names)
    if len(floor_set.data.ids) < t.min_eval_docs:
        failures.append(
            f"only {floor_set.describe()} to evaluate the candidate on; release.min_eval_docs is "
            f"{t.min_eval_docs}. Pass --eval-data PATH with more documents it never saw, or lower "
            f"release.min_eval_docs"
        )
    floor_boot = (
        paired_bootstrap(
            floor_set.data.labels,
            candidate_predictions,
            None,
            confidence=t.confidence,
            resamples=t.bootstrap_resamples,
        )
        if floor_set.data.ids
        else None
    )
    intervals: dict = {"confidence": t.confidence}
    if floor_boot is not None:
        intervals["floor"] = {
            m: _interval(candidate, floor_boot["candidate"], m, t.confidence) for m in METRICS
        }
    for metric, floor in (("accuracy", t.min_accuracy), ("macro_f1", t.min_macro_f1)):
        if candidate[metric] < floor:
            failures.append(f"{metric} {candidate[metric]:.4f} is below release.min_{metric} {floor:.4f}")
    baseline, on_shared = None, None
    if comparison_set is not None and shared_predictions is not None:
        shared = comparison_set.data
        if len(shared.ids) < t.min_eval_docs:
            failures.append(
                f"only {comparison_set.describe()} to compare with version {baseline_version}; "
                f"release.min_eval_docs is {t.min_eval_docs}. Pass --eval-data PATH with documents "
                f"neither model trained on, or lower release.min_eval_docs"
            )
        if shared.ids:
            on_shared = classification_metrics(shared.labels, shared_predictions[0], label_names)
            baseline = classification_metrics(shared.labels, shared_predictions[1], label_names)
            boot = paired_bootstrap(
                shared.labels, *shared_predictions, confidence=t.confidence, resamples=t.bootstrap_resamples
            )
            intervals["shared"] = {
                "candidate": {m: _interval(on_shared, boot["candidate"], m, t.confidence) for m in METRICS},
                "baseline": {m: _interval(baseline, boot["baseline"], m, t.confidence) for m in METRICS},
                "difference": boot["difference"],
            }
            for metric in METRICS:
                low, high = boot["difference"][metric]
                if high < -t.max_regression:
                    failures.append(
                        f"{metric} {on_shared[metric]:.4f} is below version {baseline_version}'s "
                        f"{baseline[metric]:.4f} on the same {len(shared.ids)} documents by more than "
                        f"release.max_regression {t.max_regression:.4f} with {t.confidence:.0%} confidence "
                        f"(difference interval {low:+.4f} to {high:+.4f})"
                    )
    return Comparison(
        candidate,
        baseline,
        baseline_version,
        t,
        tuple(failures),
        floor_set,
        comparison_set,
        on_shared,
        intervals,
    )


def _cell(value: float, interval: tuple[float, float] | None) -> str:
    return f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def format_comparison(comparison: Comparison, candidate_name: str) -> str:
    """The side-by-side table the push prints: what was evaluated, the metrics with intervals, the verdict.

    Args:
      comparison: from `compare`.
      candidate_name: the candidate's column title.

    Returns:
      The table, with the documents used and excluded above it and the verdict below.
    """
    c, t = comparison, comparison.thresholds
    lines = []
    if c.floor_set is not None:
        lines += [f"evaluation: {c.floor_set.source}", f"  candidate alone: {c.floor_set.describe()}"]
    if c.comparison_set is not None:
        lines.append(f"  candidate vs version {c.baseline_version}: {c.comparison_set.describe()}")
    compared = c.baseline_version is not None
    header = ["metric", candidate_name]
    if compared:
        version = f"version {c.baseline_version}"
        header += ["candidate, shared docs", f"{version}, shared docs", f"difference [{t.confidence:.0%} CI]"]
    else:
        header.append("(nothing served)")
    rows = [[*header, "required"]]
    floor_iv, shared_iv = c.intervals.get("floor", {}), c.intervals.get("shared")
    shared, base = c.candidate_on_shared, c.baseline
    for metric, floor in (("accuracy", t.min_accuracy), ("macro_f1", t.min_macro_f1)):
        row = [metric, _cell(c.candidate[metric], floor_iv.get(metric))]
        required = f">= {floor:.4f}"
        if compared:
            required += f"; difference CI upper >= {-t.max_regression:+.4f}"
            if shared is not None and base is not None and shared_iv is not None:
                low, high = shared_iv["difference"][metric]
                row += [
                    _cell(shared[metric], shared_iv["candidate"][metric]),
                    _cell(base[metric], shared_iv["baseline"][metric]),
                    f"{shared[metric] - base[metric]:+.4f} [{low:+.3f}, {high:+.3f}]",
                ]
            else:
                row += ["-", "-", "-"]
        else:
            row.append("-")
        rows.append([*row, required])

    def f1(metrics: dict | None, label: str) -> str:
        values = (metrics or {}).get("per_class", {}).get(label)
        return f"{values['f1']:.4f}" if values and values["support"] else "-"

    for label in c.candidate["per_class"]:
        row = [f"  F1 {label}", f1(c.candidate, label)]
        row += [f1(shared, label), f1(base, label), ""] if compared else ["-"]
        rows.append([*row, ""])
    counts = ["documents", str(c.candidate["count"])]
    shared_count = str(base["count"]) if base is not None else "0"
    counts += [shared_count, shared_count, ""] if compared else ["-"]
    rows.append([*counts, ""])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    table.insert(1, "  ".join("-" * w for w in widths))
    verdict = ["gate: PASS"] if c.passed else ["gate: FAIL", *(f"  - {f}" for f in c.failures)]
    return "\n".join(lines + table + verdict)


@dataclass(frozen=True)
class GateModel:
    """A model the gate scores: its name in messages, the loaded export and its model card."""

    name: str
    model: ExportedModel
    card: dict


def _trained_set(model: GateModel, problems: list[str]) -> FingerprintSet | None:
    try:
        return FingerprintSet.from_card(model.card)
    except ValueError as error:
        problems.append(f"{model.name}: {error}")
        return None


def run_gate(
    candidate: GateModel,
    evaluation: EvaluationSet,
    thresholds: ReleaseConfig,
    *,
    baseline: GateModel | None = None,
    baseline_version: int | None = None,
    holdout: bool = False,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Builds the floor and comparison sets, scores both models and applies the gate.

    Args:
      candidate: the model being pushed.
      evaluation: the evaluation documents (the run's test split, or `--eval-data`).
      thresholds: the `[release]` section.
      baseline: the latest served version, or None.
      baseline_version: its number.
      holdout: `evaluation` is the user's `--eval-data`: a model card without
        fingerprints is then a warning, not a refusal.
      log: where warnings go.

    Returns:
      The comparison; its failures include a missing fingerprint set, another
      label set and too few documents, as well as the metric checks.
    """
    problems: list[str] = []
    candidate_trained = _trained_set(candidate, problems)
    if candidate_trained is None and not problems:
        if holdout:
            log(
                f"warning: the candidate's model card records no training fingerprints (an older export), "
                f"so {evaluation.source} cannot be checked against its training data"
            )
        else:
            problems.append(
                "the candidate's model card records no training fingerprints (exported by an older textserve): "
                "a later push could not tell which documents it trained on. Re-train it with this textserve, "
                "or pass --eval-data PATH with labelled documents it never saw"
            )
    floor_data, dropped = without(evaluation.data, candidate_trained)
    excluded = dict(evaluation.excluded)
    if dropped:
        excluded["the candidate trained on them"] = dropped
        log(
            f"warning: the candidate trained on {dropped} of the {len(evaluation.data.ids)} documents in "
            f"{evaluation.source}; they are excluded from the gate"
        )
    floor_set = EvaluationSet(floor_data, evaluation.source, excluded)
    candidate_predictions = predict_labels(candidate.model, floor_data.texts) if floor_data.ids else []
    comparison_set, shared_predictions = None, None
    if baseline is not None:
        theirs, ours = baseline.model.label_names, candidate.model.label_names
        if sorted(theirs) != sorted(ours):
            problems.append(
                f"{baseline.name} has other labels than the candidate, so the two cannot be compared: "
                f"{baseline.name} {sorted(theirs)}, candidate {sorted(ours)}. If the change of labels is "
                f"intended, push with --force --reason TEXT"
            )
        else:
            baseline_trained = _trained_set(baseline, problems)
            if baseline_trained is None and not holdout:
                problems.append(
                    f"{baseline.name}'s model card records no training fingerprints (an older export), so the "
                    f"gate cannot leave out the documents it trained on. Pass --eval-data PATH with labelled "
                    f"documents neither model trained on"
                )
            else:
                seen = baseline_trained.contains(floor_data.texts) if baseline_trained is not None else None
                keep = [i for i in range(len(floor_data.ids)) if seen is None or not seen[i]]
                shared_excluded = dict(excluded)
                if len(keep) < len(floor_data.ids):
                    shared_excluded[f"{baseline.name} trained on them"] = len(floor_data.ids) - len(keep)
                shared = floor_data.subset([floor_data.ids[i] for i in keep])
                comparison_set = EvaluationSet(shared, evaluation.source, shared_excluded)
                shared_predictions = (
                    [candidate_predictions[i] for i in keep],
                    predict_labels(baseline.model, shared.texts) if shared.ids else [],
                )
    comparison = compare(
        candidate_predictions,
        floor_set,
        candidate.model.label_names,
        thresholds,
        baseline_version=baseline_version,
        comparison_set=comparison_set,
        shared_predictions=shared_predictions,
    )
    return dataclasses.replace(comparison, failures=(*problems, *comparison.failures))
