"""One training run: ingest → validate → split → adapt → train → export → verify → evaluate.

    textserve train --data ../shared/data/bbc --out runs/bbc [--config FILE] [--set model.arch=tfidf]

Everything a run produces goes under its run directory:

    config.toml          the resolved configuration
    data_report.json     what was read, decoded with a fallback, and dropped (and why)
    splits.json          document ids of train / validation / test
    metrics.json         validation and test metrics of the exported model
    history.json, history.png, confusion_matrix.png
    export/<version>/    the SavedModel TF Serving loads

This module orders the steps and places the artifacts; the tensor work lives
in preprocessing/ and model/.
"""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model.export import (
    ExportedModel,
    StagedExport,
    export,
    write_config,
    write_model_card,
    write_warmup_requests,
)
from model.network import TextClassifier
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, ingest, write_json
from pipeline.errors import VerificationError
from pipeline.evaluate import evaluate_export
from pipeline.plots import plot_confusion_matrix, plot_history
from pipeline.splits import class_balance, describe_balance, split_ids, splits_record, training_fingerprints
from preprocessing import names

# Documents per preprocessing batch when building the cached feature datasets.
_PREPROCESS_BATCH = 256


@dataclass(frozen=True)
class RunResult:
    """What `train` hands back to its caller (the CLI prints it)."""

    run_dir: Path
    version_dir: Path
    metrics: dict
    seconds: float


