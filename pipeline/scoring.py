"""Batch scoring: documents in, one prediction row per document out, nothing lost.

    textserve score 'archive/*.jsonl.gz' --model runs/bbc/export --output scores.jsonl --num-shards 4

The job, in order:

1. Resolve the inputs (files, directories, globs) and count their documents.
   The count pass opens and reads every file, so an unreadable, truncated or
   mis-columned input fails the run here, before any output is written. The
   count also fixes the shard boundaries and gives the progress bar its total.
2. Read the documents with the readers of `pipeline/data.py` (plus plain-text
   and TFRecord readers here) inside a tf.data pipeline: interleave over files,
   batch, predict with the SavedModel's `serving_default` (one call per batch,
   inside the pipeline so it overlaps with writing), bounded prefetch. Memory
   stays flat whatever the input size: only a few batches are in flight.
3. Route each document by its position in the input to one of `num_shards`
   contiguous shards. A document that cannot be scored (undecodable bytes, a
   missing column, an empty text, a malformed JSON line) becomes a row of the
   errors file with its file, line and reason; read = scored + errored always.
4. Commit each shard atomically (temporary file, fsync, rename), after its
   error rows and counts are saved under `<base>.resume/`. `--resume` skips
   shards whose output and counts both exist, so a killed run never leaves a
   truncated shard that looks complete.

Output files for `--output scores.jsonl`:

    scores.jsonl                           one shard, or with --num-shards 4:
    scores-00000-of-00004.jsonl ...        shards (TF / Beam naming)
    scores.errors.jsonl                    every bad record: source, line, id, reason
    scores.summary.json                    counts, time, docs/s, accuracy / macro-F1
    scores.resume/                         per-shard state for --resume

No text processing happens here: the model's graph does all of it.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from pipeline.config import DataConfig
from pipeline.data import Record, _open_text, _repair, read_delimited, read_folder, read_jsonl
from pipeline.errors import DataError, ScoringError
from preprocessing import names

INPUT_FORMATS = ("auto", "text", "csv", "tsv", "jsonl", "tfrecord", "folder")
OUTPUT_FORMATS = ("jsonl", "csv", "tfrecord")
_OUTPUT_SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "tfrecord": ".tfrecord"}
# File name endings (before an optional .gz) that pick the reader under --input-format auto.
_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".tfrecord": "tfrecord",
    ".tfrecords": "tfrecord",
    ".tfr": "tfrecord",
}
# Records per element handed from a Python reader to tf.data: per-element
# overhead of `from_generator` is tens of microseconds, so records travel in chunks.
_READER_CHUNK = 256
# Batches predicted ahead of the writer. Bounded, so memory does not grow with the input.
_PREFETCH_BATCHES = 2


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

    def data_config(self) -> DataConfig:
        """The reading options in the form the shared readers of `pipeline/data.py` take."""
        return DataConfig(
            text_column=self.text_column,
            label_column=self.label_column,
            id_column=self.id_column,
            header=self.header,
            fallback_encoding=self.fallback_encoding or "latin-1",
        )


# --- Output paths -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputPaths:
    """Where a job's files go (see the module docstring)."""

    shards: tuple[Path, ...]
    errors: Path
    summary: Path
    state_dir: Path

    @classmethod
    def for_config(cls, config: ScoreConfig) -> OutputPaths:
        output = Path(config.output)
        suffix = _OUTPUT_SUFFIX[config.output_format]
        base = output.with_name(output.name.removesuffix(suffix)) if output.name.endswith(suffix) else output
        if config.num_shards == 1:
            shards: tuple[Path, ...] = (output,)
        else:
            shards = tuple(
                base.with_name(f"{base.name}-{k:05d}-of-{config.num_shards:05d}{suffix}")
                for k in range(config.num_shards)
            )
        errors = base.with_name(base.name + ".errors.jsonl")
        if errors in shards:
            raise ValueError(f"--output {output} would overwrite the errors file; pick another name.")
        return cls(
            shards, errors, base.with_name(base.name + ".summary.json"), base.with_name(base.name + ".resume")
        )

    def shard_state(self, k: int) -> tuple[Path, Path]:
        """The saved error rows and counts of shard `k`."""
        return self.state_dir / f"{k:05d}.errors.jsonl", self.state_dir / f"{k:05d}.json"


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# --- Inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input and the reader it needs (`folder` inputs are whole class-folder trees)."""

    path: Path
    format: str


