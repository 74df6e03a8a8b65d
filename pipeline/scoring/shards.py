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

from pipeline.errors import ScoringError
from pipeline.readers import InputFile
from pipeline.scoring.writers import OUTPUT_SUFFIX, RowBatch, ShardWriter, atomic_write_bytes
from preprocessing import names


@dataclass(frozen=True)
class OutputPaths:
    """Where a job's files go: shards, errors file, summary and the resume state directory."""

    shards: tuple[Path, ...]
    errors: Path
    summary: Path
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
            shards, errors, base.with_name(base.name + ".summary.json"), base.with_name(base.name + ".resume")
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
    existing = [p for p in (*paths.shards, paths.errors, paths.summary) if p.exists()]
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


class ShardedOutput:
    """Routes scored batches, by document position, into contiguous shards and commits each one.

    Batches arrive in input order starting at `start`; a shard is committed as
    soon as the first document of a later shard arrives, so at most one shard
    is open. Shards in `done` (completed by an earlier run) are not written.

    Args:
      paths: the job's files.
      total: documents in the whole input.
      done: shards completed by an earlier run.
      output_format: one of the writers' formats.
      label_names: class names in probability order.
      probabilities: write `p_<class>` columns.
    """

    def __init__(
        self,
        paths: OutputPaths,
        total: int,
        done: set[int],
        output_format: str,
        label_names: Sequence[str],
        probabilities: bool,
    ):
        self.paths = paths
        self.num_shards = len(paths.shards)
        self.size = max(1, math.ceil(total / self.num_shards))
        self.total = total
        self.done = done
        self.output_format = output_format
        self.label_names = list(label_names)
        self.probabilities = probabilities
        self.states: dict[int, ShardState] = {}
        # Finished shards at the start need not even be read: the stream starts after them.
        self.first_pending = 0
        while self.first_pending in done:
            self.first_pending += 1
        self.start = (
            min(self.first_pending * self.size, total) if self.first_pending < self.num_shards else total
        )
        self.position = self.start
        self._current = -1
        self._writer: ShardWriter | None = None
        self._state = ShardState()
        self._error_rows: list[bytes] = []
        self._label_cache: dict[bytes, str] = {}

    def shard_of(self, position: int) -> int:
        """The shard of the document at `position`."""
        return min(position // self.size, self.num_shards - 1)

    def add(self, batch: dict, outputs: dict) -> None:
        """Writes one scored batch (record columns and model outputs, numpy) into its shard(s)."""
        count = len(batch["id"])
        offset = 0
        while offset < count:
            k = self.shard_of(self.position + offset)
            end = count if k == self.num_shards - 1 else min(count, (k + 1) * self.size - self.position)
            if k != self._current:
                self._advance_to(k)
            if self._writer is not None:
                self._write_segment(batch, outputs, offset, end)
            offset = end
        self.position += count

    def finish(self) -> dict[int, ShardState]:
        """Commits the open shard and any empty ones left; returns every shard's counts."""
        if self.first_pending < self.num_shards:
            self._advance_to(self.num_shards)
        for k in range(self.num_shards):
            if k not in self.states:
                self.states[k] = ShardState(**orjson.loads(self.paths.shard_state(k)[1].read_bytes()))
        return self.states

    def abort(self) -> None:
        """Removes the open shard's temporary file (the run stopped)."""
        if self._writer is not None:
            self._writer.discard()
            self._writer = None

    def _advance_to(self, k: int) -> None:
        """Commits the open shard and every shard before `k` (empty ones included), then opens `k`."""
        if self._current >= 0:
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
            None
            if k in self.done
            else ShardWriter(self.paths.shards[k], self.output_format, self.label_names, self.probabilities)
        )

    def _commit(self) -> None:
        if self._writer is not None:
            errors_path, state_path = self.paths.shard_state(self._current)
            atomic_write_bytes(errors_path, b"".join(self._error_rows))
            atomic_write_bytes(state_path, orjson.dumps(asdict(self._state)))
            self._writer.commit()  # last: the shard exists only once its state is saved
            self.states[self._current] = self._state
        self._writer = None

    def _write_segment(self, batch: dict, outputs: dict, start: int, end: int) -> None:
        """Writes rows [start, end) of a batch: scored rows to the shard, problems to its error rows."""
        assert self._writer is not None
        state = self._state
        problems = batch["problem"][start:end]
        ok = np.flatnonzero(problems == b"")
        state.read += end - start
        state.scored += len(ok)
        state.errored += (end - start) - len(ok)
        for i in np.flatnonzero(problems != b""):
            j = start + i
            problem = problems[i].decode("utf-8", "replace")
            key = reason_key(problem)
            state.errors_by_reason[key] = state.errors_by_reason.get(key, 0) + 1
            row = {
                "source": batch["source"][j].decode("utf-8", "replace"),
                "line": int(batch["line"][j]),
                "id": batch["id"][j].decode("utf-8", "replace"),
                "reason": problem,
            }
            self._error_rows.append(orjson.dumps(row) + b"\n")
        if not len(ok):
            return
        rows = ok + start
        labels = []
        for raw in outputs[names.PREDICTED_LABEL][rows]:
            label = self._label_cache.get(raw)
            if label is None:
                label = self._label_cache[raw] = raw.decode("utf-8")
            labels.append(label)
        self._writer.write(
            RowBatch(
                ids=[raw.decode("utf-8", "replace") for raw in batch["id"][rows]],
                labels=labels,
                scores=outputs[names.SCORE][rows].tolist(),
                probabilities=outputs[names.PROBABILITIES][rows] if self.probabilities else None,
            )
        )
        for true, predicted in zip(batch["label"][rows], labels):
            if true:
                key = f"{true.decode('utf-8', 'replace')}\t{predicted}"
                state.confusion[key] = state.confusion.get(key, 0) + 1