def _git_commit() -> str:
    """The commit of the textserve source tree, or "unknown" outside a checkout."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _feature_dataset(
    classifier: TextClassifier,
    data: Dataset,
    label_names: list[str],
    batch_size: int,
    shuffle_seed: int | None,
) -> tf.data.Dataset:
    """(features, class index) batches; preprocessing runs once and is cached."""
    label_index = {label: i for i, label in enumerate(label_names)}
    y = np.array([label_index[label] for label in data.labels], dtype=np.int64)
    features = (
        tf.data.Dataset.from_tensor_slices(data.texts)
        .batch(_PREPROCESS_BATCH)
        .map(classifier.features, num_parallel_calls=tf.data.AUTOTUNE)
        .unbatch()
    )
    # unbatch() loses the element count; restoring it lets Keras size its epochs.
    features = features.apply(tf.data.experimental.assert_cardinality(len(y)))
    dataset = tf.data.Dataset.zip(features, tf.data.Dataset.from_tensor_slices(y)).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(y), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _verify_export(predict_fn, reloaded: ExportedModel, texts: list[str], tolerance: float) -> float:
    """Checks the reloaded SavedModel against the in-memory module; returns the max difference."""
    expected = np.concatenate(
        [
            predict_fn(tf.constant(texts[i : i + _PREPROCESS_BATCH]))[names.PROBABILITIES].numpy()
            for i in range(0, len(texts), _PREPROCESS_BATCH)
        ]
    )
    actual = reloaded.predict(texts, _PREPROCESS_BATCH)[names.PROBABILITIES]
    difference = float(np.max(np.abs(expected - actual))) if len(texts) else 0.0
    if expected.shape != actual.shape or difference > tolerance:
        raise VerificationError(
            f"the reloaded SavedModel at {reloaded.version_dir} differs from the trained model: "
            f"max |Δp| = {difference:.3g} > {tolerance:g} on {len(texts)} test documents."
        )
    return difference


def train(
    config: PipelineConfig, data_path: str | Path, run_dir: str | Path, *, verbose: int = 1, log=print
) -> RunResult:
    """Runs the whole pipeline and returns where the export is and how good it is.

    Args:
      config: the resolved configuration.
      data_path: a class-folder directory or a CSV/TSV/JSONL file.
      run_dir: where artifacts go; an existing export version there is never overwritten.
      verbose: Keras progress output (1 = progress bar, 2 = one line per epoch, 0 = none).
      log: where step messages go.

    Raises:
      pipeline.data.DataError: unusable input, naming file and line.
      VerificationError: the reloaded export does not match the trained model.
      FileExistsError: `run_dir/export/<version>` already exists.
    """
    started = time.perf_counter()
    run_dir = Path(run_dir)
    version_dir = run_dir / "export" / str(config.export.version)
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} already exists; choose a new --out or set export.version.")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / names.CONFIG_FILE).write_text(config.to_toml(), "utf-8")

    log(f"[1/6] reading {data_path}")
    dataset = ingest(data_path, config.data)
    report = dataset.report
    write_json(run_dir / "data_report.json", report)
    log(
        f"      {report['records_read']} records, {report['records_kept']} kept, "
        f"dropped {report['dropped_by_reason']}, {len(report['decoded_with_fallback'])} decoded "
        f"with a fallback encoding; classes {report['classes']}"
    )

    splits = split_ids(dataset, config.split)
    write_json(run_dir / "splits.json", splits_record(dataset, splits, config.split))
    train_data, val_data, test_data = (
        dataset.subset(splits[name]) for name in ("train", "validation", "test")
    )
    log(
        f"[2/6] split {len(train_data.ids)} train / {len(val_data.ids)} validation / {len(test_data.ids)} test"
    )
    log(describe_balance(class_balance(dataset, splits)))

    keras.utils.set_random_seed(config.train.seed)
    label_names = dataset.label_names
    classifier = TextClassifier(label_names, config.preprocessing, config.model)
    classifier.adapt(tf.data.Dataset.from_tensor_slices(train_data.texts).batch(_PREPROCESS_BATCH))
    log(f"[3/6] adapted vocabulary: {classifier.vectorizer.vocabulary_size()} entries ({config.model.arch})")

    train_ds = _feature_dataset(
        classifier, train_data, label_names, config.train.batch_size, config.train.seed
    )
    val_ds = _feature_dataset(classifier, val_data, label_names, config.train.batch_size, None)
    network = classifier.network
    assert network is not None  # built by adapt()
    network.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.train.early_stopping_patience, restore_best_weights=True
    )
    log(f"[4/6] training for up to {config.train.epochs} epochs")
    history = network.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.train.epochs,
        callbacks=[stopper],
        shuffle=False,
        verbose=verbose,
    ).history
    if stopper.best_weights is not None and not stopper.stopped_epoch:
        # Keras restores the best weights only when it stops early; do it always.
        network.set_weights(stopper.best_weights)
    history = {key: [float(v) for v in values] for key, values in history.items()}
    write_json(run_dir / "history.json", history)
    plot_history(history, run_dir / "history.png")

    log(f"[5/6] exporting to {version_dir}")
    # Everything goes into a hidden staging sibling, renamed into place only
    # when complete: a crash never leaves a version that push refuses.
    with StagedExport(version_dir) as staged:
        for stale in staged.removed_stale:
            log(f"      removed {stale}, left by an earlier run that did not finish")
        predict_fn = export(classifier, staged.path)
        warmup_texts = (test_data.texts or train_data.texts)[: config.export.warmup_records]
        write_warmup_requests(staged.path, warmup_texts, config.export.model_name)
        reloaded = ExportedModel(staged.path)
        difference = _verify_export(predict_fn, reloaded, test_data.texts, config.export.verify_tolerance)
        log(
            f"      verified: reloaded SavedModel matches the trained model on {len(test_data.ids)} "
            f"test documents (max |Δp| {difference:.2e})"
        )

        log("[6/6] evaluating the exported model")
        metrics = {
            "validation": evaluate_export(reloaded, val_data),
            "test": evaluate_export(reloaded, test_data),
        }
        metrics["verification"] = {"max_abs_difference": difference, "documents": len(test_data.ids)}
        write_json(run_dir / "metrics.json", metrics)
        plot_confusion_matrix(metrics["test"]["confusion_matrix"], run_dir / "confusion_matrix.png")

        write_config(staged.path, config.to_toml())
        write_model_card(
            staged.path,
            {
                "model_name": config.export.model_name,
                "version": config.export.version,
                "labels": label_names,
                "architecture": config.model.arch,
                "config": config.to_dict(),
                "config_hash": config.fingerprint(),
                "metrics": {
                    split: {k: metrics[split][k] for k in ("accuracy", "macro_f1", "count")}
                    for split in ("validation", "test")
                },
                "data": {
                    "source": str(Path(data_path).resolve()),
                    "fingerprint": report["fingerprint"],
                    "documents": report["records_kept"],
                    "splits": {k: len(v) for k, v in splits.items()},
                },
                "training_fingerprints": training_fingerprints(train_data.texts),
                "tensorflow_version": tf.__version__,
                "python_version": platform.python_version(),
                "git_commit": _git_commit(),
                "run_dir": str(run_dir.resolve()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        staged.commit()
    return RunResult(run_dir, version_dir, metrics, time.perf_counter() - started)
