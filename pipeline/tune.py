"""Hyperparameter search with KerasTuner, on the validation split only.

    textserve tune --data ../shared/data/bbc --arch cnn --trials 20 --out runs/tune-cnn
    textserve train --data ../shared/data/bbc --config runs/tune-cnn/best_config.toml --repeats 5

The data is read, deduplicated and split exactly as `train` does (same
`split.seed`); each trial trains on the training split and is scored by its
lowest validation loss (the epoch early stopping keeps). Validation accuracy
is reported too, but on ~200 documents it moves in steps of 0.5% and most
trials tie, which leaves the search nothing to follow. The test split is never
read, so the test figures `train` reports afterwards are not biased by the
search.

KerasTuner's Bayesian optimisation (a Gaussian process over the space below)
picks each trial's values. The preprocessing is adapted once and shared by
every trial, so the search covers the network's sizes and the optimiser's
step; vocabulary and sequence length stay as configured (set them with
`--set preprocessing.*`, or compare them with `train --repeats`).

Search spaces (`SEARCH_SPACES`), per architecture:

| arch | key | values |
|---|---|---|
| bilstm | model.embedding_dim, model.lstm_units, model.dense_units | 32, 64, 128 |
| bilstm | model.dropout | 0.1 – 0.5 |
| bilstm | train.learning_rate | 0.0005 – 0.01 (log) |
| cnn | model.embedding_dim, model.cnn_filters | 64, 128, 256 |
| cnn | model.dropout | 0.2 – 0.6 |
| cnn | train.learning_rate | 0.0003 – 0.003 (log) |
| fasttext | model.embedding_dim | 32, 64, 128 |
| fasttext | model.dropout | 0.0 – 0.5 |
| fasttext | train.learning_rate | 0.002 – 0.05 (log) |
| tfidf | model.dropout | 0.0 – 0.7 |
| tfidf | train.learning_rate | 0.01 – 0.2 (log) |

Written to `--out`: `best_config.toml` (the whole resolved config with the
best values, which `train --config` takes), `trials.json` (every trial's
values and score) and KerasTuner's own trial directory.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from model.network import TextClassifier
from pipeline.config import PipelineConfig
from pipeline.data import ingest
from pipeline.errors import UsageError
from pipeline.splits import split_ids
from pipeline.train import class_ids, compute_features

# (config key, kind, arguments): "choice" takes values, "float" (low, high,
# step) and "log" (low, high) sample a float range, linearly or log-uniformly.
SEARCH_SPACES: dict[str, list[tuple[str, str, tuple]]] = {
    "bilstm": [
        ("model.embedding_dim", "choice", (32, 64, 128)),
        ("model.lstm_units", "choice", (32, 64, 128)),
        ("model.dense_units", "choice", (32, 64, 128)),
        ("model.dropout", "float", (0.1, 0.5, 0.1)),
        ("train.learning_rate", "log", (0.0005, 0.01)),
    ],
    "cnn": [
        ("model.embedding_dim", "choice", (64, 128, 256)),
        ("model.cnn_filters", "choice", (64, 128, 256)),
        ("model.dropout", "float", (0.2, 0.6, 0.1)),
        ("train.learning_rate", "log", (0.0003, 0.003)),
    ],
    "fasttext": [
        ("model.embedding_dim", "choice", (32, 64, 128)),
        ("model.dropout", "float", (0.0, 0.5, 0.1)),
        ("train.learning_rate", "log", (0.002, 0.05)),
    ],
    "tfidf": [
        ("model.dropout", "float", (0.0, 0.7, 0.1)),
        ("train.learning_rate", "log", (0.01, 0.2)),
    ],
}


@dataclass(frozen=True)
class TuneResult:
    """The outcome of a search: the best values, their validation figures, and the TOML written."""

    trials: int
    best_loss: float
    best_accuracy: float
    best_values: dict[str, Any]
    config_path: Path


def _sample(hp, space: list[tuple[str, str, tuple]]) -> dict[str, Any]:
    """Draws one value per key of the space from KerasTuner's `HyperParameters`."""
    values: dict[str, Any] = {}
    for key, kind, arguments in space:
        if kind == "choice":
            values[key] = hp.Choice(key, list(arguments))
        elif kind == "float":
            low, high, step = arguments
            values[key] = round(hp.Float(key, low, high, step=step), 6)
        else:
            low, high = arguments
            values[key] = hp.Float(key, low, high, sampling="log")
    return values


