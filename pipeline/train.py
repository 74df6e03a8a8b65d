"""One training run: ingest → split → adapt → train → export → verify → evaluate.

    textserve train --data ../shared/data/bbc --out runs/bbc [--config FILE] [--set model.arch=cnn] [--repeats 5]

Everything a run produces goes under its run directory:

    config.toml          the resolved configuration
    data_report.json     what was read, decoded with a fallback, and dropped (and why)
    splits.json          document ids of train / validation / test
    metrics.json         validation and test metrics of the exported model, the time
                         each step took, and (with --repeats) mean ± sd over repeated splits
    history.json, history.png, confusion_matrix.png, MODEL_CARD.md
    logs/                TensorBoard: train/ and validation/ curves, the confusion
                         matrix image and the hyperparameters (HParams)
    export/<version>/    the SavedModel TF Serving loads
    repeats/split-seed-N/  with --repeats K: one full run per extra split

This module orders the steps and places the artifacts; the tensor work lives
in preprocessing/ and model/.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from model.card import build_model_card, render_markdown
from model.export import (
    ExportedModel,
    StagedExport,
    export,
    write_config,
    write_model_card,
    write_warmup_requests,
)
from model.network import EnsembleClassifier, TextClassifier
from pipeline.config import PipelineConfig, load_config, member_config
from pipeline.data import Dataset, ingest, write_json
from pipeline.errors import VerificationError
from pipeline.evaluate import classification_metrics, paired_bootstrap, predict_labels
from pipeline.plots import plot_confusion_matrix, plot_history, write_tensorboard_summaries
from pipeline.splits import class_balance, describe_balance, split_ids, splits_record, training_fingerprints
from preprocessing import names

# Documents per preprocessing batch when computing the feature arrays.
_PREPROCESS_BATCH = 256
_STEPS_PER_EXECUTION = 32


@dataclass(frozen=True)
class RunResult:
    """What `train` hands back to its caller (the CLI prints it).

    `timings` holds seconds per step of the run on the configured split
    (`fit` is Keras's `model.fit` alone, `total` the whole run without the
    repeats); `repeats` the mean ± sd over repeated splits, or None.
    """

    run_dir: Path
    version_dir: Path
    metrics: dict
    seconds: float
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    repeats: dict | None = None


class _Stopwatch:
    """Wall seconds per named step, measured back to back, and this process's CPU seconds.

    CPU time is kept beside wall time because on a shared machine wall time
    moves with whatever else runs; CPU time much less so.
    """

    def __init__(self) -> None:
        self.started = self._last = time.perf_counter()
        self.cpu_started = self._cpu_last = time.process_time()
        self.laps: dict[str, float] = {}
        self.cpu_laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self.cpu_laps[name] = self.cpu_laps.get(name, 0.0) + cpu - self._cpu_last
        self._last, self._cpu_last = now, cpu

    def total(self) -> dict[str, float]:
        return {
            **{k: round(v, 3) for k, v in self.laps.items()},
            "total": round(self._last - self.started, 3),
        }

    def cpu_total(self) -> dict[str, float]:
        return {
            **{k: round(v, 3) for k, v in self.cpu_laps.items()},
            "total": round(self._cpu_last - self.cpu_started, 3),
        }


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


def compute_features(classifier: TextClassifier, texts: list[str]) -> np.ndarray:
    """The network's input features of raw texts, computed once by the in-graph preprocessing.

    Args:
      classifier: an adapted classifier.
      texts: raw documents.

    Returns:
      `[len(texts), ...]` features (token ids or TF-IDF rows), as the network reads them.
    """
    batches = (
        tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string))
        .batch(_PREPROCESS_BATCH)
        .map(classifier.features, num_parallel_calls=tf.data.AUTOTUNE)
    )
    return np.concatenate([batch.numpy() for batch in batches]) if texts else np.zeros((0,))


def class_ids(labels: list[str], label_names: list[str]) -> np.ndarray:
    """Each label's index in `label_names` (the order of the probabilities)."""
    index = {label: i for i, label in enumerate(label_names)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def _verify_export(
    expected: np.ndarray, reloaded: ExportedModel, texts: list[str], tolerance: float
) -> float:
    """Checks the reloaded SavedModel (raw text in) against the trained network; returns the max difference."""
    actual = reloaded.predict(texts, _PREPROCESS_BATCH).get(names.PROBABILITIES, np.zeros((0,)))
    difference = float(np.max(np.abs(expected - actual))) if len(texts) else 0.0
    if expected.shape != actual.shape or difference > tolerance:
        raise VerificationError(
            f"the reloaded SavedModel at {reloaded.version_dir} differs from the trained model: "
            f"max |Δp| = {difference:.3g} > {tolerance:g} on {len(texts)} test documents."
        )
    return difference


def _describe_stopping(stopper: keras.callbacks.EarlyStopping, history: dict, epochs: int) -> str:
    """One line on what early stopping did and which epoch's weights the model keeps."""
    val_loss = history.get("val_loss", [])
    best = int(np.argmin(val_loss)) + 1 if val_loss else len(history.get("loss", []))
    best_text = f"epoch {best} (validation loss {val_loss[best - 1]:.4f})" if val_loss else f"epoch {best}"
    if stopper.stopped_epoch:
        return (
            f"      early stopping at epoch {stopper.stopped_epoch + 1} of {epochs}: validation loss had not "
            f"improved for {stopper.patience} epochs; restored the weights of {best_text}"
        )
    return f"      ran all {epochs} epochs; kept the weights of {best_text}, the lowest validation loss"


def _evaluate(model: ExportedModel, data: Dataset) -> dict:
    """The classification metrics of `model` on `data`, with 95% bootstrap intervals (as the release gate).

    The model predicts once; the metrics and the intervals both come from those
    labels. The bootstrap's seed is fixed, so the same predictions always give
    the same intervals.
    """
    predicted = predict_labels(model, data.texts)
    metrics = classification_metrics(data.labels, predicted, model.label_names)
    if not data.labels:
        metrics["intervals"] = {"accuracy": [0.0, 1.0], "macro_f1": [0.0, 1.0]}
        return metrics
    intervals = paired_bootstrap(data.labels, predicted, None)["candidate"]
    metrics["intervals"] = {name: list(bounds) for name, bounds in intervals.items()}
    return metrics


def _hparams(config: PipelineConfig) -> dict[str, bool | int | float | str]:
    """The settings TensorBoard's HParams view compares runs by."""
    flat: dict[str, bool | int | float | str] = {}
    for section in ("preprocessing", "model", "train"):
        for key, value in config.to_dict()[section].items():
            flat[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


@dataclass(frozen=True)
class _Fitted:
    classifier: TextClassifier
    history: dict[str, list[float]]
    expected: np.ndarray  # the trained network's test probabilities, to verify the export against


def _fit(
    config: PipelineConfig,
    label_names: list[str],
    train_data: Dataset,
    val_data: Dataset,
    test_data: Dataset,
    log_dir: Path,
    watch: _Stopwatch,
    verbose: int,
    log: Callable[[str], object],
) -> _Fitted:
    """Steps 3–4 for one architecture: adapt the preprocessing, compute features once, fit."""
    keras.utils.set_random_seed(config.train.seed)
    classifier = TextClassifier(label_names, config.preprocessing, config.model)
    classifier.adapt(tf.data.Dataset.from_tensor_slices(train_data.texts).batch(_PREPROCESS_BATCH))
    log(f"[3/6] adapted vocabulary: {classifier.vectorizer.vocabulary_size()} entries ({config.model.arch})")
    watch.lap("adapt")
    # Features are computed once by the in-graph layers: fit then trains on
    # arrays, exactly as a bare Keras fit would.
    x_train, x_val, x_test = (
        compute_features(classifier, d.texts) for d in (train_data, val_data, test_data)
    )
    y_train, y_val = class_ids(train_data.labels, label_names), class_ids(val_data.labels, label_names)
    watch.lap("features")

    network = classifier.network
    assert network is not None  # built by adapt()
    network.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate, clipnorm=config.train.clipnorm or None),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        # Several steps per tf.function call: the same updates in the same order, less Python
        # per step (about 20% of the TF-IDF fit on BBC, whose steps are tiny).
        steps_per_execution=_STEPS_PER_EXECUTION,
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.train.early_stopping_patience, restore_best_weights=True
    )
    board = keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0)
    log(f"[4/6] training {config.model.arch} for up to {config.train.epochs} epochs")
    watch.lap("setup")
    history = network.fit(
        x_train,
        y_train,
        batch_size=config.train.batch_size,
        validation_data=(x_val, y_val),
        epochs=config.train.epochs,
        callbacks=[stopper, board],
        shuffle=True,
        verbose=verbose,
    ).history
    watch.lap("fit")
    if stopper.best_weights is not None and not stopper.stopped_epoch:
        # Keras restores the best weights only when it stops early; do it always.
        network.set_weights(stopper.best_weights)
    history = {key: [float(v) for v in values] for key, values in history.items()}
    log(_describe_stopping(stopper, history, config.train.epochs))
    expected = network.predict(x_test, batch_size=_PREPROCESS_BATCH, verbose=0) if len(x_test) else x_test
    watch.lap("verify")  # the reference the export is checked against
    return _Fitted(classifier, history, expected)


