"""One scoring job, start to end: resolve and count the inputs, predict, write shards, summarise.

    textserve score 'archive/*.jsonl.gz' --model runs/bbc/export --output scores.jsonl --num-shards 4

The job, in order:

1. Resolve the inputs (files, directories, globs) and count their documents.
   The count pass opens and reads every file, so an unreadable, truncated or
   mis-columned input fails the run here, before any output is written. The
   count also fixes the shard boundaries and gives the progress bar its total.
2. Read the documents (`inputs.py`) inside a tf.data pipeline and predict them
   (`predictors.py`: in-process, or through a model server), a few batches in
   flight, so memory stays flat whatever the input size.
3. Route each document by its position to one of `num_shards` contiguous
   shards (`shards.py`). A document that cannot be scored becomes a row of the
   errors file with its file, line and reason; read = scored + errored always.
4. Commit each shard atomically; `--resume` skips the completed ones.

Output files for `--output scores.jsonl`:

    scores.jsonl                           one shard, or with --num-shards 4:
    scores-00000-of-00004.jsonl ...        shards (TF / Beam naming)
    scores.errors.jsonl                    every bad record: source, line, id, reason
    scores.summary.json                    counts, time, docs/s, accuracy / macro-F1
    scores.resume/                         per-shard state for --resume

No text processing happens here: the model's graph does all of it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import orjson

from pipeline.config import DataConfig
from pipeline.errors import DataError, ScoringError
from pipeline.readers import FORMATS, count_records, resolve_inputs
from pipeline.scoring.inputs import record_batches
from pipeline.scoring.predictors import LocalPredictor, RemotePredictor
from pipeline.scoring.shards import OutputPaths, ShardedOutput, job_fingerprint, prepare_outputs
from pipeline.scoring.writers import OUTPUT_FORMATS, atomic_write_bytes

INPUT_FORMATS = ("auto", *FORMATS)
# Options that may change between a run and its --resume (they do not change any output byte).
_RESUMABLE_OPTIONS = (
    "resume",
    "overwrite",
    "progress",
    "concurrency",
    "timeout_s",
    "inputs",
    "batch_size",
    "reader_parallelism",
)


@dataclass(frozen=True)
class ScoreConfig:
    """Everything one scoring job needs, built once by `textserve score`.

    Attributes:
      inputs: files, directories (class-folder layout, or a folder of files) or globs.
      output: output path; its format suffix, if any, is stripped to name the
        shards, the errors file and the summary.
      model: export directory or version directory (in-process scoring).
      server: `grpc://HOST:PORT` or `http://HOST:PORT` to score through a server instead.
      model_name: the served model's name (with `server`).
      input_format: one of INPUT_FORMATS; `auto` picks by extension.
      output_format: one of OUTPUT_FORMATS.
      text_column: column(s) / key(s) / feature holding the text; several are joined by a space.
      id_column: column / key / feature with document ids ("" = `file:line`).
      label_column: column / key / feature with reference labels ("" = none);
        the class-folder layout always has them.
      header: CSV/TSV files start with a header row.
      fallback_encoding: decode non-UTF-8 text with this encoding instead of
        reporting it as an error ("" = report).
      batch_size: documents per `serving_default` call (or per request).
      num_shards: output shards.
      probabilities: also write every class's probability, as `p_<class>`.
      resume: skip shards completed by an earlier run of the same job.
      overwrite: replace existing outputs of an earlier job.
      concurrency: requests in flight (with `server`).
      timeout_s: per-request deadline (with `server`).
      progress: show a progress bar (None = when stderr is a terminal).
      reader_parallelism: files read at once by the interleave.
    """

    inputs: tuple[str, ...]
    output: str
    model: str = ""
    server: str = ""
    model_name: str = ""
    input_format: str = "auto"
    output_format: str = "jsonl"
    text_column: tuple[str | int, ...] = ("text",)
    id_column: str | int = ""
    label_column: str | int = ""
    header: bool = True
    fallback_encoding: str = ""
    batch_size: int = 256
    num_shards: int = 1
    probabilities: bool = False
    resume: bool = False
    overwrite: bool = False
    concurrency: int = 4
    timeout_s: float = 60.0
    progress: bool | None = None
    reader_parallelism: int = 4

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("`inputs` must name at least one file, directory or glob, received none.")
        if bool(self.model) == bool(self.server):
            raise ValueError(
                f"give exactly one of --model (score in-process) or --server (score through a running "
                f"server), received model={self.model!r}, server={self.server!r}."
            )
        if self.server and not self.model_name:
            raise ValueError("--server needs --model-name, the name the server serves the model under.")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(
                f"`input_format` must be one of {list(INPUT_FORMATS)}, received {self.input_format!r}."
            )
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(
                f"`format` must be one of {list(OUTPUT_FORMATS)}, received {self.output_format!r}."
            )
        for name in ("batch_size", "num_shards", "concurrency", "reader_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, received {getattr(self, name)!r}.")
        if self.resume and self.overwrite:
            raise ValueError("--resume continues an earlier job and --overwrite replaces it; give one.")
        if self.fallback_encoding:
            try:
                "".encode(self.fallback_encoding)
            except LookupError as error:
                raise ValueError(f"unknown --fallback-encoding {self.fallback_encoding!r}.") from error

    def paths(self) -> OutputPaths:
        """Where this job's files go."""
        return OutputPaths.for_output(self.output, self.output_format, self.num_shards)

    def data_config(self) -> DataConfig:
        """The reading options in the form the shared readers of `pipeline/data.py` take."""
        return DataConfig(
            text_column=self.text_column,
            label_column=self.label_column,
            id_column=self.id_column,
            header=self.header,
            fallback_encoding=self.fallback_encoding or "latin-1",
        )