def _format_of(path: Path, configured: str) -> str:
    if configured != "auto":
        return configured
    if path.is_dir():
        return "folder"
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise ScoringError(
        f"{path}: cannot tell the input format from the name; pass --input-format "
        f"({', '.join(INPUT_FORMATS[1:])})."
    )


def _is_class_folder(path: Path) -> bool:
    return any(child.is_dir() and not child.name.startswith(".") for child in path.iterdir())


def resolve_inputs(patterns: Sequence[str], input_format: str = "auto") -> list[InputFile]:
    """Expands files, directories and globs into the ordered list of inputs.

    A directory with sub-directories is the class-folder layout (one input); a
    directory of files stands for its files, sorted. Each file is listed once.

    Raises:
      ScoringError: a path that does not exist, a glob that matches nothing, a
        file whose format cannot be told from its name.
    """
    found: list[InputFile] = []
    seen: set[Path] = set()

    def add(path: Path, fmt: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(InputFile(path, fmt))

    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise ScoringError(
                    f"{pattern}: the pattern matches no file (quote it so the shell leaves it to us)."
                )
            paths = [Path(m) for m in matches]
        else:
            paths = [Path(pattern)]
        for path in paths:
            if not path.exists():
                raise ScoringError(f"{path}: no such file or directory.")
            if path.is_dir() and (
                input_format == "folder" or (input_format == "auto" and _is_class_folder(path))
            ):
                add(path, "folder")
            elif path.is_dir():
                for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
                    add(child, _format_of(child, input_format))
            else:
                add(path, _format_of(path, input_format))
    return found


# --- Readers --------------------------------------------------------------------------------
# CSV/TSV, JSON Lines and class folders come from pipeline/data.py; plain text
# and TFRecord are read here with the same Record contract.


def _open_binary(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_text_lines(path: Path, config: DataConfig) -> Iterator[Record]:
    """Yields one record per line of a plain-text file; a blank line is an empty-text record."""
    with _open_binary(path) as handle:
        for line_number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="surrogateescape")
            text, encoding = _repair(line, config.fallback_encoding)
            yield Record(f"{path.name}:{line_number}", text, None, str(path), line_number, None, encoding)


def _feature_text(example, key: str) -> tuple[str | None, str | None]:
    """A bytes feature's single value as text, or (None, reason)."""
    if key not in example.features.feature:
        return None, f"missing feature {key!r}"
    feature = example.features.feature[key]
    kind = feature.WhichOneof("kind")
    if kind != "bytes_list":
        return None, f"feature {key!r} is a {kind}, expected bytes_list"
    values = feature.bytes_list.value
    if len(values) != 1:
        return None, f"feature {key!r} has {len(values)} values, expected 1"
    return values[0].decode("utf-8", errors="surrogateescape"), None


def read_tfrecord(path: Path, config: DataConfig) -> Iterator[Record]:
    """Yields one record per serialized `tf.Example` (bytes feature `text`, optional `id`).

    `line` is the 1-based record number. A corrupted file yields one problem
    record at the point of corruption: what follows it cannot be framed.
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    compression = "GZIP" if path.suffix == ".gz" else ""
    dataset = tf.data.TFRecordDataset(str(path), compression_type=compression)
    number = 0
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            serialized = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            yield Record(
                f"{path.name}:{number + 1}",
                None,
                None,
                str(path),
                number + 1,
                f"corrupted TFRecord data, the rest of the file is unreadable: {error.message}",
            )
            return
        number += 1
        doc_id = f"{path.name}:{number}"
        try:
            example = example_pb2.Example.FromString(serialized)
        except DecodeError:
            yield Record(doc_id, None, None, str(path), number, "record is not a serialized tf.Example")
            continue
        parts: list[str] = []
        problem = None
        for key in config.text_column:
            value, problem = _feature_text(example, str(key))
            if problem or value is None:
                break
            parts.append(value)
        if problem:
            yield Record(doc_id, None, None, str(path), number, problem)
            continue
        text, encoding = _repair(" ".join(parts), config.fallback_encoding)
        if config.id_column != "":
            given, _ = _feature_text(example, str(config.id_column))
            doc_id = given.strip() if given and given.strip() else doc_id
        label = None
        if config.label_column != "":
            label, _ = _feature_text(example, str(config.label_column))
        yield Record(doc_id, text, label or None, str(path), number, None, encoding)


def iter_records(source: InputFile, config: DataConfig, ignored: list[str] | None = None) -> Iterator[Record]:
    """Yields the records of one input with the reader its format needs."""
    if source.format == "folder":
        return read_folder(source.path, config.fallback_encoding, ignored)
    if source.format in ("csv", "tsv"):
        return read_delimited(source.path, config, "," if source.format == "csv" else "\t")
    if source.format == "jsonl":
        return read_jsonl(source.path, config)
    if source.format == "tfrecord":
        return read_tfrecord(source.path, config)
    return read_text_lines(source.path, config)


def count_records(source: InputFile, config: DataConfig) -> int:
    """Counts the records `iter_records` will yield, reading the whole input.

    This is also the start-of-run check: it raises on anything that would stop
    the run later (unreadable or truncated file, corrupted gzip, CSV header
    without the configured columns, corrupted TFRecord framing).

    Raises:
      ScoringError: naming the file and what to do.
    """
    path = source.path
    try:
        if source.format == "folder":
            return sum(
                1
                for entry in path.iterdir()
                if entry.is_dir() and not entry.name.startswith(".")
                for p in entry.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )
        if source.format == "text":
            with _open_binary(path) as handle:
                return sum(1 for _ in handle)
        if source.format == "jsonl":
            with _open_text(path) as handle:
                return sum(1 for line in handle if line.strip())
        if source.format in ("csv", "tsv"):
            next(
                iter(read_delimited(path, config, "," if source.format == "csv" else "\t")), None
            )  # checks columns
            with _open_text(path) as handle:
                rows = sum(
                    1 for row in csv.reader(handle, delimiter="," if source.format == "csv" else "\t") if row
                )
            return max(rows - (1 if config.header else 0), 0)
    except DataError as error:
        raise ScoringError(str(error)) from error
    except (OSError, EOFError, UnicodeError) as error:
        raise ScoringError(f"{path}: cannot read the input ({error}); fix or remove the file.") from error
    import tensorflow as tf

    compression = "GZIP" if path.suffix == ".gz" else ""
    try:
        return int(
            tf.data.TFRecordDataset(str(path), compression_type=compression).reduce(
                np.int64(0), lambda n, _: n + 1
            )
        )
    except tf.errors.OpError as error:  # DataLossError on corrupted framing or gzip
        raise ScoringError(
            f"{path}: cannot read the TFRecord file ({error.message}); fix or remove it."
        ) from error


def record_problem(record: Record, fallback_allowed: bool) -> str | None:
    """Scoring's policy: why a record cannot be scored, or None."""
    if record.problem:
        return record.problem
    if record.fallback_encoding and not fallback_allowed:
        return "text is not valid UTF-8 (pass --fallback-encoding ENC to decode such text, e.g. latin-1)"
    if record.text is None:
        return "no text"
    if not record.text.strip():
        return "empty text"
    return None


# --- The tf.data pipeline -----------------------------------------------------------------------

_FIELDS = ("id", "text", "label", "source", "problem")


def _encode(value: str | None) -> bytes:
    return b"" if value is None else value.encode("utf-8", errors="surrogateescape")


def _chunked_records(
    source: InputFile, config: DataConfig, fallback_allowed: bool, ignored: list[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Groups one input's records into column arrays of up to _READER_CHUNK for tf.data."""
    columns: dict[str, list] = {key: [] for key in (*_FIELDS, "line")}
    for record in iter_records(source, config, ignored):
        problem = record_problem(record, fallback_allowed)
        columns["id"].append(_encode(record.id))
        columns["text"].append(b"" if problem else _encode(record.text))
        columns["label"].append(_encode(record.label))
        columns["source"].append(_encode(record.source))
        columns["problem"].append(_encode(problem))
        columns["line"].append(record.line)
        if len(columns["id"]) == _READER_CHUNK:
            yield {
                key: np.array(values, dtype=object if key != "line" else np.int64)
                for key, values in columns.items()
            }
            columns = {key: [] for key in columns}
    if columns["id"]:
        yield {
            key: np.array(values, dtype=object if key != "line" else np.int64)
            for key, values in columns.items()
        }


def record_batches(
    sources: Sequence[InputFile], config: ScoreConfig, skip: int = 0, ignored: list[str] | None = None
):
    """The reading half of the pipeline: a `tf.data.Dataset` of record batches.

    Files are interleaved deterministically, so the order (and therefore every
    document's shard) is the same on every run.

    Args:
      sources: the resolved inputs.
      config: the job.
      skip: documents at the start to leave out (already scored shards).
      ignored: receives top-level files skipped in class-folder inputs.

    Returns:
      A dataset of dicts with `id`, `text`, `label`, `source`, `problem`
      (string `[B]`) and `line` (int64 `[B]`); `text` is empty for problem records.
    """
    import tensorflow as tf

    data_config = config.data_config()
    fallback_allowed = bool(config.fallback_encoding)
    ignored = ignored if ignored is not None else []
    spec = {key: tf.TensorSpec([None], tf.string) for key in _FIELDS}
    spec["line"] = tf.TensorSpec([None], tf.int64)

    def one_file(index):
        return tf.data.Dataset.from_generator(
            lambda i: _chunked_records(sources[int(i)], data_config, fallback_allowed, ignored),
            args=(index,),
            output_signature=spec,
        )

    files = tf.data.Dataset.range(len(sources))
    chunks = files.interleave(
        one_file,
        cycle_length=min(len(sources), config.reader_parallelism),
        block_length=1,
        num_parallel_calls=min(len(sources), config.reader_parallelism),
        deterministic=True,
    )
    records = chunks.unbatch()
    if skip:
        records = records.skip(skip)
    return records.batch(config.batch_size)


# --- Predictors ---------------------------------------------------------------------------------


class LocalPredictor:
    """The exported SavedModel loaded in this process, run inside the tf.data pipeline.

    Args:
      path: export directory or version directory.

    Raises:
      ScoringError: no SavedModel there, or one without the expected signature.
    """

    def __init__(self, path: str | Path):
        import tensorflow as tf

        from model.export import ExportedModel

        try:
            self.model = ExportedModel(path)
        except FileNotFoundError as error:
            raise ScoringError(str(error)) from error
        except (OSError, ValueError, tf.errors.OpError) as error:
            raise ScoringError(f"{path}: cannot load the SavedModel: {error}") from error
        except KeyError as error:
            raise ScoringError(
                f"{path}: the SavedModel has no `{names.PREDICT_SIGNATURE}` signature; export it with "
                f"`textserve train`."
            ) from error
        outputs = set(self.model.predict_fn.structured_outputs)
        missing = {names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES} - outputs
        inputs = self.model.predict_fn.structured_input_signature[1]
        if missing or names.TEXT_KEY not in inputs:
            raise ScoringError(
                f"{self.model.version_dir}: `{names.PREDICT_SIGNATURE}` must take `{names.TEXT_KEY}` and "
                f"return {sorted(names.PREDICT_OUTPUTS)}; it takes {sorted(inputs)} and returns {sorted(outputs)}."
            )
        self.label_names = self.model.label_names
        self.description = str(self.model.version_dir)

    def predictions(self, batches) -> Iterator[tuple[dict, dict]]:
        """Yields (record batch, outputs) as numpy, predicting one batch ahead of the consumer."""
        import tensorflow as tf

        predict_fn = self.model.predict_fn
        wanted = (names.PREDICTED_LABEL, names.SCORE, names.PROBABILITIES)

        def predict(batch):
            outputs = predict_fn(text=batch["text"])  # one call per batch
            return batch, {key: outputs[key] for key in wanted}

        dataset = batches.map(predict, num_parallel_calls=1, deterministic=True).prefetch(_PREFETCH_BATCHES)
        options = tf.data.Options()
        options.experimental_optimization.map_parallelization = False
        return dataset.with_options(options).as_numpy_iterator()

    def close(self) -> None:
        """Nothing to release (kept for symmetry with the remote predictor)."""


# --- Writers ----------------------------------------------------------------------------------


@dataclass
class RowBatch:
    """Scored rows of one shard segment: ids, labels, scores and (optionally) probabilities."""

    ids: list[str]
    labels: list[str]
    scores: list[float]
    probabilities: np.ndarray | None  # float32 [rows, classes]


def encode_rows(rows: RowBatch, output_format: str, prob_keys: Sequence[str]) -> list[bytes]:
    """Encodes scored rows as output records: JSON objects, CSV lines or serialized tf.Examples.

    Records carry no line terminator; the writer adds it. Shared by the tf.data
    writer and the Beam pipeline so both produce the same bytes.
    """
    probs = rows.probabilities.tolist() if prob_keys and rows.probabilities is not None else None
    if output_format == "jsonl":
        out = []
        for i, (doc_id, label, score) in enumerate(zip(rows.ids, rows.labels, rows.scores)):
            row = {"id": doc_id, names.PREDICTED_LABEL: label, names.SCORE: score}
            if probs is not None:
                row.update(zip(prob_keys, probs[i]))
            out.append(orjson.dumps(row))
        return out
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="")
        out = []
        for i, (doc_id, label, score) in enumerate(zip(rows.ids, rows.labels, rows.scores)):
            buffer.seek(0)
            buffer.truncate()
            writer.writerow([doc_id, label, score, *(probs[i] if probs is not None else ())])
            out.append(buffer.getvalue().encode("utf-8"))
        return out
    from tensorflow.core.example import example_pb2, feature_pb2

    out = []
    for i, (doc_id, label, score) in enumerate(zip(rows.ids, rows.labels, rows.scores)):
        example = example_pb2.Example()
        feature = example.features.feature
        feature["id"].bytes_list.value.append(doc_id.encode("utf-8"))
        feature[names.PREDICTED_LABEL].bytes_list.value.append(label.encode("utf-8"))
        feature[names.SCORE].float_list.value.append(score)
        if probs is not None:
            for key, p in zip(prob_keys, probs[i]):
                feature[key].CopyFrom(feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[p])))
        out.append(example.SerializeToString())
    return out