def _train_split(
    config: PipelineConfig,
    dataset: Dataset,
    data_path: str | Path,
    run_dir: Path,
    watch: _Stopwatch,
    verbose: int,
    log: Callable[[str], object],
    repeats: dict | None = None,
) -> tuple[dict, Path]:
    """Steps 2–6 on the split `config.split` gives; returns the metrics and the version directory."""
    version_dir = run_dir / "export" / str(config.export.version)
    report = dataset.report
    # Logs left by an interrupted run of this directory would mix into this run's curves.
    shutil.rmtree(run_dir / "logs", ignore_errors=True)
    splits = split_ids(dataset, config.split)
    write_json(run_dir / "splits.json", splits_record(dataset, splits, config.split))
    train_data, val_data, test_data = (
        dataset.subset(splits[name]) for name in ("train", "validation", "test")
    )
    log(
        f"[2/6] split {len(train_data.ids)} train / {len(val_data.ids)} validation / {len(test_data.ids)} test"
    )
    log(describe_balance(class_balance(dataset, splits)))
    watch.lap("split")

    label_names = dataset.label_names
    if config.model.arch == "ensemble":
        fitted = [
            _fit(
                member_config(config, arch),
                label_names,
                train_data,
                val_data,
                test_data,
                run_dir / "logs" / arch,
                watch,
                verbose,
                log,
            )
            for arch in config.model.ensemble_members
        ]
        classifier: TextClassifier | EnsembleClassifier = EnsembleClassifier([f.classifier for f in fitted])
        expected = np.mean([f.expected for f in fitted], axis=0)
        history: dict = {f.classifier.arch: f.history for f in fitted}
    else:
        single = _fit(
            config, label_names, train_data, val_data, test_data, run_dir / "logs", watch, verbose, log
        )
        classifier, expected, history = single.classifier, single.expected, single.history

    log(f"[5/6] exporting to {version_dir}")
    # Everything goes into a hidden staging sibling, renamed into place only
    # when complete: a crash never leaves a version that push refuses.
    with StagedExport(version_dir) as staged:
        for stale in staged.removed_stale:
            log(f"      removed {stale}, left by an earlier run that did not finish")
        export(classifier, staged.path)
        warmup_texts = (test_data.texts or train_data.texts)[: config.export.warmup_records]
        write_warmup_requests(staged.path, warmup_texts, config.export.model_name)
        watch.lap("export")
        reloaded = ExportedModel(staged.path)
        difference = _verify_export(expected, reloaded, test_data.texts, config.export.verify_tolerance)
        log(
            f"      verified: reloaded SavedModel matches the trained model on {len(test_data.ids)} "
            f"test documents (max |Δp| {difference:.2e})"
        )
        watch.lap("verify")

        log("[6/6] evaluating the exported model")
        metrics: dict = {"validation": _evaluate(reloaded, val_data), "test": _evaluate(reloaded, test_data)}
        metrics["verification"] = {"max_abs_difference": difference, "documents": len(test_data.ids)}
        watch.lap("evaluate")
        if repeats:
            metrics["repeats"] = repeats
        card = build_model_card(
            model_name=config.export.model_name,
            version=config.export.version,
            labels=label_names,
            architecture=config.model.arch,
            config=config.to_dict(),
            config_hash=config.fingerprint(),
            metrics=metrics,
            data={
                "source": str(Path(data_path).resolve()),
                "fingerprint": report["fingerprint"],
                "documents": report["records_kept"],
                "classes": report.get("classes", {}),
                "splits": {k: len(v) for k, v in splits.items()},
                "split_seed": config.split.seed,
            },
            environment={
                "tensorflow_version": tf.__version__,
                "python_version": platform.python_version(),
                "git_commit": _git_commit(),
            },
            run_dir=str(run_dir.resolve()),
        )
        # Exact fingerprints of the training documents: the release gate never scores
        # a model on what it trained on (pipeline/splits.py, docs/production.md).
        card["training_fingerprints"] = training_fingerprints(train_data.texts)
        write_config(staged.path, config.to_toml())
        write_model_card(staged.path, card)
        staged.commit()
    (run_dir / "MODEL_CARD.md").write_text(render_markdown(card), "utf-8")
    write_json(run_dir / "history.json", history)
    if config.model.arch == "ensemble":
        for arch, member_history in history.items():
            plot_history(member_history, run_dir / f"history_{arch}.png")
    else:
        plot_history(history, run_dir / "history.png")
    image = plot_confusion_matrix(metrics["test"]["confusion_matrix"], run_dir / "confusion_matrix.png")
    write_tensorboard_summaries(run_dir / "logs", image, _hparams(config), metrics)
    watch.lap("artifacts")
    metrics["timings"] = watch.total()
    metrics["cpu_seconds"] = watch.cpu_total()
    write_json(run_dir / "metrics.json", metrics)
    return metrics, version_dir


