"""The release gate: the candidate against the thresholds and the served baseline.

`compare` applies `release.min_accuracy` and `release.min_macro_f1` to the
candidate and `release.max_regression` against the latest served version;
`format_comparison` prints both side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ReleaseConfig


@dataclass(frozen=True)
class Comparison:
    """Candidate against baseline on the same test split, and the gate's verdict.

    Attributes:
      candidate: metrics of the candidate.
      baseline: metrics of the latest served version, or None for an empty PATH.
      baseline_version: its number.
      thresholds: the release section of the config.
      failures: one sentence per failed check; empty when the gate passes.
    """

    candidate: dict
    baseline: dict | None
    baseline_version: int | None
    thresholds: ReleaseConfig
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def compare(
    candidate: dict, baseline: dict | None, baseline_version: int | None, thresholds: ReleaseConfig
) -> Comparison:
    """Applies the absolute floors and the allowed regression against the baseline."""
    failures = []
    for metric, floor in (("accuracy", thresholds.min_accuracy), ("macro_f1", thresholds.min_macro_f1)):
        if candidate[metric] < floor:
            failures.append(f"{metric} {candidate[metric]:.4f} is below release.min_{metric} {floor:.4f}")
        if baseline is not None and candidate[metric] < baseline[metric] - thresholds.max_regression:
            failures.append(
                f"{metric} {candidate[metric]:.4f} is more than release.max_regression "
                f"{thresholds.max_regression:.4f} below version {baseline_version}'s {baseline[metric]:.4f}"
            )
    return Comparison(candidate, baseline, baseline_version, thresholds, tuple(failures))


def format_comparison(comparison: Comparison, candidate_name: str) -> str:
    """The side-by-side table the push prints: headline metrics, per-class F1, the bar to meet."""
    baseline_name = (
        f"version {comparison.baseline_version}" if comparison.baseline is not None else "(nothing served)"
    )
    t = comparison.thresholds
    rows = [("metric", candidate_name, baseline_name, "required")]
    for metric, floor in (("accuracy", t.min_accuracy), ("macro_f1", t.min_macro_f1)):
        required = f">= {floor:.4f}"
        if comparison.baseline is not None:
            required += f" and >= {comparison.baseline[metric] - t.max_regression:.4f}"
        rows.append(
            (
                metric,
                f"{comparison.candidate[metric]:.4f}",
                f"{comparison.baseline[metric]:.4f}" if comparison.baseline else "-",
                required,
            )
        )
    classes = list(comparison.candidate["per_class"])
    if comparison.baseline is not None:
        classes += [c for c in comparison.baseline["per_class"] if c not in classes]
    for label in classes:
        cand = comparison.candidate["per_class"].get(label)
        base = comparison.baseline["per_class"].get(label) if comparison.baseline else None
        rows.append(
            (f"  F1 {label}", f"{cand['f1']:.4f}" if cand else "-", f"{base['f1']:.4f}" if base else "-", "")
        )
    rows.append(
        (
            "documents",
            str(comparison.candidate["count"]),
            str(comparison.baseline["count"]) if comparison.baseline else "-",
            "",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    verdict = (
        ["gate: PASS"] if comparison.passed else ["gate: FAIL", *(f"  - {f}" for f in comparison.failures)]
    )
    return "\n".join(lines + verdict)
