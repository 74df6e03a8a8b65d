"""The same scoring job as an Apache Beam pipeline, for when one machine is not enough.

    textserve score 'feeds/*.jsonl.gz' --model runs/bbc/export --output out/scores.jsonl \\
        --num-shards 16 --runner beam --beam-args "--runner=DirectRunner --direct_num_workers=2 \\
        --direct_running_mode=multi_processing"

Steps: list the inputs with their first document's position (from the count
pass) → Reshuffle (spread files over workers) → read each file with the
readers of `pipeline/readers`, scoring's policy applied (`inputs.apply_policy`)
→ RunInference with `SavedModelSignatureHandler` (each worker loads the
SavedModel with `tf.saved_model.load` and calls `serving_default` on batches
of raw strings) → group by shard → each shard written by one worker with the
tf.data runner's writers, in input order, committed atomically with its
counts and error rows → the launcher joins them into the errors file and the
summary exactly as the tf.data runner does.

Documents go to shards by input position, so the shards are the tf.data
runner's: the same rows in the same order (predictions may differ in the last
float bits, since Beam forms its own batches), and `--resume` skips shards an
earlier run committed (their documents are not even sent to the model).

Beam's stock `TFModelHandlerTensor` loads through `tf.keras.models.load_model`,
which Keras 3 refuses for SavedModel folders, hence the handler here. The
inputs and the output directory must be on a filesystem the launcher and every
worker see (local paths with the DirectRunner, a shared mount with
Flink/Spark/Dataflow); the model may be anywhere TensorFlow reads (`gs://`).
docs/scoring.md has the runner options.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import DataConfig
from pipeline.errors import RunStopped, ScoringError
from pipeline.readers import InputFile, read_blocks
from pipeline.readers.blocks import rows_block
from pipeline.scoring.inputs import apply_policy
from pipeline.scoring.job import ScoreJob, inspect_inputs
from pipeline.scoring.predictors import LocalPredictor
from pipeline.scoring.shards import (
    OutputPaths,
    ShardState,
    commit_shard,
    count_into,
    error_rows,
    first_pending,
    job_fingerprint,
    prepare_outputs,
    shard_size,
)
from pipeline.scoring.summary import finish
from pipeline.scoring.writers import ShardWriter, scored_table
from preprocessing import names

_NAMESPACE = "textserve.score"
_RECORD_FIELDS = ("id", "text", "label", "source", "line", "problem", "fallback")


class SavedModelSignatureHandler(ModelHandler[str, PredictionResult, Any]):
    """A RunInference model handler that calls a SavedModel signature on batches of raw strings.

    Pickled to every worker with only its paths; each worker loads the model once.

    Args:
      model_path: a SavedModel version directory (local or any TF filesystem, e.g. gs://).
      signature: the signature to call; it takes one string tensor `text` `[None]`.
      min_batch_size: smallest batch Beam assembles.
      max_batch_size: largest batch, i.e. the documents per signature call.
    """

    def __init__(
        self,
        model_path: str,
        signature: str = names.PREDICT_SIGNATURE,
        min_batch_size: int = 1,
        max_batch_size: int = 256,
    ):
        super().__init__()
        self._model_path = model_path
        self._signature = signature
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self):
        """Loads the SavedModel; its text ops must be registered first."""
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the ops the graph uses)

        return tf.saved_model.load(self._model_path)

    def run_inference(
        self, batch: Sequence[str], model, inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        """One signature call per batch; yields each text with its outputs (numpy) by name."""
        import tensorflow as tf

        outputs = model.signatures[self._signature](text=tf.constant(list(batch), dtype=tf.string))
        arrays = {key: value.numpy() for key, value in outputs.items()}
        return [
            PredictionResult(text, {key: arrays[key][i] for key in arrays}) for i, text in enumerate(batch)
        ]

    def batch_elements_kwargs(self) -> dict:
        return self._batch

    def get_metrics_namespace(self) -> str:
        return _NAMESPACE


class _ReadRecords(beam.DoFn):
    """One input → (shard, record) for every record of a pending shard; problem records tagged `errors`."""

    def __init__(self, config: DataConfig, size: int, num_shards: int, done: set[int]):
        self._config = config
        self._size = size
        self._num_shards = num_shards
        self._done = set(done)

    def process(self, source: tuple[str, str, int]) -> Iterator[Any]:
        path, fmt, position = source
        for block in read_blocks(InputFile(Path(path), fmt), self._config):
            block = apply_policy(block)
            columns = [block.column(name).to_pylist() for name in _RECORD_FIELDS]
            for record in zip(*columns):
                shard = min(position // self._size, self._num_shards - 1)
                if shard not in self._done:
                    row = (position, *record)
                    if record[5] is None:
                        yield shard, row
                    else:
                        yield beam.pvalue.TaggedOutput("errors", (shard, row))
                position += 1


class _WriteShard(beam.DoFn):
    """All of one shard's records → its output, error rows and counts, in input order, committed."""

    def __init__(self, paths: OutputPaths, output_format: str, prob_keys: Sequence[str]):
        self._paths = paths
        self._format = output_format
        self._prob_keys = list(prob_keys)

    def process(self, grouped: tuple[int, dict[str, list]]) -> Iterator[int]:
        k, parts = grouped
        scored = sorted(parts["scored"], key=lambda item: item[0][0])
        rows = sorted([item[0] for item in scored] + list(parts["errors"]), key=lambda row: row[0])
        block = rows_block(
            "",
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [r[5] for r in rows],
            [r[6] for r in rows],
            [r[7] for r in rows],
        ).set_column(3, "source", _strings([r[4] for r in rows]))
        writer = ShardWriter(self._paths.shards[k], self._format, self._prob_keys)
        state = ShardState()
        try:
            predicted = None
            if scored:
                outputs = [item[1] for item in scored]
                table = scored_table(
                    _strings([item[0][1] for item in scored]),
                    np.array([o[names.PREDICTED_LABEL] for o in outputs], dtype=object),
                    np.array([o[names.SCORE] for o in outputs], np.float32),
                    np.stack([o[names.PROBABILITIES] for o in outputs]) if self._prob_keys else None,
                    self._prob_keys,
                )
                writer.write(table)
                predicted = table.column(names.PREDICTED_LABEL).combine_chunks()
            count_into(state, block, predicted)
            commit_shard(self._paths, k, state, error_rows(block), writer)
        except BaseException:
            writer.discard()
            raise
        yield k


def _strings(values: list) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.string())


