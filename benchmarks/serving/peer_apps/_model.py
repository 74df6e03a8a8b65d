"""The SavedModel as every peer app calls it: a list of texts in, one label per text out."""

from __future__ import annotations

import os


def load(version_dir: str):
    """Loads `serving_default` of the SavedModel; returns `predict(list[str]) -> list[str]`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the text ops of the graph

    signature = tf.saved_model.load(version_dir).signatures["serving_default"]

    def predict(texts: list[str]) -> list[str]:
        labels = signature(text=tf.constant(texts))["label"].numpy()
        return [label.decode() for label in labels]

    predict(["warm-up"])  # builds the graph functions before the first request
    return predict
