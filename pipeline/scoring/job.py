"""One scoring job, start to end: check and count the inputs, predict, write shards, summarise.

    textserve score 'archive/*.jsonl.gz' --model runs/bbc/export --output scores.jsonl --num-shards 4

The job, in order:

1. Resolve the inputs (files, directories, globs) and count their records
   (`pipeline/readers`). The count pass reads every byte, so an unreadable,
   truncated or mis-columned input fails the run here, before any output is
   written; it also fixes the shard boundaries and the progress bar's total.
2. Three stages run at once, joined by small bounded queues (memory stays
   flat whatever the input size): a reader thread turns records into batches
   (`inputs.py`; Arrow parses with the GIL released), this thread predicts
   (`predictors.py`; TensorFlow releases it too, or up to `concurrency`
   requests to a server are in flight), and a writer thread encodes the rows
   and commits each shard (`shards.py`, `writers.py`).
3. A record that cannot be scored becomes a row of the errors file with its
   file, line and reason; read = scored + errored always, and the summary
   says so.

Output files for `--output scores.jsonl`:

    scores.jsonl                           one shard, or with --num-shards 4:
    scores-00000-of-00004.jsonl ...        shards (TF / Beam naming)
    scores.errors.jsonl                    every bad record: source, line, id, reason
    scores.summary.json                    counts, time, docs/s, accuracy / macro-F1, resolved config
    scores.config.toml                     the resolved [data] and [score] settings of the job
    scores.resume/                         per-shard state for --resume

No text processing happens here: the model's graph does all of it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.errors import DataError, RunStopped, ScoringError
from pipeline.readers import InputFile, InputInfo, inspect_input, resolve_inputs
from pipeline.scoring.inputs import ScoreBatch, score_batches
from pipeline.scoring.predictors import LocalPredictor, Predictor, RemotePredictor
from pipeline.scoring.shards import ShardedOutput, job_fingerprint, prepare_outputs
from pipeline.scoring.spec import ScoreJob
from pipeline.scoring.summary import Progress, finish
from pipeline.splits import FingerprintSet
from preprocessing import names

_QUEUE_DEPTH = 4  # batches waiting between two stages: enough to keep each busy, bounded memory
_POLL_S = 0.1
_END = object()  # the end of a stage's stream


def inspect_inputs(job: ScoreJob) -> tuple[list[InputFile], list[InputInfo]]:
    """Resolves and counts the inputs (the start-of-run check).

    Raises:
      ScoringError: a missing, unreadable or mis-columned input.
    """
    try:
        sources = resolve_inputs(job.inputs, job.config.data.format)
        return sources, [inspect_input(source, job.config.data) for source in sources]
    except DataError as error:
        raise ScoringError(str(error)) from error


def make_predictor(job: ScoreJob) -> LocalPredictor | RemotePredictor:
    """The in-process model or the server client the job asks for (checked before anything is written)."""
    if job.server:
        score = job.config.score
        return RemotePredictor(
            job.server,
            job.model_name,
            concurrency=score.concurrency,
            timeout_s=score.timeout_s,
            need_label_names=score.probabilities,
        )
    return LocalPredictor(job.model)


def run_scoring(
    job: ScoreJob,
    log: Callable[[str], None] = print,
    *,
    predictor: Predictor | None = None,
) -> dict:
    """Runs a whole scoring job (see the module docstring) and returns its summary.

    Args:
      job: the job.
      log: where the start and summary lines go.
      predictor: predict with this instead of what the job names (the
        benchmark measures the reader and writer alone with a no-op model).

    Returns:
      The summary dict also written to `<base>.summary.json`.

    Raises:
      ScoringError: at the start for unreadable inputs, an invalid model or an
        unreachable server, or existing outputs without --resume/--overwrite.
      RunStopped: mid-run for failures that are not about one record (server
        down, disk full, an input gone); completed shards are kept and
        --resume continues.
    """
    started = time.monotonic()
    try:
        paths = job.paths()
    except ValueError as error:
        raise ScoringError(str(error)) from error
    sources, infos = inspect_inputs(job)
    counts = [info.count for info in infos]
    total = sum(counts)
    predictor = predictor or make_predictor(job)
    score = job.config.score
    try:
        fingerprint = job_fingerprint(sources, total, predictor.description, job.resume_options())
        done = prepare_outputs(
            paths, score.num_shards, fingerprint, resume=job.resume, overwrite=job.overwrite
        )
        log(
            f"scoring {total} documents from {len(sources)} input(s) with {predictor.description}"
            + (f"; resuming, {len(done)} of {score.num_shards} shards already done" if done else "")
        )
        log(_columns_line(infos))
        prob_keys = (
            [names.probability_key(label) for label in predictor.label_names] if score.probabilities else []
        )
        trained, leakage_note = training_documents(predictor)
        output = ShardedOutput(paths, total, done, score.output_format, prob_keys, trained)
        ignored: list[str] = []
        scoring_started = time.monotonic()

        def batches() -> Iterator[ScoreBatch]:
            return score_batches(
                sources,
                counts,
                job.config.data,
                start=output.start,
                batch_size=score.batch_size,
                shard_size=output.size,
                done=done,
                ignored=ignored,
            )

        progress = Progress(total, output.start, job.progress)
        try:
            run_stages(batches, predictor, output, progress.update)
        finally:
            progress.close()
        stats = output.finish()
        scoring_seconds = time.monotonic() - scoring_started
    finally:
        predictor.close()
    return finish(
        job,
        paths,
        stats,
        infos,
        this_run=output.written,
        seconds=time.monotonic() - started,
        scoring_seconds=scoring_seconds,
        total=total,
        label_names=predictor.label_names,
        ignored=ignored,
        log=log,
        leakage_note=leakage_note,
    )


def training_documents(predictor: Predictor) -> tuple[FingerprintSet | None, str]:
    """The model's training documents from its card, to report labelled ones apart, or why not known."""
    if not isinstance(predictor, LocalPredictor):
        return None, "not checked: scored through a server, whose model card is not read here"
    try:
        trained = FingerprintSet.from_card(predictor.model.card)
    except ValueError as error:
        return None, f"not checked: {error}"
    if trained is None:
        return None, "not checked: the model card records no training fingerprints (an older export)"
    return trained, ""


