"""Batch-scoring benchmark: `textserve score` end to end against the in-process ceiling.

    python benchmarks/bench_scoring.py --data ../shared/data/bbc --workdir /tmp/bench_scoring

For each architecture (bilstm, tfidf), trained on the BBC folder unless
`--model-ARCH` points to an export:

* ceiling: `serving_default` called in this process on pre-built string
  batches of the 50,000-document corpus (BBC repeated), at the best batch
  size of a sweep; nothing else is timed;
* end to end: `textserve score corpus.jsonl --model ... --output ...` in a
  subprocess, reading JSON Lines and writing JSON Lines; its summary's
  docs/s covers reading + predicting + writing (model loading and the count
  pass are reported separately as wall time);
* memory: peak resident memory of the scorer (tfidf) at 50,000 and 500,000
  documents, from `getrusage(RUSAGE_CHILDREN)` of a fresh wrapper process.

Prints a Markdown table (paste it into benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
SWEEP_DOCS = 4000  # documents per batch size in the sweep


def write_corpus(bbc: Path, path: Path, count: int) -> Path:
    """Writes `count` JSONL documents: the BBC articles repeated, with ids and labels."""
    if path.exists():
        return path
    docs = [(p.parent.name, p.read_bytes().decode("utf-8", "replace")) for p in sorted(bbc.glob("*/*.txt"))]
    with open(path, "wb") as handle:
        for i in range(count):
            label, text = docs[i % len(docs)]
            handle.write(orjson.dumps({"id": f"doc{i}", "text": text, "label": label}) + b"\n")
    return path


def train(bbc: Path, arch: str, workdir: Path) -> Path:
    run = workdir / f"run_{arch}"
    if not (run / "export").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "train",
                "--data",
                str(bbc),
                "--out",
                str(run),
                "--set",
                f"model.arch={arch}",
                "--quiet",
            ],
            check=True,
        )
    return run / "export"


def ceiling(model_dir: Path, corpus: Path) -> tuple[int, float, dict]:
    """Best in-process throughput (docs/s) over the batch-size sweep, then on the whole corpus."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    from model.export import resolve_version_dir

    predict = tf.saved_model.load(str(resolve_version_dir(model_dir))).signatures["serving_default"]
    texts = [orjson.loads(line)["text"] for line in open(corpus, "rb")]
    sweep = {}
    for size in BATCH_SIZES:
        batches = [tf.constant(texts[i : i + size]) for i in range(0, SWEEP_DOCS, size)]
        predict(text=batches[0])
        started = time.perf_counter()
        for batch in batches:
            predict(text=batch)
        sweep[size] = sum(len(b) for b in batches) / (time.perf_counter() - started)
    best = max(sweep, key=lambda size: sweep[size])
    batches = [tf.constant(texts[i : i + best]) for i in range(0, len(texts), best)]
    started = time.perf_counter()
    for batch in batches:
        predict(text=batch)
    return best, len(texts) / (time.perf_counter() - started), sweep


def score(model_dir: Path, corpus: Path, out: Path, batch_size: int) -> tuple[dict, float, int]:
    """Runs `textserve score` in a fresh wrapper process; returns (summary, wall seconds, peak RSS KiB)."""
    wrapper = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "score",
        str(corpus),
        "--model",
        str(model_dir),
        "--output",
        str(out),
        "--batch-size",
        str(batch_size),
        "--overwrite",
        "--no-progress",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    wall = time.perf_counter() - started
    peak_kib = int(done.stdout.strip().splitlines()[-1])
    summary = json.loads(out.with_name(out.name.removesuffix(".jsonl") + ".summary.json").read_text())
    return summary, wall, peak_kib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bbc"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scoring"))
    parser.add_argument("--model-bilstm", type=Path, help="existing bilstm export (skip training)")
    parser.add_argument("--model-tfidf", type=Path, help="existing tfidf export (skip training)")
    parser.add_argument("--docs", type=int, default=50_000)
    parser.add_argument("--memory-docs", type=int, default=500_000)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(args.data, args.workdir / f"bbc_{args.docs}.jsonl", args.docs)

    rows = []
    for arch in ("bilstm", "tfidf"):
        model_dir = getattr(args, f"model_{arch}") or train(args.data, arch, args.workdir)
        best, top, sweep = ceiling(model_dir, corpus)
        print(
            f"{arch}: sweep {', '.join(f'{b}: {v:.0f}' for b, v in sweep.items())} docs/s; "
            f"ceiling {top:.0f} docs/s at batch {best}",
            flush=True,
        )
        summary, wall, peak = score(model_dir, corpus, args.workdir / f"scored_{arch}.jsonl", best)
        rate = summary["docs_per_second"]
        rows.append((arch, best, top, rate, args.docs / wall, rate / top, peak))
        print(
            f"{arch}: textserve score {rate:.0f} docs/s ({rate / top:.0%} of ceiling), wall {wall:.1f}s, "
            f"peak RSS {peak / 1024:.0f} MiB",
            flush=True,
        )

    big = write_corpus(args.data, args.workdir / f"bbc_{args.memory_docs}.jsonl", args.memory_docs)
    tfidf_dir = args.model_tfidf or train(args.data, "tfidf", args.workdir)
    best_tfidf = rows[1][1]
    _, _, small_peak = score(tfidf_dir, corpus, args.workdir / "mem_small.jsonl", best_tfidf)
    _, big_wall, big_peak = score(tfidf_dir, big, args.workdir / "mem_big.jsonl", best_tfidf)

    print(
        "\n| model | best batch | ceiling (docs/s) | `textserve score` (docs/s) | incl. load + count (docs/s) "
        "| % of ceiling | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|")
    for arch, best, top, rate, wall_rate, ratio, peak in rows:
        print(
            f"| {arch} | {best} | {top:.0f} | {rate:.0f} | {wall_rate:.0f} | {ratio:.0%} | {peak / 1024:.0f} MiB |"
        )
    print(
        f"\n| documents (tfidf) | peak RSS |\n|---|---|\n| {args.docs:,} | {small_peak / 1024:.0f} MiB |\n"
        f"| {args.memory_docs:,} | {big_peak / 1024:.0f} MiB ({big_peak / small_peak:.2f}×, {big_wall:.0f}s) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