def csv_header(prob_keys: Sequence[str]) -> str:
    """The CSV output's header line (no terminator)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["id", names.PREDICTED_LABEL, names.SCORE, *prob_keys])
    return buffer.getvalue()


class ShardWriter:
    """Writes one output shard to a hidden temporary file; `commit` renames it into place.

    Args:
      path: the final shard path.
      output_format: one of OUTPUT_FORMATS.
      label_names: class names in probability order.
      probabilities: write `p_<class>` columns.
    """

    def __init__(self, path: Path, output_format: str, label_names: Sequence[str], probabilities: bool):
        self.path = path
        self.format = output_format
        self.prob_keys = [names.probability_key(label) for label in label_names] if probabilities else []
        self.tmp = path.with_name(f".{path.name}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        if output_format == "tfrecord":
            import tensorflow as tf

            self._handle = tf.io.TFRecordWriter(str(self.tmp))
        else:
            self._handle = open(self.tmp, "wb")
            if output_format == "csv":
                self._handle.write(csv_header(self.prob_keys).encode("utf-8") + b"\n")

    def write(self, rows: RowBatch) -> None:
        """Appends rows in order."""
        records = encode_rows(rows, self.format, self.prob_keys)
        if self.format == "tfrecord":
            for record in records:
                self._handle.write(record)
        elif records:
            self._handle.write(b"\n".join(records) + b"\n")

    def commit(self) -> None:
        """Flushes to disk and renames the shard into place (atomic on one filesystem)."""
        if self.format == "tfrecord":
            self._handle.close()
            with open(self.tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        else:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Closes and removes the temporary file (the run was interrupted)."""
        try:
            self._handle.close()
        finally:
            self.tmp.unlink(missing_ok=True)


