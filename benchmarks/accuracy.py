"""Test accuracy and macro-F1 of every architecture, as mean ± sd over repeated seeded splits.

    python benchmarks/accuracy.py --data ../shared/data/bbc --workdir /tmp/bench_accuracy [--repeats 5]
    python benchmarks/accuracy.py --workdir /tmp/bench_accuracy --render     # reprint the table

For each architecture this runs exactly what a user runs,
`textserve train --repeats K --set model.arch=A` (in-process, through
`pipeline.train.train`), so the table is the one `train` prints: K runs on
split seeds 1..K, each exported, reloaded and evaluated through its
`serving_default` signature, plus the run on the configured split (seed 42)
whose export is kept. Repeats finished by an earlier, interrupted run with
the same config are reused. It prints a Markdown table for benchmarks/README.md and
writes every figure to WORKDIR/accuracy.json (rows of architectures measured by
earlier invocations into the same WORKDIR are kept, so `--archs` can be run
one at a time).

Accuracy does not depend on machine load; the seconds columns do (they are
the configured run's `model.fit` and whole-run times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import ARCHITECTURES
from pipeline.config import load_config
from pipeline.train import train


def _row(arch: str, metrics: dict) -> dict:
    """One table row from a `--repeats` run's metrics.json."""
    repeats = metrics["repeats"]
    return {
        "arch": arch,
        "accuracy_mean": repeats["accuracy"]["mean"],
        "accuracy_sd": repeats["accuracy"]["sd"],
        "accuracy_values": repeats["accuracy"]["values"],
        "macro_f1_mean": repeats["macro_f1"]["mean"],
        "macro_f1_sd": repeats["macro_f1"]["sd"],
        "configured_split_accuracy": metrics["test"]["accuracy"],
        "fit_seconds": metrics["timings"].get("fit"),
        "total_seconds": metrics["timings"]["total"],
        "fit_cpu_seconds": metrics.get("cpu_seconds", {}).get("fit"),
        "total_cpu_seconds": metrics.get("cpu_seconds", {}).get("total"),
        "test_documents": repeats["test_documents"],
    }


def markdown_table(rows: list[dict], repeats: int) -> str:
    """The README table: one row per architecture."""
    lines = [
        f"| `model.arch` | test accuracy (mean ± sd, {repeats} splits) | macro-F1 (mean ± sd) "
        "| min – max accuracy | seed-42 split | fit / whole run, wall s | fit / whole run, CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        values = row["accuracy_values"]
        lines.append(
            f"| `{row['arch']}` | {row['accuracy_mean']:.4f} ± {row['accuracy_sd']:.4f} "
            f"| {row['macro_f1_mean']:.4f} ± {row['macro_f1_sd']:.4f} | {min(values):.3f} – {max(values):.3f} "
            f"| {row['configured_split_accuracy']:.4f} | {row['fit_seconds']:.0f} / {row['total_seconds']:.0f} "
            f"| {row.get('fit_cpu_seconds') or 0:.0f} / {row.get('total_cpu_seconds') or 0:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="e.g. ../shared/data/bbc (required unless --render)")
    parser.add_argument(
        "--workdir", required=True, type=Path, help="run directories go here (finished repeats are reused)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument(
        "--set", action="append", default=[], dest="overrides", help="extra config override for every arch"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="print the table from WORKDIR/<arch>/metrics.json, train nothing",
    )
    args = parser.parse_args(argv)

    if not args.render and not args.data:
        parser.error("--data is required (or --render to reprint a finished benchmark)")
    if args.render:
        found = [arch for arch in args.archs if (args.workdir / arch / "metrics.json").is_file()]
        rows = [
            _row(arch, json.loads((args.workdir / arch / "metrics.json").read_text("utf-8")))
            for arch in found
        ]
        print(markdown_table(rows, args.repeats))
        return 0
    rows = []
    for arch in args.archs:
        run_dir = args.workdir / arch
        # The configured run is always retrained; finished repeats of the same
        # config are reused (train resumes them), so an interrupted benchmark
        # continues where it stopped.
        shutil.rmtree(run_dir / "export", ignore_errors=True)
        config = load_config(None, [f"model.arch={arch}", f"train.repeats={args.repeats}", *args.overrides])
        result = train(config, args.data, run_dir, verbose=0, log=lambda *_: None)
        rows.append(_row(arch, result.metrics))
        print(
            f"{arch}: {rows[-1]['accuracy_mean']:.4f} ± {rows[-1]['accuracy_sd']:.4f} "
            f"{[round(v, 4) for v in rows[-1]['accuracy_values']]}",
            flush=True,
        )
    # Rows of architectures measured by earlier invocations stay (one arch per run is fine).
    path = args.workdir / "accuracy.json"
    earlier = json.loads(path.read_text("utf-8")) if path.is_file() else []
    measured = {row["arch"] for row in rows}
    rows = [row for row in earlier if row["arch"] not in measured] + rows
    rows.sort(key=lambda row: ARCHITECTURES.index(row["arch"]))
    path.write_text(json.dumps(rows, indent=2) + "\n", "utf-8")
    print(markdown_table(rows, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
