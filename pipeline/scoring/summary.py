"""The end of a scoring job: errors file, summary (with the resolved config), console lines, progress bar."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson
import tomli_w

from pipeline.errors import ScoringError
from pipeline.readers import InputInfo
from pipeline.scoring.shards import OutputPaths, ShardState
from pipeline.scoring.writers import atomic_write_bytes

if TYPE_CHECKING:
    from pipeline.scoring.spec import ScoreJob


class Progress:
    """A tqdm bar on stderr with docs/s and ETA (on when stderr is a terminal, unless told).

    Args:
      total: documents in the job.
      initial: documents already done by an earlier run.
      enabled: True / False, or None for "when stderr is a terminal".
    """

    def __init__(self, total: int, initial: int, enabled: bool | None):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="doc",
            unit_scale=True,
            dynamic_ncols=True,
            disable=(not enabled) if enabled is not None else None,
            file=sys.stderr,
            desc="scoring",
        )

    def update(self, n: int) -> None:
        """Counts `n` more documents written."""
        self.bar.update(n)

    def close(self) -> None:
        """Leaves the bar's last state on the terminal."""
        self.bar.close()


def join_error_rows(paths: OutputPaths, num_shards: int) -> None:
    """Concatenates the shards' saved error rows into the errors file, atomically."""
    atomic_write_bytes(
        paths.errors, b"".join(paths.shard_state(k)[0].read_bytes() for k in range(num_shards))
    )


def finish(
    job: ScoreJob,
    paths: OutputPaths,
    stats: dict[int, ShardState],
    infos: Sequence[InputInfo],
    *,
    this_run: int,
    seconds: float,
    scoring_seconds: float,
    total: int,
    label_names: Sequence[str],
    ignored: Sequence[str],
    log: Callable[[str], None],
    runner: str = "tfdata",
    leakage_note: str = "not checked",  # "" when the shards counted the training documents
) -> dict:
    """Joins the shards' error rows and counts into the errors file and the summary, and prints it.

    With reference labels, the summary's `leakage` says how many labelled
    documents the model trained on and gives the metrics on the others, or
    `leakage_note` says why that is not known.

    Raises:
      ScoringError: the counts do not add up (a bug: nothing may be lost silently).
    """
    join_error_rows(paths, job.config.score.num_shards)
    read = sum(s.read for s in stats.values())
    scored = sum(s.scored for s in stats.values())
    errored = sum(s.errored for s in stats.values())
    if read != scored + errored or read != total:
        raise ScoringError(
            f"internal accounting mismatch: counted {total}, read {read}, scored {scored}, errored {errored}; "
            f"please report this with the inputs."
        )
    reasons: Counter = Counter()
    confusion: Counter = Counter()
    confusion_unseen: Counter = Counter()
    places: list[str] = []
    for s in stats.values():
        reasons.update(s.errors_by_reason)
        confusion.update(s.confusion)
        confusion_unseen.update(s.confusion_unseen)
        places += s.fallback_places
    settings = job.settings()
    summary = {
        "runner": runner,
        "inputs": list(job.inputs),
        "documents_counted": total,
        "read": read,
        "scored": scored,
        "errored": errored,
        "errors_by_reason": dict(reasons.most_common()),
        "decoded_with_fallback": {
            "encoding": job.config.data.fallback_encoding,
            "count": sum(s.decoded_with_fallback for s in stats.values()),
            "first": places[:20],
        },
        "ids_from": sorted({i.id_column or "file:line" for i in infos}),
        "labels_from": sorted({i.label_column for i in infos if i.label_column}),
        # Top-level files of class-folder inputs (README.TXT): not documents, listed so nothing is hidden.
        "ignored_files": sorted(set(ignored)),
        # docs/s covers reading, predicting and writing; `seconds` adds loading and counting.
        "seconds": round(seconds, 3),
        "scoring_seconds": round(scoring_seconds, 3),
        "documents_this_run": this_run,
        "docs_per_second": round(this_run / scoring_seconds, 1) if scoring_seconds > 0 else 0.0,
        "outputs": [str(p) for p in paths.shards],
        "errors_file": str(paths.errors),
        "config_file": str(paths.config),
        "config": settings,
    }
    if confusion:
        from pipeline.evaluate import classification_metrics

        def metrics_of(counts: Counter) -> dict:
            true, predicted = [], []
            for key, n in counts.items():
                t, p = key.split("\t")
                true += [t] * n
                predicted += [p] * n
            metrics = classification_metrics(true, predicted, list(label_names))
            return {key: metrics[key] for key in ("count", "accuracy", "macro_f1", "per_class")}

        metrics = metrics_of(confusion)
        summary["metrics"] = metrics
        labelled = metrics["count"]
        if leakage_note:
            summary["leakage"] = {"known": False, "note": leakage_note}
        else:
            trained_on = sum(s.trained_on for s in stats.values())
            summary["leakage"] = {
                "known": True,
                "trained_on": trained_on,
                "unseen": labelled - trained_on,
                "unseen_metrics": metrics_of(confusion_unseen) if confusion_unseen else None,
            }
    atomic_write_bytes(paths.config, tomli_w.dumps(settings).encode("utf-8"))
    atomic_write_bytes(paths.summary, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    log(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """The end-of-run lines: counts, time and rate, fallbacks, metrics, where the files are."""
    lines = [
        f"read {summary['read']} = scored {summary['scored']} + errored {summary['errored']} "
        f"in {summary['seconds']:.1f}s ({summary['docs_per_second']:.0f} docs/s this run)"
    ]
    if summary["errored"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in summary["errors_by_reason"].items())
        lines.append(f"errors by reason: {reasons}")
    fallback = summary["decoded_with_fallback"]
    if fallback["count"]:
        lines.append(
            f"decoded with {fallback['encoding']} (not valid UTF-8): {fallback['count']} document(s), "
            f"e.g. {fallback['first'][0]}"
        )
    if "metrics" in summary:
        m = summary["metrics"]
        lines.append(
            f"against the reference labels: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
            f"({m['count']} labelled documents)"
        )
        lines.append(_leakage_line(summary["leakage"], m["count"]))
    outputs = summary["outputs"]
    lines.append(f"output: {outputs[0]}" + (f" ... ({len(outputs)} shards)" if len(outputs) > 1 else ""))
    lines.append(f"errors: {summary['errors_file']}")
    return "\n".join(lines)


def _leakage_line(leakage: dict, labelled: int) -> str:
    """Whether the figures above include documents the model trained on (they flatter it)."""
    if not leakage["known"]:
        return f"training documents among them: {leakage['note']}"
    if not leakage["trained_on"]:
        return f"none of the {labelled} labelled documents is among the model's training documents"
    unseen = leakage["unseen_metrics"]
    return (
        f"warning: the model trained on {leakage['trained_on']} of these {labelled} labelled documents; "
        f"the figures on all of them overstate it. On the {leakage['unseen']} it never saw: "
        + (f"accuracy {unseen['accuracy']:.4f}, macro-F1 {unseen['macro_f1']:.4f}" if unseen else "none left")
    )