# --- The job ------------------------------------------------------------------------------------


@dataclass
class ShardState:
    """Counts of one shard, saved next to its output for --resume and the summary."""

    read: int = 0
    scored: int = 0
    errored: int = 0
    errors_by_reason: dict = field(default_factory=dict)
    # "true<TAB>predicted" -> documents, over documents with a reference label.
    confusion: dict = field(default_factory=dict)


def _job_fingerprint(config: ScoreConfig, sources: Sequence[InputFile], total: int, model: str) -> dict:
    """What must not change between a run and its --resume."""
    files = []
    for source in sources:
        stat = source.path.stat()
        files.append([str(source.path.resolve()), source.format, stat.st_size, int(stat.st_mtime)])
    options = {
        key: value
        for key, value in asdict(config).items()
        if key
        not in (
            "resume",
            "overwrite",
            "progress",
            "concurrency",
            "timeout_s",
            "inputs",
            "batch_size",
            "reader_parallelism",
        )
    }
    # Through JSON and back, so it compares equal to the saved copy (tuples become lists).
    return orjson.loads(
        orjson.dumps({"inputs": files, "documents": total, "model": model, "options": options})
    )


def _reason_key(problem: str) -> str:
    """Groups error reasons for the summary (the part before any detail)."""
    return problem.split(":", 1)[0].split(" (", 1)[0]


