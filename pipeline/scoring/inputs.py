"""The reading half of a scoring job: every input's records as batches for the model, in order.

The readers are `pipeline/readers`'s; this module adds scoring's policy (an
empty text cannot be scored: it becomes a row of the errors file, like every
record the reader marked with a problem) and cuts the stream into batches of
`batch_size` that never straddle a shard boundary. Batches therefore have the
same composition in a clean run and in a `--resume`d one, which keeps resumed
shards byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.readers import InputFile, read_blocks

EMPTY_TEXT = "empty text (nothing to score)"


@dataclass(frozen=True)
class ScoreBatch:
    """Records on their way to the model.

    Attributes:
      position: input position of the first record (0-based, over all inputs).
      records: a block (`pipeline.readers.BLOCK_SCHEMA`) with scoring's policy
        applied: `problem` is set on every record that is not scored.
      skip: the batch belongs to a shard an earlier run completed: it is
        neither predicted nor written.
    """

    position: int
    records: pa.RecordBatch
    skip: bool = False

    def scored_texts(self) -> pa.Array:
        """The texts of the records to score, in order."""
        return self.records.filter(pc.is_null(self.records.column("problem"))).column("text")


def apply_policy(block: pa.RecordBatch) -> pa.RecordBatch:
    """Marks records whose text is empty (or only whitespace) with a problem: there is nothing to score."""
    problems = block.column("problem")
    empty = pc.and_(pc.is_null(problems), pc.equal(pc.utf8_trim_whitespace(block.column("text")), ""))
    if not pc.any(empty).as_py():
        return block
    problems = pc.if_else(empty, pa.scalar(EMPTY_TEXT, pa.string()), problems)
    return block.set_column(block.schema.get_field_index("problem"), "problem", problems)


def score_batches(
    sources: Sequence[InputFile],
    counts: Sequence[int],
    config: DataConfig,
    *,
    start: int,
    batch_size: int,
    shard_size: int,
    done: set[int],
    ignored: list[str] | None = None,
) -> Iterator[ScoreBatch]:
    """Yields the inputs' records from position `start` on, in batches cut at shard boundaries.

    Args:
      sources: the resolved inputs.
      counts: their record counts from the count pass (files before `start`
        are not opened at all).
      config: the [data] section.
      start: the first position to read (the end of the shards already done).
      batch_size: most records per batch.
      shard_size: records per shard; no batch crosses a multiple of it.
      done: shards completed earlier; their batches come with `skip`.
      ignored: receives the top-level files of class-folder inputs.

    Raises:
      DataError: an input that cannot be read any more, or that holds a
        different number of records than when it was counted.
    """
    cutter = _BatchCutter(start, batch_size, shard_size, done)
    position = 0
    for source, count in zip(sources, counts):
        if position + count <= start:
            position += count
            continue
        read = 0
        for block in read_blocks(source, config, ignored=ignored):
            read += block.num_rows
            if position < start:
                dropped = min(start - position, block.num_rows)
                block, position = block.slice(dropped), position + dropped
            if block.num_rows:
                position += block.num_rows
                yield from cutter.add(apply_policy(block))
        if read != count:
            raise DataError(
                f"{source.path}: holds {read} records now but held {count} when the job counted its "
                f"inputs; it changed during the run"
            )
    yield from cutter.flush()


class _BatchCutter:
    """Re-cuts blocks into batches of `batch_size`, never across a multiple of `shard_size`."""

    def __init__(self, start: int, batch_size: int, shard_size: int, done: set[int]):
        self.position = start
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.done = done
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0

    def _limit(self) -> int:
        boundary = (self.position // self.shard_size + 1) * self.shard_size
        return min(self.batch_size, boundary - self.position)

    def add(self, block: pa.RecordBatch) -> Iterator[ScoreBatch]:
        self.pending.append(block)
        self.rows += block.num_rows
        while self.rows >= self._limit():
            yield self._cut(self._limit())

    def flush(self) -> Iterator[ScoreBatch]:
        while self.rows:
            yield self._cut(min(self._limit(), self.rows))

    def _cut(self, n: int) -> ScoreBatch:
        joined = self.pending[0] if len(self.pending) == 1 else pa.concat_batches(self.pending)
        batch, rest = joined.slice(0, n), joined.slice(n)
        self.pending, self.rows = ([rest] if rest.num_rows else []), self.rows - n
        skip = self.position // self.shard_size in self.done
        self.position += n
        return ScoreBatch(self.position - n, batch, skip)
