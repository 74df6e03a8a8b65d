"""Where a scoring job's files go, how documents map to shards, and what `--resume` trusts.

Documents are numbered by their position in the input; shard `k` holds the
contiguous range `[k * size, (k + 1) * size)` with `size = ceil(total /
num_shards)`, so every run of the same job puts every document in the same
shard. A shard is committed atomically (temporary file, fsync, rename) after
its error rows and counts are saved under `<base>.resume/`; `--resume` skips
shards whose output and counts both exist, so a killed run never leaves a
truncated shard that looks complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ScoringError
from pipeline.readers import InputFile
from pipeline.scoring.inputs import ScoreBatch
from pipeline.scoring.writers import OUTPUT_SUFFIX, ShardWriter, atomic_write_bytes, scored_table
from pipeline.splits import FingerprintSet
from preprocessing import names

_FALLBACK_PLACES = 20  # places listed per shard; the count is always complete


@dataclass(frozen=True)
class OutputPaths:
    """Where a job's files go: shards, errors file, summary, resolved config and the resume state."""

    shards: tuple[Path, ...]
    errors: Path
    summary: Path
    config: Path
    state_dir: Path

    @classmethod
    def for_output(cls, output: str | Path, output_format: str, num_shards: int) -> OutputPaths:
        """The paths for `--output OUTPUT` (its format suffix, if any, is stripped to name the rest).

        Raises:
          ValueError: the output name would collide with the errors file.
        """
        output = Path(output)
        suffix = OUTPUT_SUFFIX[output_format]
        base = output.with_name(output.name.removesuffix(suffix)) if output.name.endswith(suffix) else output
        if num_shards == 1:
            shards: tuple[Path, ...] = (output,)
        else:
            shards = tuple(
                base.with_name(f"{base.name}-{k:05d}-of-{num_shards:05d}{suffix}") for k in range(num_shards)
            )
        errors = base.with_name(base.name + ".errors.jsonl")
        if errors in shards:
            raise ValueError(f"--output {output} would overwrite the errors file; pick another name.")
        return cls(
            shards,
            errors,
            base.with_name(base.name + ".summary.json"),
            base.with_name(base.name + ".config.toml"),
            base.with_name(base.name + ".resume"),
        )

    def shard_state(self, k: int) -> tuple[Path, Path]:
        """The saved error rows and counts of shard `k`."""
        return self.state_dir / f"{k:05d}.errors.jsonl", self.state_dir / f"{k:05d}.json"


@dataclass
class ShardState:
    """Counts of one shard, saved next to its output for --resume and the summary."""

    read: int = 0
    scored: int = 0
    errored: int = 0
    errors_by_reason: dict = field(default_factory=dict)
    # "true<TAB>predicted" -> documents, over documents with a reference label.
    confusion: dict = field(default_factory=dict)
    # Of those, the documents the model trained on (model card fingerprints), and the
    # confusion over the others: figures on training documents flatter a model.
    trained_on: int = 0
    confusion_unseen: dict = field(default_factory=dict)
    # Documents decoded with the fallback encoding, and the first few places (source:line).
    decoded_with_fallback: int = 0
    fallback_places: list = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ShardState:
        """The counts saved by `commit_shard`."""
        return cls(**orjson.loads(path.read_bytes()))


def job_fingerprint(sources: Sequence[InputFile], total: int, model: str, options: dict) -> dict:
    """What must not change between a run and its --resume: inputs (size, mtime), model, options."""
    files = []
    for source in sources:
        stat = source.path.stat()
        files.append([str(source.path.resolve()), source.format, stat.st_size, int(stat.st_mtime)])
    # Through JSON and back, so it compares equal to the saved copy (tuples become lists).
    return orjson.loads(
        orjson.dumps({"inputs": files, "documents": total, "model": model, "options": options})
    )


