"""The same scoring job as an Apache Beam pipeline, for when one machine is not enough.

    textserve score 'feeds/*.jsonl.gz' --model runs/bbc/export --output out/scores.jsonl \\
        --num-shards 16 --runner beam --beam-args "--runner=DirectRunner --direct_num_workers=2"

Steps: list the inputs → Reshuffle (spread files over workers) → read each file
with the readers of `pipeline/readers.py` → split records
that cannot be scored from the rest → RunInference with
`SavedModelSignatureHandler` (loads the SavedModel with `tf.saved_model.load`
and calls `serving_default` on batches of raw strings) → encode rows with the
same encoder as the tf.data path → write `num_shards` shards, plus the errors
file and the summary. Counters `read`, `scored`, `errored` (namespace
`textserve.score`) give the summary; read = scored + errored is checked.

Beam's stock `TFModelHandlerTensor` loads through `tf.keras.models.load_model`,
which Keras 3 refuses for SavedModel folders, hence the handler here.

Differences from the tf.data runner: rows are not in input order within a
shard (Beam does not keep order; join on `id`), and there is no `--resume`
(the runner retries failed work itself). Inputs and the model must be
readable from the workers: local paths with the DirectRunner, a shared mount
with Flink/Spark, `gs://` for the model and output with Dataflow (the
readers open local files, so stage inputs on a shared filesystem).

Runner options (`--beam-args`):

    DirectRunner (default)   --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing
    Dataflow                 --runner=DataflowRunner --project=PROJECT --region=REGION
                             --temp_location=gs://BUCKET/tmp --setup_file=./setup.py
                             --sdk_container_image=IMAGE_WITH_TF_AND_TF_TEXT
    Flink                    --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=LOOPBACK
    Spark                    --runner=SparkRunner --spark_master_url=spark://HOST:7077 --environment_type=LOOPBACK
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.errors import ScoringError
from pipeline.readers import InputFile, read_input
from pipeline.scoring.inputs import record_problem
from pipeline.scoring.job import ScoreConfig, count_inputs
from pipeline.scoring.predictors import LocalPredictor
from pipeline.scoring.shards import OutputPaths
from pipeline.scoring.writers import OUTPUT_SUFFIX, RowBatch, csv_header, encode_rows
from preprocessing import names

_NAMESPACE = "textserve.score"


class SavedModelSignatureHandler(ModelHandler[str, PredictionResult, Any]):
    """A RunInference model handler that calls a SavedModel signature on batches of raw strings.

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
    """One input → its records as plain dicts, with scoring's problem policy applied."""

    def __init__(self, config: ScoreConfig):
        self._config = config
        self._read = Metrics.counter(_NAMESPACE, "read")
        self._errored = Metrics.counter(_NAMESPACE, "errored")

    def process(self, source: tuple[str, str]) -> Iterator[Any]:
        from pathlib import Path

        data_config = self._config.data_config()
        for record in read_input(InputFile(Path(source[0]), source[1]), data_config):
            self._read.inc()
            problem = record_problem(record, bool(self._config.fallback_encoding))
            row = {"id": record.id, "source": record.source, "line": record.line}
            if problem:
                self._errored.inc()
                yield beam.pvalue.TaggedOutput("errors", {**row, "reason": problem})
            else:
                yield {**row, "text": record.text, "label": record.label}


class _EncodeRow(beam.DoFn):
    """A prediction → one output record (the tf.data writer's encoding)."""

    def __init__(self, output_format: str, prob_keys: Sequence[str]):
        self._format = output_format
        self._prob_keys = list(prob_keys)
        self._scored = Metrics.counter(_NAMESPACE, "scored")

    def process(self, keyed: tuple[dict, PredictionResult]) -> Iterator[bytes]:
        record: Any
        record, result = keyed
        outputs: Any = result.inference
        self._scored.inc()
        rows = RowBatch(
            ids=[record["id"]],
            labels=[outputs[names.PREDICTED_LABEL].decode("utf-8")],
            scores=[float(outputs[names.SCORE])],
            probabilities=np.asarray(outputs[names.PROBABILITIES])[np.newaxis, :]
            if self._prob_keys
            else None,
        )
        yield from encode_rows(rows, self._format, self._prob_keys)


