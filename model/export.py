"""The exported SavedModel: its signatures, its extras, and how to load it.

Layout written (the layout TF Serving polls):

    <export dir>/<version>/saved_model.pb, variables/, fingerprint.pb
    <export dir>/<version>/assets.extra/tf_serving_warmup_requests
    <export dir>/<version>/assets.extra/model_card.json, config.toml

A version appears whole or not at all: everything is written into a hidden
sibling (`<export dir>/.<version>.partial-<pid>`, a name TF Serving and
`textserve push` skip) and renamed into place once verified (`StagedExport`).
A crash leaves at most that hidden directory, which the next run removes.

Signatures:

* `serving_default` (predict): `text` string `[None]` → `probabilities`
  float32 `[None, C]`, `label` string `[None]`, `class_id` int64 `[None]`,
  `score` float32 `[None]`.
* `classify` (`tensorflow/serving/classify`): `inputs` serialized
  `tf.Example`s with a bytes feature `text` → `classes` string `[None, C]`,
  `scores` float32 `[None, C]`, as TF Serving's Classify API expects.

The vocabulary, stopwords and label names are graph constants and tables, so
the directory is self-contained.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the text ops the graph uses)
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from model.network import TextClassifier
from preprocessing import names


class _LabelNames(tf.Module):
    """Holds the class names as a variable, so the graph maps ids to names itself."""

    def __init__(self, label_names: list[str]):
        super().__init__(name="labels")
        self.label_names = tf.Variable(label_names, dtype=tf.string, trainable=False, name="label_names")


class ServingFunctions:
    """The functions exported as signatures around a trained `TextClassifier`."""

    def __init__(self, classifier: TextClassifier):
        self.classifier = classifier
        self.labels = _LabelNames(classifier.label_names)

    def predict(self, text):
        """Raw documents → probabilities, top label, its index and its score."""
        probabilities = self.classifier(text)  # [batch, classes]
        class_id = tf.argmax(probabilities, axis=-1)  # int64 [batch]
        return {
            names.PROBABILITIES: probabilities,
            names.PREDICTED_LABEL: tf.gather(self.labels.label_names, class_id),
            names.CLASS_ID: class_id,
            names.SCORE: tf.reduce_max(probabilities, axis=-1),
        }

    def classify(self, inputs):
        """Serialized `tf.Example`s with a bytes feature `text` → every class and its score."""
        features = tf.io.parse_example(
            inputs, {names.TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
        )
        scores = self.classifier(features[names.TEXT_KEY])  # [batch, classes]
        classes = tf.tile(self.labels.label_names[tf.newaxis, :], [tf.shape(inputs)[0], 1])
        return {names.CLASSES: classes, names.SCORES: scores}


_PREDICT_INPUT = [tf.TensorSpec([None], tf.string, name=names.TEXT_KEY)]
_CLASSIFY_INPUT = [tf.TensorSpec([None], tf.string, name=names.CLASSIFY_INPUT)]


def _set_method_name(version_dir: Path, signature: str, method_name: str) -> None:
    """Rewrites one signature's method_name, which `tf.saved_model.save` always sets to predict.

    The fingerprint covers saved_model.pb, so it is recomputed afterwards.
    """
    pb_path = version_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[signature].method_name = method_name
    pb_path.write_bytes(saved_model.SerializeToString())
    (version_dir / "fingerprint.pb").write_bytes(fingerprinting.CreateFingerprintDef(str(version_dir)))


def write_warmup_requests(version_dir: Path, texts: Sequence[str], model_name: str) -> Path:
    """Writes TF Serving warmup records: one Predict request per sample text.

    TF Serving (and our server) replays them when loading the version, so the
    first real request does not pay for graph initialisation.
    """
    path = version_dir / names.ASSETS_EXTRA / names.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for text in texts:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=names.PREDICT_SIGNATURE)
            )
            request.inputs[names.TEXT_KEY].CopyFrom(tf.make_tensor_proto([text], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def export(classifier: TextClassifier, version_dir: Path):
    """Saves the classifier as a self-contained SavedModel with both signatures.

    Keras's `ExportArchive` is used rather than `tf.saved_model.save` on a
    module: it tracks each layer's variables directly, which is what graph
    loaders (TF Serving's C++ loader, `tf.compat.v1` sessions) need to restore
    them; a module holding Keras 3 layers exports handles they cannot restore.

    Args:
      classifier: an adapted, trained classifier.
      version_dir: where the SavedModel goes (a `StagedExport.path`); must
        not hold one yet.

    Returns:
      The in-memory `serving_default` function (a `tf.function`), for verification.

    Raises:
      FileExistsError: `version_dir` already holds a SavedModel.
    """
    if (version_dir / "saved_model.pb").exists():
        raise FileExistsError(f"{version_dir} already holds a SavedModel; refusing to overwrite it.")
    functions = ServingFunctions(classifier)
    archive = keras.export.ExportArchive()
    for layer in (classifier.standardizer, classifier.vectorizer, classifier.fitter, classifier.network):
        if layer is not None:
            archive.track(layer)  # lookup tables and weights
    archive.track(functions.labels)
    archive.add_endpoint(names.PREDICT_SIGNATURE, functions.predict, input_signature=_PREDICT_INPUT)
    archive.add_endpoint(names.CLASSIFY_SIGNATURE, functions.classify, input_signature=_CLASSIFY_INPUT)
    archive.write_out(str(version_dir), verbose=False)
    _set_method_name(version_dir, names.CLASSIFY_SIGNATURE, names.CLASSIFY_METHOD)
    return tf.function(functions.predict, input_signature=_PREDICT_INPUT)


# Files a version must hold before it is renamed into place.
_REQUIRED_FILES = (
    "saved_model.pb",
    f"{names.ASSETS_EXTRA}/{names.MODEL_CARD_FILE}",
    f"{names.ASSETS_EXTRA}/{names.CONFIG_FILE}",
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class StagedExport:
    """Builds one export version in a hidden sibling and renames it into place when complete.

    Use as a context manager: write everything under `path`, then `commit()`.
    Leaving the block without a commit (an exception, Ctrl-C) removes the
    staging directory; a killed process leaves it behind under a hidden name
    that the next `StagedExport` of that version removes once its owner is gone.

    Args:
      version_dir: `<export dir>/<version>`, the final place; must not exist.

    Raises:
      FileExistsError: `version_dir` already exists (versions are never overwritten).
    """

    def __init__(self, version_dir: str | Path):
        self.version_dir = Path(version_dir)
        self.path = self.version_dir.parent / f".{self.version_dir.name}.partial-{os.getpid()}"
        self.removed_stale: list[Path] = []
        self._committed = False

    def __enter__(self) -> StagedExport:
        if self.version_dir.exists():
            raise FileExistsError(
                f"{self.version_dir} already exists; refusing to overwrite an exported version."
            )
        self.version_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.version_dir.parent.glob(f".{self.version_dir.name}.partial-*"):
            owner = stale.name.rsplit("-", 1)[-1]
            if stale == self.path or not owner.isdigit() or not _pid_alive(int(owner)):
                shutil.rmtree(stale, ignore_errors=True)  # left by a killed run
                self.removed_stale.append(stale)
        self.path.mkdir()
        return self

    def commit(self) -> Path:
        """Renames the finished staging directory to the version directory.

        Returns:
          The version directory.

        Raises:
          FileNotFoundError: a required file (SavedModel, model card, config) is missing.
          FileExistsError: the version appeared meanwhile (another run).
        """
        missing = [name for name in _REQUIRED_FILES if not (self.path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.path}: export incomplete, missing {', '.join(missing)}.")
        if self.version_dir.exists():  # rename() would replace an empty directory silently
            raise FileExistsError(f"{self.version_dir} appeared while exporting; another run wrote it.")
        os.rename(self.path, self.version_dir)  # atomic within one file system
        self._committed = True
        return self.version_dir

    def __exit__(self, *exc_info) -> None:
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)


def write_config(version_dir: Path, config_toml: str) -> Path:
    """Writes the resolved run config as `assets.extra/config.toml`."""
    path = version_dir / names.ASSETS_EXTRA / names.CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_toml, "utf-8")
    return path


def write_model_card(version_dir: Path, card: dict) -> Path:
    """Writes `assets.extra/model_card.json` (TF Serving ignores assets.extra)."""
    path = version_dir / names.ASSETS_EXTRA / names.MODEL_CARD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return path


def read_model_card(version_dir: str | Path) -> dict:
    """Reads the model card of an exported version ({} when there is none)."""
    path = Path(version_dir) / names.ASSETS_EXTRA / names.MODEL_CARD_FILE
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def resolve_version_dir(path: str | Path) -> Path:
    """Accepts a version directory, or an export directory and picks its highest version.

    Raises:
      FileNotFoundError: if neither a saved_model.pb nor numbered versions are there.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = (
        sorted(
            (int(child.name), child)
            for child in path.iterdir()
            if child.name.isdigit() and (child / "saved_model.pb").is_file()
        )
        if path.is_dir()
        else []
    )
    if not versions:
        raise FileNotFoundError(
            f"{path}: no SavedModel here (expected saved_model.pb, or numbered version "
            f"directories such as {path}/1/saved_model.pb). Pass --model RUN/export or RUN/export/<version>."
        )
    return versions[-1][1]


class ExportedModel:
    """An exported version loaded in-process, called through its `serving_default`.

    This is the same signature TF Serving runs, so evaluation, `predict` and
    batch scoring see exactly what a served model answers.

    Args:
      path: a version directory, or an export directory (highest version).
    """

    def __init__(self, path: str | Path):
        self.version_dir = resolve_version_dir(path)
        self._loaded = tf.saved_model.load(str(self.version_dir))  # owns the tables
        self.predict_fn = self._loaded.signatures[names.PREDICT_SIGNATURE]
        self.card = read_model_card(self.version_dir)

    @property
    def label_names(self) -> list[str]:
        """Class names in probability order, read from the graph itself (the `classify` classes)."""
        empty = tf.train.Example().SerializeToString()
        classes = self._loaded.signatures[names.CLASSIFY_SIGNATURE](inputs=tf.constant([empty]))[
            names.CLASSES
        ]
        return [label.decode("utf-8") for label in classes.numpy()[0]]

    def predict(self, texts: Sequence[str], batch_size: int = 256) -> dict[str, np.ndarray]:
        """Runs `serving_default` over texts in batches; returns numpy outputs by name."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(texts), batch_size):
            outputs = self.predict_fn(text=tf.constant(list(texts[start : start + batch_size]), tf.string))
            for key, value in outputs.items():
                parts.setdefault(key, []).append(value.numpy())
        if not parts:
            return {}
        return {key: np.concatenate(values) for key, values in parts.items()}