class _Progress:
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


def _make_predictor(config: ScoreConfig):
    if config.server:
        from pipeline.remote_scoring import RemotePredictor

        return RemotePredictor(
            config.server,
            config.model_name,
            concurrency=config.concurrency,
            timeout_s=config.timeout_s,
            need_label_names=config.probabilities,
        )
    return LocalPredictor(config.model)


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
    paths = OutputPaths.for_config(config)
    sources = resolve_inputs(config.inputs, config.input_format)
    data_config = config.data_config()
    counts = [count_records(source, data_config) for source in sources]
    total = sum(counts)
    predictor = _make_predictor(config)
    try:
        fingerprint = _job_fingerprint(config, sources, total, predictor.description)
        done = _prepare_outputs(config, paths, fingerprint)
        log(
            f"scoring {total} documents from {len(sources)} input(s) with {predictor.description}"
            + (f"; resuming, {len(done)} of {config.num_shards} shards already done" if done else "")
        )
        scoring_started = time.monotonic()
        stats, this_run, ignored = _score_shards(config, paths, sources, total, done, predictor)
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


def _prepare_outputs(config: ScoreConfig, paths: OutputPaths, fingerprint: dict) -> set[int]:
    """Checks existing outputs against the options; returns the shards already complete."""
    job_file = paths.state_dir / "job.json"
    existing = [p for p in (*paths.shards, paths.errors, paths.summary) if p.exists()]
    if config.resume and job_file.is_file():
        previous = orjson.loads(job_file.read_bytes())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise ScoringError(
                f"--resume: {paths.state_dir} belongs to a different job (changed: {', '.join(changed)}); "
                f"rerun with the original inputs and options, or use --overwrite to start again."
            )
        return {
            k
            for k in range(config.num_shards)
            if paths.shards[k].is_file() and paths.shard_state(k)[1].is_file()
        }
    if existing and not (config.resume or config.overwrite):
        raise ScoringError(
            f"{existing[0]} already exists; pass --resume to continue that job or --overwrite to replace it."
        )
    if config.overwrite or config.resume:
        for path in existing:
            path.unlink()
        if paths.state_dir.is_dir():
            for child in paths.state_dir.iterdir():
                child.unlink()
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(job_file, orjson.dumps(fingerprint, option=orjson.OPT_INDENT_2))
    return set()