def _columns_line(infos: list[InputInfo]) -> str:
    """Says where ids and reference labels come from (the defaults are used only where present)."""

    def where(found: list[str | None], absent: str) -> str:
        named = sorted({name for name in found if name})
        if not named:
            return absent
        share = "" if all(found) else f" in {sum(1 for n in found if n)} of {len(found)} inputs"
        return f"{', '.join(repr(n) for n in named)}{share}"

    ids = where([i.id_column for i in infos], "file:line")
    labels = where([i.label_column for i in infos], "none (no accuracy in the summary)")
    return f"ids: {ids}; reference labels: {labels}"


# --- The three stages ---------------------------------------------------------------------------


def run_stages(
    batches: Callable[[], Iterator[ScoreBatch]],
    predictor: Predictor,
    output: ShardedOutput,
    on_written: Callable[[int], None],
) -> None:
    """Reads (thread), predicts (this thread) and writes (thread) concurrently, in input order.

    Raises:
      RunStopped: an input became unreadable, the output could not be
        written, or the server stopped answering; the open shard is discarded.
      KeyboardInterrupt: likewise discarded, then re-raised.
    """
    to_model: queue.Queue = queue.Queue(_QUEUE_DEPTH)
    to_writer: queue.Queue = queue.Queue(_QUEUE_DEPTH)
    stop = threading.Event()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            for batch in batches():
                if not _put(to_model, batch, stop):
                    return
        except BaseException as error:  # handed to the main thread, which raises it
            failures.append(error)
        finally:
            _put(to_model, _END, stop)

    def write() -> None:
        try:
            while (item := _get(to_writer, stop)) is not _END:
                batch, outputs = item
                output.add(batch, outputs)
                on_written(batch.records.num_rows)
        except BaseException as error:
            failures.append(error)
            stop.set()

    reader = threading.Thread(target=read, name="score-read", daemon=True)
    writer = threading.Thread(target=write, name="score-write", daemon=True)
    reader.start()
    writer.start()
    scored = predictions(predictor, _drain(to_model, stop))
    try:
        for item in scored:
            if not _put(to_writer, item, stop):
                break
        _put(to_writer, _END, stop)
        writer.join()
    except BaseException:
        stop.set()
        writer.join()
        output.abort()
        raise
    finally:
        stop.set()
        scored.close()
        reader.join()
    if failures:
        output.abort()
        raise _stopped(failures[0])


def _stopped(error: BaseException) -> BaseException:
    """A reader or writer failure as the error the user sees."""
    if isinstance(error, DataError):
        return RunStopped(f"{error} (it was readable when the job started); restore it, then resume")
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        return RunStopped(f"cannot write the output{where}: {error.strerror or error}; free space or fix it")
    return error


def predictions(
    predictor: Predictor, batches: Iterator[ScoreBatch]
) -> Generator[tuple[ScoreBatch, dict[str, np.ndarray] | None], None, None]:
    """(batch, outputs) in input order, with up to `predictor.concurrency` batches predicting at once."""

    def predict(batch: ScoreBatch) -> dict[str, np.ndarray] | None:
        texts = batch.scored_texts()
        return predictor.predict(texts) if len(texts) and not batch.skip else None

    if predictor.concurrency == 1:
        for batch in batches:
            yield batch, predict(batch)
        return
    with ThreadPoolExecutor(predictor.concurrency, thread_name_prefix="score-request") as pool:
        in_flight: list[tuple[ScoreBatch, Future]] = []
        try:
            for batch in batches:
                in_flight.append((batch, pool.submit(predict, batch)))
                if len(in_flight) >= predictor.concurrency:
                    done, future = in_flight.pop(0)
                    yield done, future.result()
            while in_flight:
                done, future = in_flight.pop(0)
                yield done, future.result()
        finally:
            for _, future in in_flight:
                future.cancel()


def _put(channel: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Puts `item`, waiting while the queue is full; False when the run is stopping."""
    while not stop.is_set():
        try:
            channel.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(channel: queue.Queue, stop: threading.Event) -> Any:
    """The next item, or `_END` when the run is stopping."""
    while not stop.is_set():
        try:
            return channel.get(timeout=_POLL_S)
        except queue.Empty:
            continue
    return _END


def _drain(channel: queue.Queue, stop: threading.Event) -> Iterator[ScoreBatch]:
    while (item := _get(channel, stop)) is not _END:
        yield item
