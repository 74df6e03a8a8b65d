"""The networks, and the classifier that joins them to in-graph preprocessing.

Architectures, chosen by `model.arch`:

* `bilstm`: the BBC News tutorial's network: Embedding(64) → Bidirectional
  LSTM(64) → Dense(64, relu) → softmax over the classes, on 200 token ids. The
  embedding masks padding (id 0), so the backward LSTM does not start with a
  run of padding on short documents. By default (`model.lstm_pooling = "mean"`)
  the Dense layer reads the LSTM's outputs averaged over the real tokens;
  `"last"` is the tutorial's final states.
* `cnn`: Kim (2014)'s sentence CNN on token ids: Embedding → parallel 1-D
  convolutions of several widths (3, 4, 5 words) → max over time → dropout →
  softmax. Each filter detects one phrase wherever it occurs.
* `fasttext`: Joulin et al. (2016)'s fastText classifier: the mean of unigram
  and bigram embeddings → softmax, a linear model over learned n-gram vectors.
* `tfidf`: unigram+bigram TF-IDF features (sublinear term counts, `1 + ln c`)
  → dropout → softmax (multinomial logistic regression). Linear models are the strong baseline on news topics,
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
from preprocessing.text import (
    SequenceFitter,
    TextStandardizer,
    TfIdfWeighting,
    load_stopwords,
    make_vectorizer,
)


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
    if config.lstm_pooling == "mean":
        # Every step's output, averaged over the real tokens (the mask drops padding).
        lstm = keras.layers.LSTM(config.lstm_units, return_sequences=True)
        x = keras.layers.Bidirectional(lstm, name="bilstm")(x)
        x = keras.layers.GlobalAveragePooling1D(name="mean_over_time")(x)
    else:
        x = keras.layers.Bidirectional(keras.layers.LSTM(config.lstm_units), name="bilstm")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(ids, probabilities, name="bilstm")


def build_cnn(vocab_size: int, sequence_length: int, num_classes: int, config: ModelConfig) -> keras.Model:
    """Kim-style convolutional network over word embeddings.

    Args:
      vocab_size: rows of the embedding (the adapted vocabulary size).
      sequence_length: token ids per document.
      num_classes: width of the softmax.
      config: embedding size, `cnn_filters` per width, `cnn_kernel_sizes`, dropout.

    Returns:
      A `keras.Model` mapping int64 ids `[batch, sequence_length]` to
      probabilities `[batch, num_classes]`.
    """
    ids = keras.Input(shape=(sequence_length,), dtype="int64", name="token_ids")
    # No mask: convolutions cannot take one, and max-over-time ignores the
    # padding's (learned, near-constant) response anyway.
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="embedding")(ids)
    x = keras.layers.SpatialDropout1D(config.dropout, name="embedding_dropout")(x)
    pooled = [
        keras.layers.GlobalMaxPooling1D(name=f"max_over_time_{width}")(
            keras.layers.Conv1D(config.cnn_filters, width, activation="relu", name=f"conv_{width}")(x)
        )
        for width in config.cnn_kernel_sizes
    ]
    x = keras.layers.Concatenate(name="phrases")(pooled) if len(pooled) > 1 else pooled[0]
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(ids, probabilities, name="cnn")


def build_fasttext(
    vocab_size: int, sequence_length: int, num_classes: int, config: ModelConfig
) -> keras.Model:
    """fastText: averaged unigram and bigram embeddings, then a softmax.

    Args:
      vocab_size: rows of the embedding (unigrams and bigrams share one vocabulary).
      sequence_length: n-gram ids per document.
      num_classes: width of the softmax.
      config: embedding size and dropout.

    Returns:
      A `keras.Model` mapping int64 n-gram ids `[batch, sequence_length]` to
      probabilities `[batch, num_classes]`.
    """
    ids = keras.Input(shape=(sequence_length,), dtype="int64", name="ngram_ids")
    x = keras.layers.Embedding(vocab_size, config.embedding_dim, name="embedding")(ids)
    x = NgramMean(name="mean_embedding")(x, ids)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    probabilities = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(ids, probabilities, name="fasttext")


class NgramMean(keras.layers.Layer):
    """The mean of a document's n-gram embeddings, padding (id 0) left out.

    Keras's masked average divides by zero for a document with no n-grams at
    all (an empty text, or only stopwords) and answers NaN; this one answers
    the zero vector, so the model falls back to its bias (the class prior).
    """

    def call(self, embeddings, ids):
        present = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(ids, 0), embeddings.dtype), -1)
        total = keras.ops.sum(embeddings * present, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(present, axis=1), 1.0)

    def compute_output_shape(self, embeddings_shape, ids_shape):
        return (embeddings_shape[0], embeddings_shape[2])


# Builders of the networks that read padded token ids, by `model.arch`.
_SEQUENCE_BUILDERS = {"bilstm": build_bilstm, "cnn": build_cnn, "fasttext": build_fasttext}


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
        self.weighting: TfIdfWeighting | None = None
        self.standardizer = TextStandardizer(load_stopwords(preprocessing.stopwords), name="standardizer")
        if model.arch in _SEQUENCE_BUILDERS:
            # fastText reads unigrams and bigrams; the others read words in order.
            ngrams = model.ngrams if model.arch == "fasttext" else None
            self.vectorizer = make_vectorizer(preprocessing.max_tokens, "int", ngrams=ngrams)
            self.fitter = SequenceFitter(
                preprocessing.sequence_length, preprocessing.padding, preprocessing.truncating, name="fitter"
            )
            self._sequence_length = preprocessing.sequence_length
        else:
            self.vectorizer = make_vectorizer(model.tfidf_max_tokens, "count", ngrams=model.ngrams)
            self.fitter = None
            self.weighting = TfIdfWeighting(model.tfidf_sublinear_tf, name="tfidf_weighting")
        self.network: keras.Model | None = None

    def adapt(self, texts: tf.data.Dataset) -> None:
        """Learns the vocabulary (and IDF weights) from raw training texts, then builds the network."""
        # Cached: the TF-IDF weighting reads the standardised texts a second time.
        standardized = texts.map(self.standardizer, num_parallel_calls=tf.data.AUTOTUNE).cache()
        self.vectorizer.adapt(standardized)
        if self.weighting is not None:
            self.weighting.adapt(standardized.map(self.vectorizer, num_parallel_calls=tf.data.AUTOTUNE))
        self.network = self.build_network(self._model_config)

    def build_network(self, model: ModelConfig) -> keras.Model:
        """A fresh, untrained network of `model`'s sizes for the adapted preprocessing.

        The tuner calls this once per trial; `model.arch` (and so the
        features) must be this classifier's.

        Raises:
          ValueError: `model.arch` is not this classifier's architecture.
        """
        if model.arch != self.arch:
            raise ValueError(f"this classifier reads {self.arch} features, not {model.arch}.")
        vocab_size = self.vectorizer.vocabulary_size()
        if self.arch in _SEQUENCE_BUILDERS:
            return _SEQUENCE_BUILDERS[self.arch](
                vocab_size, self._sequence_length, len(self.label_names), model
            )
        return build_tfidf_linear(vocab_size, len(self.label_names), model)

    def trackables(self) -> list[keras.layers.Layer]:
        """The layers an export must track: lookup tables, IDF weights and network weights."""
        layers = [self.standardizer, self.vectorizer, self.fitter, self.weighting, self.network]
        return [layer for layer in layers if layer is not None]

    def features(self, texts: tf.Tensor) -> tf.Tensor:
        """Raw `tf.string` `[batch]` → the network's input features."""
        tokens = self.vectorizer(self.standardizer(texts))
        if self.weighting is not None:
            return self.weighting(tokens)
        return self.fitter(tokens) if self.fitter is not None else tokens

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        """Raw `tf.string` `[batch]` → probabilities float32 `[batch, classes]`."""
        if self.network is None:
            raise RuntimeError("TextClassifier.adapt() must run before the classifier is called")
        return self.network(self.features(texts), training=False)


class EnsembleClassifier:
    """The mean of several trained classifiers' probabilities: one graph, every member's preprocessing.

    Members over the same labels that err on different documents (a linear
    TF-IDF model and an embedding model, say) average to fewer errors than
    either; the export runs all of them on each request.

    Args:
      members: trained classifiers with the same `label_names`.

    Raises:
      ValueError: fewer than two members, or members with different labels.
    """

    arch = "ensemble"

    def __init__(self, members: list[TextClassifier]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, received {len(members)}.")
        if any(member.label_names != members[0].label_names for member in members):
            raise ValueError("ensemble members must share the same label names in the same order.")
        self.members = list(members)
        self.label_names = list(members[0].label_names)

    def trackables(self) -> list[keras.layers.Layer]:
        """Every member's layers."""
        return [layer for member in self.members for layer in member.trackables()]

    def __call__(self, texts: tf.Tensor) -> tf.Tensor:
        """Raw `tf.string` `[batch]` → the members' mean probabilities `[batch, classes]`."""
        return tf.add_n([member(texts) for member in self.members]) / len(self.members)
