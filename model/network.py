"""The networks, and the classifier that joins them to in-graph preprocessing.

Two architectures, chosen by `model.arch`:

* `bilstm`: the BBC News tutorial's network: Embedding(64) → Bidirectional
  LSTM(64) → Dense(64, relu) → softmax over the classes, on 200 token ids. The
  embedding masks padding (id 0), so the backward LSTM does not start with a
  run of padding on short documents.
* `tfidf`: unigram+bigram TF-IDF features → dropout → softmax (multinomial
  logistic regression). Linear models are the strong baseline on news topics,
  and this one trains in seconds.

`TextClassifier` owns the three stages every caller shares: standardise →
vectorise → network. The pipeline adapts and trains it; model/export.py wraps
it in signatures.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from model.config import ModelConfig
from preprocessing.config import PreprocessingConfig
from preprocessing.text import SequenceFitter, TextStandardizer, load_stopwords, make_vectorizer


def build_bilstm(vocab_size: int, sequence_length: int, num_classes: int, config: ModelConfig) -> keras.Model:
    """The tutorial's network on fixed-length token ids.

    Args:
      vocab_size: rows of the embedding (the adapted vocabulary size).
      sequence_length: token ids per document.
      num_classes: width of the softmax.
      config: layer sizes.

    Returns:
      A `keras.Model` mapping int64 ids `[batch, sequence_length]` to
      probabilities `[batch, num_classes]`.
    """
    ids = keras.Input(shape=(sequence_length,), dtype="int64", name="token_ids")
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, mask_zero=True, name="embedding")(ids)
    # Dropping whole embedding channels regularises; ~1,700 documents overfit fast.
    x = keras.layers.SpatialDropout1D(config.dropout, name="embedding_dropout")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(config.lstm_units), name="bilstm")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(ids, probabilities, name="bilstm")


def build_tfidf_linear(num_features: int, num_classes: int, config: ModelConfig) -> keras.Model:
    """Multinomial logistic regression on TF-IDF features.

    Returns:
      A `keras.Model` mapping float32 `[batch, num_features]` to
      probabilities `[batch, num_classes]`.
    """
    features = keras.Input(shape=(num_features,), dtype="float32", name="tfidf")
    # L2-normalised rows: long articles would otherwise dominate the logits.
    x = keras.layers.UnitNormalization(name="l2_normalize")(features)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(features, probabilities, name="tfidf_linear")


class TextClassifier:
    """Raw strings in, class probabilities out: preprocessing and network together.

    Args:
      label_names: class names; index i of the probabilities is label i.
      preprocessing: standardisation and vocabulary settings.
      model: the architecture and its sizes.
    """

    def __init__(self, label_names: list[str], preprocessing: PreprocessingConfig, model: ModelConfig):
        if len(label_names) < 2:
            raise ValueError(f"`label_names` must hold at least two classes, received {label_names!r}.")
        self.label_names = list(label_names)
        self.arch = model.arch
        self._model_config = model
        self.fitter: SequenceFitter | None
        self.standardizer = TextStandardizer(load_stopwords(preprocessing.stopwords), name="standardizer")
        if model.arch == "bilstm":
            self.vectorizer = make_vectorizer(preprocessing.max_tokens, "int")
            self.fitter = SequenceFitter(
                preprocessing.sequence_length, preprocessing.padding, preprocessing.truncating, name="fitter"
            )
            self._sequence_length = preprocessing.sequence_length
        else:
            self.vectorizer = make_vectorizer(model.tfidf_max_tokens, "tf_idf", ngrams=model.ngrams)
            self.fitter = None
        self.network: keras.Model | None = None

    def adapt(self, texts: tf.data.Dataset) -> None:
        """Learns the vocabulary (and IDF weights) from raw training texts, then builds the network."""
        self.vectorizer.adapt(texts.map(self.standardizer, num_parallel_calls=tf.data.AUTOTUNE))
        vocab_size = self.vectorizer.vocabulary_size()
        if self.arch == "bilstm":
            self.network = build_bilstm(
                vocab_size, self._sequence_length, len(self.label_names), self._model_config
            )
        else:
            self.network = build_tfidf_linear(vocab_size, len(self.label_names), self._model_config)

    def features(self, texts: tf.Tensor) -> tf.Tensor:
        """Raw `tf.string` `[batch]` → the network's input features."""
        tokens = self.vectorizer(self.standardizer(texts))
        return self.fitter(tokens) if self.fitter is not None else tokens

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        """Raw `tf.string` `[batch]` → probabilities float32 `[batch, classes]`."""
        if self.network is None:
            raise RuntimeError("TextClassifier.adapt() must run before the classifier is called")
        return self.network(self.features(texts), training=False)
