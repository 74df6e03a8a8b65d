"""Batch-scoring benchmark: `textserve score` end to end against the in-process rate of the same model.

    python benchmarks/bench_scoring.py --data ../shared/data/bbc --workdir /tmp/bench_scoring

One run covers issue 9's table: for each architecture (bilstm, tfidf; trained
on the BBC folder unless `--model-ARCH` points to an export), each input
format (JSON Lines, Parquet) and each size (50,000 and 500,000 documents, the
BBC articles repeated with ids and labels):

* in-process: `serving_default` called in this process on pre-built string
  batches of the same documents, at the best batch size of a sweep; nothing
  else is timed. This is the rate `score` is measured against;
* `textserve score` in a fresh process, reading the corpus and writing JSON
  Lines at that batch size. Its summary's `docs_per_second` covers reading,
  predicting and writing (start-up — TensorFlow import, model load and the
  count pass — subtracted; `wall` includes it). Peak RSS of the scorer comes
  from `getrusage(RUSAGE_CHILDREN)` of a wrapper process;
* reader alone: the same job in this process with the model replaced by a
  no-op that answers a constant, so the headroom left for the model shows;
* CPU per document of the scorer (user + system seconds / documents), a
  figure that stays meaningful on a busy machine.

Prints a Markdown table and writes `results.json` in the work directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson

BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
SWEEP_DOCS = 4000  # documents per batch size in the sweep
TARGETS = {"bilstm": 0.9, "tfidf": 0.8}  # issue 9: score / in-process at the best batch size


def bbc_documents(bbc: Path) -> list[tuple[str, str]]:
    """(label, text) of every BBC article, decoded as the readers decode them (latin-1 fallback)."""
    from pipeline.readers import read_folder

    return [(record.label or "", record.text or "") for record in read_folder(bbc, "latin-1")]


def write_corpus(docs: list[tuple[str, str]], path: Path, count: int) -> Path:
    """Writes `count` documents (BBC repeated, ids doc0...) as JSON Lines or Parquet, once."""
    if path.exists():
        return path
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        with open(tmp, "wb") as handle:
            for i in range(count):
                label, text = docs[i % len(docs)]
                handle.write(orjson.dumps({"id": f"doc{i}", "text": text, "label": label}) + b"\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("label", pa.string())])
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, count, 50_000):
                rows = range(start, min(count, start + 50_000))
                writer.write_table(
                    pa.table(
                        {
                            "id": [f"doc{i}" for i in rows],
                            "text": [docs[i % len(docs)][1] for i in rows],
                            "label": [docs[i % len(docs)][0] for i in rows],
                        },
                        schema=schema,
                    )
                )
    os.replace(tmp, path)
    return path


def train(bbc: Path, arch: str, workdir: Path) -> Path:
    """Trains one architecture with the project CLI (once per work directory); returns its export."""
    run = workdir / f"run_{arch}"
    if not (run / "export").is_dir():
        command = [sys.executable, "-m", "pipeline.cli", "train", "--data", str(bbc), "--out", str(run)]
        subprocess.run([*command, "--set", f"model.arch={arch}", "--quiet"], check=True)
    return run / "export"


def in_process_rate(model_dir: Path, texts: list[str]) -> tuple[int, float, dict[int, float]]:
    """Best in-process docs/s over the batch-size sweep, then on all of `texts` at that size."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the graph's text ops)

    from model.export import resolve_version_dir

    predict = tf.saved_model.load(str(resolve_version_dir(model_dir))).signatures["serving_default"]
    sweep = {}
    for size in BATCH_SIZES:
        batches = [tf.constant(texts[i : i + size]) for i in range(0, min(SWEEP_DOCS, len(texts)), size)]
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


_WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "r = resource.getrusage(resource.RUSAGE_CHILDREN); print(r.ru_maxrss, r.ru_utime + r.ru_stime)"
)


def score(model_dir: Path, corpus: Path, out: Path, batch_size: int) -> dict:
    """`textserve score` in a fresh process: summary rate, wall time, peak RSS and CPU seconds."""
    command = [sys.executable, "-m", "pipeline.cli", "score", str(corpus), "--model", str(model_dir)]
    command += ["--output", str(out), "--batch-size", str(batch_size), "--overwrite", "--no-progress"]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *command],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    wall = time.perf_counter() - started
    peak_kib, cpu_s = done.stdout.strip().splitlines()[-1].split()
    summary = json.loads(out.with_name(out.name.removesuffix(".jsonl") + ".summary.json").read_text())
    return {
        "docs_per_second": summary["docs_per_second"],
        "scoring_seconds": summary["scoring_seconds"],
        "wall_seconds": wall,
        "peak_rss_mib": int(peak_kib) / 1024,
        "cpu_ms_per_doc": float(cpu_s) * 1000 / summary["read"],
        "read": summary["read"],
        "errored": summary["errored"],
    }