def _score_shards(config, paths, sources, total, done, predictor):
    """Streams every pending document through the predictor into its shard."""
    n = config.num_shards
    size = max(1, math.ceil(total / n))

    def shard_of(index: int) -> int:
        return min(index // size, n - 1)

    # Shards complete in order, so finished ones form a prefix whose documents
    # need not even be predicted; a finished shard elsewhere is skipped row by row.
    prefix = 0
    while prefix in done:
        prefix += 1
    skip = min(prefix * size, total) if prefix < n else total
    label_names = predictor.label_names
    stats = dict.fromkeys(range(n))
    ignored: list[str] = []
    progress = _Progress(total, skip, config.progress)
    this_run = 0
    writer = state = None
    errors_out: list[bytes] = []
    current = -1
    index = skip

    def open_shard(k):
        nonlocal writer, state, errors_out, current
        current = k
        state, errors_out = ShardState(), []
        writer = (
            None
            if k in done
            else ShardWriter(paths.shards[k], config.output_format, label_names, config.probabilities)
        )

    def close_shard():
        nonlocal writer
        if writer is not None:
            errors_path, state_path = paths.shard_state(current)
            _atomic_write_bytes(errors_path, b"".join(errors_out))
            _atomic_write_bytes(state_path, orjson.dumps(asdict(state)))
            writer.commit()  # last: the shard exists only once its state is saved
            stats[current] = state
        writer = None

    try:
        if prefix < n:
            batches = record_batches(sources, config, skip=skip, ignored=ignored)
            label_cache: dict[bytes, str] = {}
            for batch, outputs in predictor.predictions(batches):
                count = len(batch["id"])
                pos = 0
                while pos < count:
                    k = shard_of(index + pos)
                    end = count if k == n - 1 else min(count, (k + 1) * size - index)
                    if k != current:
                        close_shard()
                        for empty in range(current + 1, k):  # shards with no documents at all
                            open_shard(empty)
                            close_shard()
                        open_shard(k)
                    if writer is not None:
                        _write_segment(
                            batch,
                            outputs,
                            pos,
                            end,
                            writer,
                            state,
                            errors_out,
                            label_cache,
                            config.probabilities,
                        )
                    pos = end
                index += count
                this_run += count
                progress.update(count)
        if current >= 0:
            close_shard()
        for k in range(max(current + 1, prefix), n):  # shards left empty (fewer documents than shards)
            open_shard(k)
            close_shard()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        progress.close()
    for k in range(n):
        if stats[k] is None:
            saved = orjson.loads(paths.shard_state(k)[1].read_bytes())
            stats[k] = ShardState(**saved)
    return stats, this_run, ignored


def _write_segment(batch, outputs, start, end, writer, state, errors_out, label_cache, probabilities):
    """Writes rows [start, end) of a batch: scored rows to the shard, problems to its error rows."""
    problems = batch["problem"][start:end]
    ok = np.flatnonzero(problems == b"")
    state.read += end - start
    state.scored += len(ok)
    state.errored += (end - start) - len(ok)
    for i in np.flatnonzero(problems != b""):
        j = start + i
        problem = problems[i].decode("utf-8", "replace")
        state.errors_by_reason[_reason_key(problem)] = state.errors_by_reason.get(_reason_key(problem), 0) + 1
        errors_out.append(
            orjson.dumps(
                {
                    "source": batch["source"][j].decode("utf-8", "replace"),
                    "line": int(batch["line"][j]),
                    "id": batch["id"][j].decode("utf-8", "replace"),
                    "reason": problem,
                }
            )
            + b"\n"
        )
    if not len(ok):
        return
    rows = ok + start
    labels = []
    for raw in outputs[names.PREDICTED_LABEL][rows]:
        label = label_cache.get(raw)
        if label is None:
            label = label_cache[raw] = raw.decode("utf-8")
        labels.append(label)
    writer.write(
        RowBatch(
            ids=[raw.decode("utf-8", "replace") for raw in batch["id"][rows]],
            labels=labels,
            scores=outputs[names.SCORE][rows].tolist(),
            probabilities=outputs[names.PROBABILITIES][rows] if probabilities else None,
        )
    )
    for true, predicted in zip(batch["label"][rows], labels):
        if true:
            key = f"{true.decode('utf-8', 'replace')}\t{predicted}"
            state.confusion[key] = state.confusion.get(key, 0) + 1


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
    _atomic_write_bytes(paths.summary, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
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