def apply_values(config: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """The config with `section.key` values replaced (sections re-validate themselves).

    Args:
      config: the base config.
      values: e.g. `{"model.dropout": 0.3, "train.learning_rate": 0.002}`.

    Returns:
      A new frozen config.
    """
    by_section: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, key = dotted.split(".", 1)
        by_section.setdefault(section, {})[key] = value
    return dataclasses.replace(
        config,
        **{
            section: dataclasses.replace(getattr(config, section), **changes)
            for section, changes in by_section.items()
        },
    )


def tune(
    config: PipelineConfig,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    trials: int,
    log: Callable[[str], object] = print,
) -> TuneResult:
    """Searches `config.model.arch`'s space and writes the best config as TOML.

    Args:
      config: the resolved base config (its `model.arch` is tuned).
      data_path: labelled data, as for `train`.
      out_dir: where `best_config.toml`, `trials.json` and KerasTuner's files go.
      trials: how many models to train.
      log: where progress lines go.

    Returns:
      The best trial's values, validation loss and accuracy, and the TOML's path.

    Raises:
      UsageError: KerasTuner is not installed.
      pipeline.errors.DataError: unusable input.
    """
    try:
        import keras_tuner
    except ImportError as error:
        raise UsageError(
            "textserve tune needs KerasTuner: pip install 'textserve[tune]' (or keras-tuner)."
        ) from error
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch, space = config.model.arch, SEARCH_SPACES[config.model.arch]

    dataset = ingest(data_path, config.data)
    splits = split_ids(dataset, config.split)
    train_data, val_data = dataset.subset(splits["train"]), dataset.subset(splits["validation"])
    log(f"tuning {arch} on {len(train_data.ids)} train / {len(val_data.ids)} validation documents")
    keras.utils.set_random_seed(config.train.seed)
    label_names = dataset.label_names
    classifier = TextClassifier(label_names, config.preprocessing, config.model)
    classifier.adapt(tf.data.Dataset.from_tensor_slices(train_data.texts).batch(256))
    x_train, x_val = (
        compute_features(classifier, train_data.texts),
        compute_features(classifier, val_data.texts),
    )
    y_train, y_val = class_ids(train_data.labels, label_names), class_ids(val_data.labels, label_names)

    class _HyperModel(keras_tuner.HyperModel):
        def build(self, hp):
            trial = apply_values(config, _sample(hp, space))
            network = classifier.build_network(trial.model)
            network.compile(
                optimizer=keras.optimizers.Adam(
                    trial.train.learning_rate, clipnorm=trial.train.clipnorm or None
                ),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            return network

    tuner = keras_tuner.BayesianOptimization(
        _HyperModel(),
        objective=keras_tuner.Objective("val_loss", direction="min"),
        max_trials=trials,
        seed=config.train.seed,
        directory=str(out_dir),
        project_name="keras_tuner",
        overwrite=True,
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.train.early_stopping_patience, restore_best_weights=True
    )
    tuner.search(
        x_train,
        y_train,
        batch_size=config.train.batch_size,
        validation_data=(x_val, y_val),
        epochs=config.train.epochs,
        callbacks=[stopper],
        verbose=0,
    )
    done = tuner.oracle.get_best_trials(num_trials=trials)
    keys = [key for key, _, _ in space]

    def values(trial) -> dict[str, Any]:
        raw = trial.hyperparameters.values
        return {k: round(raw[k], 6) if isinstance(raw[k], float) else raw[k] for k in keys}

    def accuracy(trial) -> float:
        return float(trial.metrics.get_best_value("val_accuracy"))

    best = values(done[0])
    best_config = apply_values(config, best)
    config_path = out_dir / "best_config.toml"
    header = (
        f"# textserve tune --arch {arch} --trials {trials}: best validation loss {done[0].score:.4f}, "
        f"validation accuracy {accuracy(done[0]):.4f} ({len(done)} trials; test split not read).\n"
        "# Use with: textserve train --config THIS_FILE\n"
    )
    config_path.write_text(header + best_config.to_toml(), "utf-8")
    (out_dir / "trials.json").write_text(
        json.dumps(
            [
                {
                    "trial": t.trial_id,
                    "validation_loss": t.score,
                    "validation_accuracy": accuracy(t),
                    "values": values(t),
                }
                for t in done
            ],
            indent=2,
        )
        + "\n",
        "utf-8",
    )
    for t in done:
        log(
            f"      trial {t.trial_id}: validation loss {t.score:.4f}, accuracy {accuracy(t):.4f}  {values(t)}"
        )
    return TuneResult(len(done), float(done[0].score), accuracy(done[0]), best, config_path)