def build_pipeline(
    pipeline: beam.Pipeline,
    job: ScoreJob,
    sources: Sequence[tuple[str, str, int]],
    version_dir: str,
    prob_keys: Sequence[str],
    paths: OutputPaths,
    size: int,
    done: set[int],
) -> None:
    """Adds the scoring steps to `pipeline` (see the module docstring)."""
    score = job.config.score
    pending = [k for k in range(score.num_shards) if k not in done]
    records = (
        pipeline
        | "Inputs" >> beam.Create(list(sources))
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read"
        >> beam.ParDo(_ReadRecords(job.config.data, size, score.num_shards, done)).with_outputs(
            "errors", main="records"
        )
    )
    handler: Any = KeyedModelHandler(SavedModelSignatureHandler(version_dir, max_batch_size=score.batch_size))
    scored = (
        records.records
        | "SpreadRecords" >> beam.Reshuffle()
        | "Key" >> beam.Map(lambda item: ((item[0], item[1]), item[1][2]))
        | "Predict" >> RunInference(handler)
        | "ByShard" >> beam.Map(lambda keyed: (keyed[0][0], (keyed[0][1], keyed[1].inference)))
    )
    shards = pipeline | "PendingShards" >> beam.Create([(k, None) for k in pending])
    (
        {"scored": scored, "errors": records.errors, "shard": shards}
        | "GroupByShard" >> beam.CoGroupByKey()
        | "WriteShards" >> beam.ParDo(_WriteShard(paths, score.output_format, prob_keys))
    )


def run_beam_scoring(job: ScoreJob, log=print) -> dict:
    """Runs the scoring job on Beam and returns the summary (also written to `<base>.summary.json`).

    The inputs are counted and the model loaded once at launch, so unreadable
    inputs and invalid models fail before a pipeline is submitted.

    Args:
      job: the job (`--server` is not supported here); its `score.beam_args`
        are the Beam pipeline options.
      log: where the start and summary lines go.

    Raises:
      ScoringError: at launch (inputs, model, options, existing outputs), or
        when the shards' counts do not add up after the run.
    """
    if job.server:
        raise ScoringError(
            "--runner beam loads the model on the workers; drop --server (or use --runner tfdata)."
        )
    started = time.monotonic()
    score = job.config.score
    try:
        paths = job.paths()
    except ValueError as error:
        raise ScoringError(str(error)) from error
    inputs, infos = inspect_inputs(job)
    counts = [info.count for info in infos]
    total = sum(counts)
    model = LocalPredictor(job.model)  # fails at launch on an invalid model
    label_names, version_dir = model.label_names, str(model.version_dir)
    del model
    fingerprint = job_fingerprint(inputs, total, version_dir, job.resume_options())
    done = prepare_outputs(paths, score.num_shards, fingerprint, resume=job.resume, overwrite=job.overwrite)
    size = shard_size(total, score.num_shards)
    positions = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else []
    sources = [(str(s.path), s.format, p) for s, p in zip(inputs, positions)]
    log(
        f"scoring {total} documents from {len(inputs)} input(s) with {version_dir} on Beam "
        f"({score.beam_args or 'DirectRunner'})"
        + (f"; resuming, {len(done)} of {score.num_shards} shards already done" if done else "")
    )
    prob_keys = [names.probability_key(label) for label in label_names] if score.probabilities else []
    scoring_started = time.monotonic()
    if first_pending(done, score.num_shards) < score.num_shards:
        pipeline = beam.Pipeline(options=PipelineOptions(shlex.split(score.beam_args)))
        build_pipeline(pipeline, job, sources, version_dir, prob_keys, paths, size, done)
        try:
            pipeline.run().wait_until_finish()
        except Exception as error:  # the runner's own wrapping of a worker failure; its text says what failed
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RunStopped(f"the Beam pipeline failed: {first_line[:2000]}") from error
    scoring_seconds = time.monotonic() - scoring_started
    missing = [k for k in range(score.num_shards) if not paths.shard_state(k)[1].is_file()]
    if missing:
        raise ScoringError(f"the Beam run ended without committing shard(s) {missing}; rerun with --resume.")
    stats = {k: ShardState.load(paths.shard_state(k)[1]) for k in range(score.num_shards)}
    this_run = sum(stats[k].read for k in range(score.num_shards) if k not in done)
    return finish(
        job,
        paths,
        stats,
        infos,
        this_run=this_run,
        seconds=time.monotonic() - started,
        scoring_seconds=scoring_seconds,
        total=total,
        label_names=label_names,
        ignored=[],
        log=log,
        runner="beam",
        leakage_note="not checked with --runner beam (use --runner tfdata for the count)",
    )