class NoOpPredictor:
    """Answers every batch with a constant, so a run measures reading, routing and writing alone."""

    concurrency = 1
    description = "no-op model"

    def __init__(self, label_names: list[str]):
        self.label_names = label_names

    def predict(self, texts) -> dict[str, np.ndarray]:
        n = len(texts)
        width = len(self.label_names)
        return {
            "label": np.full(n, self.label_names[0].encode(), dtype=object),
            "score": np.ones(n, np.float32),
            "probabilities": np.full((n, width), 1.0 / width, np.float32),
        }

    def close(self) -> None:
        """Nothing to release."""


def reader_alone(corpus: Path, out: Path, batch_size: int, label_names: list[str]) -> dict:
    """The scoring job in this process with `NoOpPredictor`: docs/s and CPU ms per document."""
    from pipeline.config import load_config
    from pipeline.scoring.job import ScoreJob, run_scoring

    config = load_config(None, [f"score.batch_size={batch_size}"])
    job = ScoreJob((str(corpus),), str(out), config, model="(no-op)", overwrite=True, progress=False)
    before = resource.getrusage(resource.RUSAGE_SELF)
    summary = run_scoring(job, log=lambda _line: None, predictor=NoOpPredictor(label_names))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"docs_per_second": summary["docs_per_second"], "cpu_ms_per_doc": cpu * 1000 / summary["read"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "bbc"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scoring"))
    parser.add_argument("--model-bilstm", type=Path, help="existing bilstm export (skip training)")
    parser.add_argument("--model-tfidf", type=Path, help="existing tfidf export (skip training)")
    parser.add_argument("--sizes", default="50000,500000", help="corpus sizes, comma-separated")
    parser.add_argument("--formats", default="jsonl,parquet", help="input formats, comma-separated")
    parser.add_argument("--archs", default="bilstm,tfidf", help="architectures, comma-separated")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    formats, archs = args.formats.split(","), args.archs.split(",")

    docs = bbc_documents(args.data)
    label_names = sorted({label for label, _ in docs})
    corpora = {
        (fmt, n): write_corpus(docs, args.workdir / f"bbc_{n}.{fmt}", n) for fmt in formats for n in sizes
    }
    texts = [docs[i % len(docs)][1] for i in range(min(sizes))]
    results: list[dict] = []
    for arch in archs:
        model_dir = getattr(args, f"model_{arch}") or train(args.data, arch, args.workdir)
        best, rate, sweep = in_process_rate(model_dir, texts)
        print(
            f"{arch}: in-process sweep {', '.join(f'{b}: {v:.0f}' for b, v in sweep.items())} docs/s; "
            f"best {rate:.0f} docs/s at batch {best}",
            flush=True,
        )
        for (fmt, n), corpus in corpora.items():
            run = score(model_dir, corpus, args.workdir / f"scored_{arch}_{fmt}_{n}.jsonl", best)
            alone = reader_alone(corpus, args.workdir / f"noop_{fmt}_{n}.jsonl", best, label_names)
            row = {"arch": arch, "format": fmt, "documents": n, "batch": best, "in_process": rate, **run}
            row["reader_alone"] = alone["docs_per_second"]
            row["reader_cpu_ms_per_doc"] = alone["cpu_ms_per_doc"]
            row["ratio"] = run["docs_per_second"] / rate
            results.append(row)
            print(
                f"{arch} {fmt} {n}: score {run['docs_per_second']:.0f} docs/s ({row['ratio']:.2f}x), "
                f"reader alone {alone['docs_per_second']:.0f} docs/s, peak RSS {run['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    (args.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def print_table(results: list[dict]) -> None:
    """The Markdown tables for benchmarks/README.md: rates and ratios, then memory against size."""
    print(
        "\n| model | input | documents | batch | in-process (docs/s) | `score` (docs/s) | ratio | target "
        "| reader alone (docs/s) | `score` CPU ms/doc | reader CPU ms/doc | wall (s) | peak RSS |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['arch']} | {r['format']} | {r['documents']:,} | {r['batch']} | {r['in_process']:.0f} "
            f"| {r['docs_per_second']:.0f} | {r['ratio']:.2f}× | ≥ {TARGETS.get(r['arch'], 0):.1f}× "
            f"| {r['reader_alone']:.0f} | {r['cpu_ms_per_doc']:.2f} | {r['reader_cpu_ms_per_doc']:.3f} "
            f"| {r['wall_seconds']:.0f} | {r['peak_rss_mib']:.0f} MiB |"
        )
    by_size: dict[tuple[str, str], dict[int, float]] = {}
    for r in results:
        by_size.setdefault((r["arch"], r["format"]), {})[r["documents"]] = r["peak_rss_mib"]
    sizes = sorted({r["documents"] for r in results})
    if len(sizes) > 1:
        print(
            "\n| model | input | "
            + " | ".join(f"peak RSS at {n:,}" for n in sizes)
            + " | largest / smallest |"
        )
        print("|---|---|" + "---:|" * (len(sizes) + 1))
        for (arch, fmt), peaks in by_size.items():
            cells = " | ".join(f"{peaks[n]:.0f} MiB" for n in sizes)
            print(f"| {arch} | {fmt} | {cells} | {peaks[sizes[-1]] / peaks[sizes[0]]:.2f}× |")


if __name__ == "__main__":
    sys.exit(main())