def prepare_outputs(
    paths: OutputPaths, num_shards: int, fingerprint: dict, *, resume: bool, overwrite: bool
) -> set[int]:
    """Checks existing outputs against the job; returns the shards already complete.

    Raises:
      ScoringError: outputs of an earlier job exist and neither --resume nor
        --overwrite was given, or --resume finds a different job's state.
    """
    job_file = paths.state_dir / "job.json"
    existing = [p for p in (*paths.shards, paths.errors, paths.summary, paths.config) if p.exists()]
    if resume and job_file.is_file():
        previous = orjson.loads(job_file.read_bytes())
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise ScoringError(
                f"--resume: {paths.state_dir} belongs to a different job (changed: {', '.join(changed)}); "
                f"rerun with the original inputs and options, or use --overwrite to start again."
            )
        return {
            k for k in range(num_shards) if paths.shards[k].is_file() and paths.shard_state(k)[1].is_file()
        }
    if existing and not (resume or overwrite):
        raise ScoringError(
            f"{existing[0]} already exists; pass --resume to continue that job or --overwrite to replace it."
        )
    if overwrite or resume:
        for path in existing:
            path.unlink()
        if paths.state_dir.is_dir():
            for child in paths.state_dir.iterdir():
                child.unlink()
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(job_file, orjson.dumps(fingerprint, option=orjson.OPT_INDENT_2))
    return set()


def reason_key(problem: str) -> str:
    """Groups error reasons for the summary (the part before any detail)."""
    return problem.split(":", 1)[0].split(" (", 1)[0]


def shard_size(total: int, num_shards: int) -> int:
    """Documents per shard: shard `k` holds positions `[k * size, (k + 1) * size)`."""
    return max(1, math.ceil(total / num_shards))


def first_pending(done: set[int], num_shards: int) -> int:
    """The first shard an earlier run did not complete (`num_shards` when all are done)."""
    k = 0
    while k in done:
        k += 1
    return min(k, num_shards)


def error_rows(records: pa.RecordBatch) -> list[bytes]:
    """The errors-file lines (source, line, id, reason) of a batch's problem records."""
    bad = records.filter(pc.is_valid(records.column("problem")))
    return [
        orjson.dumps({"source": source, "line": line, "id": doc_id, "reason": reason}) + b"\n"
        for source, line, doc_id, reason in zip(
            *(bad.column(name).to_pylist() for name in ("source", "line", "id", "problem"))
        )
    ]


def count_into(
    state: ShardState,
    records: pa.RecordBatch,
    predicted: pa.Array | None,
    trained: FingerprintSet | None = None,
) -> None:
    """Adds a batch's counts (read, scored, errors by reason, fallbacks, confusion) to `state`.

    Args:
      state: the shard's counts.
      records: the batch's records (`problem` set on those not scored).
      predicted: the predicted labels of the scored records, in order.
      trained: the model's training documents (from its card), to count the
        labelled documents it trained on apart; None when unknown.
    """
    problems = records.column("problem")
    state.read += records.num_rows
    state.scored += problems.null_count  # a record without a problem is scored
    state.errored += records.num_rows - problems.null_count
    for reason in problems.drop_null().to_pylist():
        key = reason_key(reason)
        state.errors_by_reason[key] = state.errors_by_reason.get(key, 0) + 1
    fallback = records.column("fallback")
    if fallback.null_count < len(fallback):
        used = records.filter(pc.and_(pc.is_valid(fallback), pc.is_null(problems)))
        state.decoded_with_fallback += used.num_rows
        room = _FALLBACK_PLACES - len(state.fallback_places)
        for source, line in zip(
            used.column("source").to_pylist()[:room], used.column("line").to_pylist()[:room]
        ):
            state.fallback_places.append(f"{source}:{line}")
    if predicted is None:
        return
    scored = records.filter(pc.is_null(problems))
    true = scored.column("label")
    if true.null_count == len(true):
        return
    has_label = pc.is_valid(true)
    pairs = pc.binary_join_element_wise(true.filter(has_label), predicted.filter(has_label), "\t")
    _add_counts(state.confusion, pairs)
    if trained is not None:
        seen = trained.contains(scored.column("text").filter(has_label).to_pylist())
        state.trained_on += int(seen.sum())
        _add_counts(state.confusion_unseen, pairs.filter(pa.array(~seen)))


def _add_counts(confusion: dict, pairs: pa.Array) -> None:
    for item in pc.value_counts(pairs).to_pylist():
        confusion[item["values"]] = confusion.get(item["values"], 0) + item["counts"]