def _mean_sd(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def _finished_repeat(repeat_dir: Path, config: PipelineConfig) -> dict | None:
    """The metrics of a repeat finished earlier with exactly this config, or None if there is none.

    An interrupted `--repeats` run is resumed: finished repeats are kept.

    Raises:
      FileExistsError: the directory holds a finished run of a different config.
    """
    version_dir = repeat_dir / "export" / str(config.export.version)
    metrics_path = repeat_dir / "metrics.json"
    if not version_dir.is_dir():
        return None
    try:
        # Keys added since that run resolve to their defaults, as they ran.
        same = load_config(repeat_dir / names.CONFIG_FILE) == config
    except ValueError:
        same = False
    if not same or not metrics_path.is_file():
        raise FileExistsError(f"{repeat_dir} holds a run of another config; choose a new --out.")
    return json.loads(metrics_path.read_text("utf-8"))


def _run_repeats(
    config: PipelineConfig,
    dataset: Dataset,
    data_path: str | Path,
    run_dir: Path,
    log: Callable[[str], object],
) -> dict:
    """Trains and exports one full run per split seed 1..K; returns mean ± sd of their test metrics."""
    seeds = list(range(1, config.train.repeats + 1))
    accuracy, macro_f1 = [], []
    metrics: dict = {}
    for n, seed in enumerate(seeds, 1):
        repeat_config = dataclasses.replace(
            config,
            split=dataclasses.replace(config.split, seed=seed),
            train=dataclasses.replace(config.train, repeats=0),
        )
        repeat_dir = run_dir / "repeats" / f"split-seed-{seed}"
        finished = _finished_repeat(repeat_dir, repeat_config)
        if finished is not None:
            metrics = finished
            log(f"      repeat {n}/{len(seeds)}: reusing the finished run in {repeat_dir} (same config)")
        else:
            repeat_dir.mkdir(parents=True, exist_ok=True)
            (repeat_dir / names.CONFIG_FILE).write_text(repeat_config.to_toml(), "utf-8")
            watch = _Stopwatch()
            metrics, _ = _train_split(
                repeat_config, dataset, data_path, repeat_dir, watch, 0, lambda *_: None
            )
        test = metrics["test"]
        accuracy.append(test["accuracy"])
        macro_f1.append(test["macro_f1"])
        log(
            f"      repeat {n}/{len(seeds)} (split seed {seed}): test accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f} ({metrics['timings']['total']:.0f} s)"
        )
    return {
        "split_seeds": seeds,
        "test_documents": metrics["test"]["count"],
        "accuracy": _mean_sd(accuracy),
        "macro_f1": _mean_sd(macro_f1),
    }


def train(
    config: PipelineConfig,
    data_path: str | Path,
    run_dir: str | Path,
    *,
    verbose: int = 1,
    log: Callable[[str], object] = print,
) -> RunResult:
    """Runs the whole pipeline and returns where the export is and how good it is.

    With `train.repeats = K`, K more runs on split seeds 1..K (each under
    `run_dir/repeats/`) measure how much the test figures move with the split;
    the exported model is always the one trained on the configured split.

    Args:
      config: the resolved configuration.
      data_path: a class-folder directory or a CSV/TSV/JSONL file.
      run_dir: where artifacts go; an existing export version there is never overwritten.
      verbose: Keras progress output (1 = progress bar, 2 = one line per epoch, 0 = none).
      log: where step messages go.

    Returns:
      The run directory, the exported version, its metrics, and the time taken.

    Raises:
      pipeline.errors.DataError: unusable input, naming file and line.
      VerificationError: the reloaded export does not match the trained model.
      FileExistsError: `run_dir/export/<version>` already exists.
    """
    watch = _Stopwatch()
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
    watch.lap("read")
    repeats = None
    if config.train.repeats:
        log(f"      {config.train.repeats} repeated runs on split seeds 1..{config.train.repeats} first")
        repeat_started = time.perf_counter()
        repeats = _run_repeats(config, dataset, data_path, run_dir, log)
        repeats["seconds"] = round(time.perf_counter() - repeat_started, 1)
        read, read_cpu = watch.laps["read"], watch.cpu_laps["read"]
        watch = _Stopwatch()  # the timings below describe the configured run alone
        watch.started -= read
        watch.cpu_started -= read_cpu
        watch.laps["read"], watch.cpu_laps["read"] = read, read_cpu
    metrics, version_dir = _train_split(config, dataset, data_path, run_dir, watch, verbose, log, repeats)
    return RunResult(run_dir, version_dir, metrics, watch.total()["total"], metrics["timings"], repeats)
