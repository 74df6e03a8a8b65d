"""Every architecture: raw strings in, the same signatures out, and an export that answers as trained."""

import numpy as np
import pytest
import tensorflow as tf

from model.config import ModelConfig
from model.export import ExportedModel, export
from model.network import TextClassifier
from preprocessing.config import PreprocessingConfig

pytestmark = pytest.mark.e2e  # each test trains small networks

LABELS = ["markets", "sport"]
TEXTS = [
    "Shares rose as investors bought bank stocks",
    "The striker scored a late goal in the cup final",
    "Bond yields fell and the dividend was raised",
    "The keeper saved a penalty in the league match",
] * 4
Y = np.array([0, 1, 0, 1] * 4)


def _trained(arch: str) -> TextClassifier:
    preprocessing = PreprocessingConfig(max_tokens=60, sequence_length=12)
    classifier = TextClassifier(LABELS, preprocessing, ModelConfig(arch=arch, embedding_dim=8, cnn_filters=4))
    classifier.adapt(tf.data.Dataset.from_tensor_slices(TEXTS).batch(8))
    network = classifier.network
    network.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    network.fit(classifier.features(tf.constant(TEXTS)), Y, epochs=2, verbose=0)
    return classifier


@pytest.mark.parametrize("arch", ["cnn", "fasttext"])
def test_architecture_exports_raw_string_signatures_that_match_the_trained_model(arch, tmp_path):
    classifier = _trained(arch)
    queries = ["investors bought shares", "a goal in the final", ""]
    expected = classifier(tf.constant(queries)).numpy()
    assert expected.shape == (3, 2)
    np.testing.assert_allclose(expected.sum(axis=1), 1.0, rtol=1e-5)

    export(classifier, tmp_path / "1")
    reloaded = ExportedModel(tmp_path)
    outputs = reloaded.predict(queries)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    assert reloaded.label_names == LABELS
    assert set(outputs) == {"probabilities", "label", "class_id", "score"}


def test_fasttext_reads_unigrams_and_bigrams_and_cnn_every_kernel_width():
    fasttext = _trained("fasttext")
    vocabulary = fasttext.vectorizer.get_vocabulary()
    assert "striker scored" in vocabulary and "striker" in vocabulary
    cnn = _trained("cnn")
    widths = sorted(layer.kernel_size[0] for layer in cnn.network.layers if layer.name.startswith("conv_"))
    assert widths == [3, 4, 5]


def test_build_network_gives_a_fresh_network_of_new_sizes_and_refuses_another_arch():
    classifier = _trained("cnn")
    wider = classifier.build_network(ModelConfig(arch="cnn", embedding_dim=8, cnn_filters=6))
    assert wider.get_layer("conv_3").filters == 6 and wider is not classifier.network
    with pytest.raises(ValueError, match="reads cnn features, not bilstm"):
        classifier.build_network(ModelConfig(arch="bilstm"))


def test_ensemble_exports_one_graph_that_averages_its_members(tmp_path):
    from model.network import EnsembleClassifier

    members = [_trained("fasttext"), _trained("cnn")]
    ensemble = EnsembleClassifier(members)
    queries = ["investors bought shares", "a goal in the final"]
    each = [member(tf.constant(queries)).numpy() for member in members]
    export(ensemble, tmp_path / "1")
    outputs = ExportedModel(tmp_path).predict(queries)
    np.testing.assert_allclose(outputs["probabilities"], (each[0] + each[1]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="at least two members"):
        EnsembleClassifier(members[:1])


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_bilstm_output_does_not_depend_on_how_much_padding_follows_the_text(pooling):
    from model.network import build_bilstm

    config = ModelConfig(embedding_dim=8, lstm_units=4, dense_units=4, lstm_pooling=pooling)
    short = build_bilstm(50, 12, 2, config)
    long = build_bilstm(50, 20, 2, config)
    long.set_weights(short.get_weights())  # the length sizes no weight
    text = [5, 6, 7, 8]
    padded_12 = np.array([text + [0] * 8])
    padded_20 = np.array([text + [0] * 16])
    np.testing.assert_allclose(short(padded_12).numpy(), long(padded_20).numpy(), atol=1e-6)
    # ...while the text itself matters: padding is ignored, tokens are not.
    other = np.array([[9, 9, 9, 9] + [0] * 8])
    assert np.abs(short(padded_12).numpy() - short(other).numpy()).max() > 1e-6