class ShardedOutput:
    """Writes scored batches into their shards, in order, and commits each shard when it is complete.

    Batches arrive in input order and never straddle a shard boundary
    (`inputs.score_batches` cuts them there); a shard is committed as soon as
    its last document is written, so at most one shard is open and a run that
    stops keeps every complete shard. Shards in `done` (completed by an
    earlier run) are not written.

    Args:
      paths: the job's files.
      total: documents in the whole input.
      done: shards completed by an earlier run.
      output_format: one of the writers' formats.
      prob_keys: the `p_<class>` columns (empty without --probabilities).
      trained: the model's training documents, for the leakage counts (None: unknown).
    """

    def __init__(
        self,
        paths: OutputPaths,
        total: int,
        done: set[int],
        output_format: str,
        prob_keys: Sequence[str],
        trained: FingerprintSet | None = None,
    ):
        self.paths = paths
        self.num_shards = len(paths.shards)
        self.size = shard_size(total, self.num_shards)
        self.total = total
        self.done = done
        self.output_format = output_format
        self.prob_keys = list(prob_keys)
        self.trained = trained
        self.states: dict[int, ShardState] = {}
        self.first_pending = first_pending(done, self.num_shards)
        self.start = min(self.first_pending * self.size, total)
        self.written = 0  # documents read and routed in this run
        self._current = -1
        self._writer: ShardWriter | None = None
        self._state = ShardState()
        self._error_rows: list[bytes] = []

    def shard_of(self, position: int) -> int:
        """The shard of the document at `position`."""
        return min(position // self.size, self.num_shards - 1)

    def add(self, batch: ScoreBatch, outputs: dict[str, np.ndarray] | None) -> None:
        """Writes one batch: scored rows to its shard, problem records to the shard's error rows.

        Args:
          batch: records of one shard, from `inputs.score_batches`.
          outputs: the model's outputs for the batch's scored records (None for a skipped batch).
        """
        k = self.shard_of(batch.position)
        assert self.shard_of(batch.position + batch.records.num_rows - 1) == k, "a batch straddles shards"
        if k != self._current:
            self._advance_to(k)
        self.written += batch.records.num_rows
        if self._writer is not None and not batch.skip:
            self._write(batch, outputs)
        end = self.total if k == self.num_shards - 1 else (k + 1) * self.size
        if batch.position + batch.records.num_rows == end:
            self._commit()

    def _write(self, batch: ScoreBatch, outputs: dict[str, np.ndarray] | None) -> None:
        assert self._writer is not None
        records = batch.records
        self._error_rows += error_rows(records)
        ok = records.filter(pc.is_null(records.column("problem")))
        predicted = None
        if ok.num_rows:
            assert outputs is not None
            table = scored_table(
                ok.column("id"),
                outputs[names.PREDICTED_LABEL],
                outputs[names.SCORE],
                outputs[names.PROBABILITIES] if self.prob_keys else None,
                self.prob_keys,
            )
            self._writer.write(table)
            predicted = table.column(names.PREDICTED_LABEL).combine_chunks()
        count_into(self._state, records, predicted, self.trained)

    def finish(self) -> dict[int, ShardState]:
        """Commits the open shard and any empty ones left; returns every shard's counts."""
        if self.first_pending < self.num_shards:
            self._advance_to(self.num_shards)
        for k in range(self.num_shards):
            if k not in self.states:
                self.states[k] = ShardState.load(self.paths.shard_state(k)[1])
        return self.states

    def abort(self) -> None:
        """Removes the open shard's temporary file (the run stopped)."""
        if self._writer is not None:
            self._writer.discard()
            self._writer = None

    def _advance_to(self, k: int) -> None:
        """Commits the open shard and every shard before `k` (empty ones included), then opens `k`."""
        self._commit()
        for empty in range(max(self._current + 1, self.first_pending), k):
            self._open(empty)
            self._commit()
        if k < self.num_shards:
            self._open(k)

    def _open(self, k: int) -> None:
        self._current = k
        self._state, self._error_rows = ShardState(), []
        self._writer = (
            None if k in self.done else ShardWriter(self.paths.shards[k], self.output_format, self.prob_keys)
        )

    def _commit(self) -> None:
        if self._writer is not None and self._current not in self.states:
            commit_shard(self.paths, self._current, self._state, self._error_rows, self._writer)
            self.states[self._current] = self._state
        self._writer = None


def commit_shard(
    paths: OutputPaths, k: int, state: ShardState, error_lines: Sequence[bytes], writer: ShardWriter
) -> None:
    """Saves a shard's error rows and counts, then commits its output (last: it exists only once complete)."""
    errors_path, state_path = paths.shard_state(k)
    atomic_write_bytes(errors_path, b"".join(error_lines))
    atomic_write_bytes(state_path, orjson.dumps(asdict(state)))
    writer.commit()