def _write(rows, config: ScoreConfig, paths: OutputPaths, prob_keys: Sequence[str]):
    """Writes the encoded rows with the same file names as the tf.data runner."""
    if config.num_shards == 1:
        prefix, suffix, template = str(paths.shards[0]), "", ""
    else:
        first = str(paths.shards[0])
        prefix, suffix, template = (
            first[: first.rindex("-00000-of-")],
            OUTPUT_SUFFIX[config.output_format],
            "-SSSSS-of-NNNNN",
        )
    common: dict[str, Any] = {
        "file_path_prefix": prefix,
        "file_name_suffix": suffix,
        "num_shards": config.num_shards,
        "shard_name_template": template,
    }
    if config.output_format == "tfrecord":
        return rows | "WriteTFRecord" >> beam.io.WriteToTFRecord(**common)
    header = csv_header(prob_keys) if config.output_format == "csv" else None
    return (
        rows
        | "AsText" >> beam.Map(lambda record: record.decode("utf-8"))
        | "WriteText" >> beam.io.WriteToText(header=header, **common)
    )


def build_pipeline(
    pipeline: beam.Pipeline,
    config: ScoreConfig,
    sources: Sequence[InputFile],
    version_dir: str,
    label_names: Sequence[str],
    paths: OutputPaths,
) -> None:
    """Adds the scoring steps to `pipeline` (see the module docstring)."""
    prob_keys = [names.probability_key(label) for label in label_names] if config.probabilities else []
    records = (
        pipeline
        | "Inputs" >> beam.Create([(str(s.path), s.format) for s in sources])
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(_ReadRecords(config)).with_outputs("errors", main="records")
    )
    handler: Any = KeyedModelHandler(
        SavedModelSignatureHandler(version_dir, max_batch_size=config.batch_size)
    )
    predictions = (
        records.records
        | "SpreadRecords" >> beam.Reshuffle()
        | "Key" >> beam.Map(lambda record: (record, record["text"]))
        | "Predict" >> RunInference(handler)
        | "Encode" >> beam.ParDo(_EncodeRow(config.output_format, prob_keys))
    )
    _write(predictions, config, paths, prob_keys)
    (
        records.errors
        | "ErrorRows" >> beam.Map(lambda row: orjson.dumps(row).decode("utf-8"))
        | "WriteErrors" >> beam.io.WriteToText(str(paths.errors), num_shards=1, shard_name_template="")
    )


def run_beam_scoring(config: ScoreConfig, beam_args: str = "", log=print) -> dict:
    """Runs the scoring job on Beam and returns the summary (also written to `<base>.summary.json`).

    The inputs are counted and the model loaded once at launch, so unreadable
    inputs and invalid models fail before a pipeline is submitted.

    Args:
      config: the job (`server` and `resume` are not supported here).
      beam_args: Beam pipeline options as one shell-quoted string.

    Raises:
      ScoringError: at launch (inputs, model, options), or when the counters
        do not add up after the run.
    """
    if config.server:
        raise ScoringError(
            "--runner beam loads the model on the workers; drop --server (or use --runner tfdata)."
        )
    if config.resume:
        raise ScoringError("--resume is for the tf.data runner; a Beam runner retries failed work itself.")
    started = time.monotonic()
    paths = config.paths()
    existing = [p for p in (*paths.shards, paths.errors, paths.summary) if p.exists()]
    if existing and not config.overwrite:
        raise ScoringError(f"{existing[0]} already exists; pass --overwrite to replace it.")
    sources, counts = count_inputs(config)
    total = sum(counts)
    model = LocalPredictor(config.model)  # fails at launch on an invalid model
    label_names, version_dir = model.label_names, str(model.model.version_dir)
    del model
    options = PipelineOptions(shlex.split(beam_args))
    log(
        f"scoring {total} documents from {len(sources)} input(s) with {version_dir} on Beam "
        f"({beam_args or 'DirectRunner'})"
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config, sources, version_dir, label_names, paths)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        name: sum(
            c.committed or 0
            for c in result.metrics().query(MetricsFilter().with_namespace(_NAMESPACE).with_name(name))[
                "counters"
            ]
        )
        for name in ("read", "scored", "errored")
    }
    seconds = time.monotonic() - started
    if counters["read"] != counters["scored"] + counters["errored"] or counters["read"] != total:
        raise ScoringError(f"Beam counters do not add up: counted {total}, {counters}.")
    summary = {
        "runner": "beam",
        "inputs": list(config.inputs),
        "documents_counted": total,
        **counters,
        "seconds": round(seconds, 3),
        "docs_per_second": round(total / seconds, 1) if seconds else 0.0,
        "outputs": [str(p) for p in paths.shards],
        "errors_file": str(paths.errors),
    }
    paths.summary.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    log(
        f"read {counters['read']} = scored {counters['scored']} + errored {counters['errored']} in {seconds:.1f}s\n"
        f"output: {paths.shards[0]}"
        + (f" ... ({config.num_shards} shards)" if config.num_shards > 1 else "")
        + f"\nerrors: {paths.errors}"
    )
    return summary