class _Progress:
    """A tqdm bar on stderr with docs/s and ETA (off when stderr is not a terminal, unless asked)."""

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
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _make_predictor(config: ScoreConfig) -> LocalPredictor | RemotePredictor:
    if config.server:
        return RemotePredictor(
            config.server,
            config.model_name,
            concurrency=config.concurrency,
            timeout_s=config.timeout_s,
            need_label_names=config.probabilities,
        )
    return LocalPredictor(config.model)


def count_inputs(config: ScoreConfig):
    """Resolves and counts the inputs (the start-of-run check); returns (sources, counts).

    Raises:
      ScoringError: a missing, unreadable or mis-columned input.
    """
    try:
        sources = resolve_inputs(config.inputs, config.input_format)
        data_config = config.data_config()
        return sources, [count_records(source, data_config) for source in sources]
    except DataError as error:
        raise ScoringError(str(error)) from error


def run_scoring(config: ScoreConfig, log: Callable[[str], None] = print) -> dict:
    """Runs a whole scoring job (see the module docstring) and returns its summary.

    Args:
      config: the job.
      log: where the start and summary lines go.

    Returns:
      The summary dict also written to `<base>.summary.json`.

    Raises:
      ScoringError: at the start for unreadable inputs, an invalid model or an
        unreachable server, or existing outputs without --resume/--overwrite;
        mid-run only for failures that are not about one record (server down,
        disk full), after which --resume continues.
    """
    started = time.monotonic()
    paths = config.paths()
    sources, counts = count_inputs(config)
    total = sum(counts)
    predictor = _make_predictor(config)
    try:
        options = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE_OPTIONS}
        fingerprint = job_fingerprint(sources, total, predictor.description, options)
        done = prepare_outputs(
            paths, config.num_shards, fingerprint, resume=config.resume, overwrite=config.overwrite
        )
        log(
            f"scoring {total} documents from {len(sources)} input(s) with {predictor.description}"
            + (f"; resuming, {len(done)} of {config.num_shards} shards already done" if done else "")
        )
        scoring_started = time.monotonic()
        output = ShardedOutput(
            paths, total, done, config.output_format, predictor.label_names, config.probabilities
        )
        ignored: list[str] = []
        progress = _Progress(total, output.start, config.progress)
        try:
            if output.start < total or output.first_pending < config.num_shards:
                batches = record_batches(
                    sources,
                    config.data_config(),
                    batch_size=config.batch_size,
                    fallback_allowed=bool(config.fallback_encoding),
                    reader_parallelism=config.reader_parallelism,
                    skip=output.start,
                    ignored=ignored,
                )
                for batch, outputs in predictor.predictions(batches):
                    output.add(batch, outputs)
                    progress.update(len(batch["id"]))
            stats = output.finish()
        except BaseException:
            output.abort()
            raise
        finally:
            progress.close()
        this_run = output.position - output.start
        scoring_seconds = time.monotonic() - scoring_started
    finally:
        predictor.close()
    return _finish(
        config,
        paths,
        stats,
        this_run,
        time.monotonic() - started,
        scoring_seconds,
        total,
        predictor.label_names,
        ignored,
        log,
    )


def _finish(
    config, paths, stats, this_run, seconds, scoring_seconds, total, label_names, ignored, log
) -> dict:
    """Joins the shards' error rows and counts into the errors file and the summary."""
    with open(paths.errors.with_name(f".{paths.errors.name}.partial"), "wb") as out:
        for k in range(config.num_shards):
            out.write(paths.shard_state(k)[0].read_bytes())
        out.flush()
        os.fsync(out.fileno())
    os.replace(paths.errors.with_name(f".{paths.errors.name}.partial"), paths.errors)
    read = sum(s.read for s in stats.values())
    scored = sum(s.scored for s in stats.values())
    errored = sum(s.errored for s in stats.values())
    reasons: Counter = Counter()
    confusion: Counter = Counter()
    for s in stats.values():
        reasons.update(s.errors_by_reason)
        confusion.update(s.confusion)
    summary = {
        "inputs": list(config.inputs),
        "documents_counted": total,
        "read": read,
        "scored": scored,
        "errored": errored,
        "errors_by_reason": dict(reasons.most_common()),
        # Top-level files of class-folder inputs (README.TXT): not documents, listed so nothing is hidden.
        "ignored_files": sorted(set(ignored)),
        # docs/s covers reading, predicting and writing; `seconds` adds loading and counting.
        "seconds": round(seconds, 3),
        "scoring_seconds": round(scoring_seconds, 3),
        "documents_this_run": this_run,
        "docs_per_second": round(this_run / scoring_seconds, 1) if scoring_seconds > 0 else 0.0,
        "outputs": [str(p) for p in paths.shards],
        "errors_file": str(paths.errors),
    }
    if read != scored + errored or read != total:
        raise ScoringError(
            f"internal accounting mismatch: counted {total}, read {read}, scored {scored}, errored {errored}; "
            f"please report this with the inputs."
        )
    if confusion:
        from pipeline.evaluate import classification_metrics

        true, predicted = [], []
        for key, n in confusion.items():
            t, p = key.split("\t")
            true += [t] * n
            predicted += [p] * n
        metrics = classification_metrics(true, predicted, label_names)
        summary["metrics"] = {key: metrics[key] for key in ("count", "accuracy", "macro_f1", "per_class")}
    atomic_write_bytes(paths.summary, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    log(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """The end-of-run lines: counts, time and rate, metrics, where the files are."""
    lines = [
        f"read {summary['read']} = scored {summary['scored']} + errored {summary['errored']} "
        f"in {summary['seconds']:.1f}s ({summary['docs_per_second']:.0f} docs/s this run)"
    ]
    if summary["errored"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in summary["errors_by_reason"].items())
        lines.append(f"errors by reason: {reasons}")
    if "metrics" in summary:
        m = summary["metrics"]
        lines.append(
            f"against the reference labels: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
            f"({m['count']} labelled documents)"
        )
    outputs = summary["outputs"]
    lines.append(f"output: {outputs[0]}" + (f" ... ({len(outputs)} shards)" if len(outputs) > 1 else ""))
    lines.append(f"errors: {summary['errors_file']}")
    return "\n".join(lines)
