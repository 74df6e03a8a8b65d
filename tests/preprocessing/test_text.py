"""Text standardisation, stopwords and sequence fitting, on tiny literal inputs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from preprocessing import names
from preprocessing.text import (
    SequenceFitter,
    TextStandardizer,
    TfIdfWeighting,
    load_stopwords,
    make_vectorizer,
    normalize,
)


def _strings(tensor) -> list[str]:
    return [value.decode("utf-8") for value in tensor.numpy()]


def test_accented_words_survive_and_fold_to_one_token():
    standardizer = TextStandardizer([])
    vectorizer = make_vectorizer(10)
    texts = tf.constant(["Café", "CAFÉ", "café", "Cafe\u0301"])  # last one: combining accent (NFKC)
    vectorizer.adapt(standardizer(texts))
    ids = vectorizer(standardizer(texts)).to_list()
    assert _strings(standardizer(texts)) == ["café"] * 4
    assert ids[0] == ids[1] == ids[2] == ids[3] and len(ids[0]) == 1
    assert "café" in vectorizer.get_vocabulary() and "caf" not in vectorizer.get_vocabulary()


def test_markup_punctuation_and_stopwords_are_removed():
    standardizer = TextStandardizer(["the", "don't", "is"])
    out = _strings(
        standardizer(tf.constant(["The <b>market</b>, isn't it? Don't panic!", "ÜBER straße 2024"]))
    )
    assert out == ["market isnt it panic", "über strasse 2024"]


def test_other_scripts_are_kept():
    assert _strings(normalize(tf.constant(["Москва — ГОРОД; 東京"]))) == ["москва город 東京"]


def test_stopword_presets_and_files(tmp_path):
    english = load_stopwords("english")
    assert "the" in english and "market" not in english and len(english) > 100
    assert load_stopwords("none") == []
    custom = tmp_path / "words.txt"
    custom.write_text("# comment\nfoo\n\nbar\n", "utf-8")
    assert load_stopwords(str(custom)) == ["foo", "bar"]
    with pytest.raises(ValueError, match=r"preprocessing\.stopwords"):
        load_stopwords("klingon")


@pytest.mark.parametrize(
    "padding, truncating, expected",
    [
        ("post", "post", [[1, 2, 3], [4, 0, 0]]),
        ("pre", "post", [[1, 2, 3], [0, 0, 4]]),
        ("post", "pre", [[3, 4, 5], [4, 0, 0]]),
        ("pre", "pre", [[3, 4, 5], [0, 0, 4]]),
    ],
)
def test_sequence_fitter_sides(padding, truncating, expected):
    ids = tf.ragged.constant([[1, 2, 3, 4, 5], [4]], dtype=tf.int64)
    assert SequenceFitter(3, padding, truncating)(ids).numpy().tolist() == expected


def test_vectorizer_reserves_padding_and_oov():
    vectorizer = make_vectorizer(4)
    vectorizer.adapt(tf.constant(["a a a b b c"]))
    assert vectorizer.get_vocabulary() == [names.PAD_TOKEN, names.OOV_TOKEN, "a", "b"]
    assert vectorizer(tf.constant(["a c zz"])).to_list() == [[2, 1, 1]]


def _adapted_counts(corpus: list[str]):
    vectorizer = make_vectorizer(10, "count")
    vectorizer.adapt(tf.constant(corpus))
    return vectorizer, tf.data.Dataset.from_tensor_slices(corpus).batch(2).map(vectorizer)


def test_tfidf_weighting_learns_idf_and_damps_repeated_terms():
    corpus = ["a a a b", "b c", "c", "c d"]  # df: a 1, b 2, c 3, d 1 over 4 documents
    vectorizer, counts = _adapted_counts(corpus)
    column = {term: i for i, term in enumerate(vectorizer.get_vocabulary())}
    idf = {term: math.log(1 + 4 / (1 + df)) for term, df in {"a": 1, "b": 2, "c": 3, "d": 1}.items()}

    sublinear = TfIdfWeighting(sublinear_tf=True)
    sublinear.adapt(counts)
    row = sublinear(vectorizer(tf.constant(["a a a b zz"]))).numpy()[0]
    assert row[column["a"]] == pytest.approx((1 + math.log(3)) * idf["a"], rel=1e-6)
    assert row[column["b"]] == pytest.approx(idf["b"], rel=1e-6)
    assert row[column["c"]] == row[column["d"]] == 0.0  # absent terms weigh nothing
    assert row[column[names.OOV_TOKEN]] == pytest.approx(math.log(1 + 4 / 1), rel=1e-6)  # no OOV in training

    raw = TfIdfWeighting(sublinear_tf=False)
    raw.adapt(counts)
    assert raw(vectorizer(tf.constant(["a a a b"]))).numpy()[0][column["a"]] == pytest.approx(3 * idf["a"])


def test_tfidf_weighting_without_sublinear_counts_matches_keras_tf_idf():
    corpus = ["a a a b", "b c", "c", "c d"]
    vectorizer, counts = _adapted_counts(corpus)
    weighting = TfIdfWeighting(sublinear_tf=False)
    weighting.adapt(counts)
    keras_tfidf = keras.layers.TextVectorization(max_tokens=10, standardize=None, output_mode="tf_idf")
    keras_tfidf.adapt(tf.constant(corpus))
    assert keras_tfidf.get_vocabulary() == vectorizer.get_vocabulary()
    texts = tf.constant(["a a b c", "d d d"])
    ours, theirs = weighting(vectorizer(texts)).numpy(), keras_tfidf(texts).numpy()
    np.testing.assert_allclose(ours[:, 2:], theirs[:, 2:], rtol=1e-6)  # the terms (not padding or OOV)


def test_tfidf_weighting_refuses_an_empty_corpus():
    with pytest.raises(ValueError, match="at least one document"):
        TfIdfWeighting().adapt(tf.data.Dataset.from_tensor_slices(tf.zeros([0, 3])).batch(2))


@pytest.mark.parametrize(
    "layer",
    [TextStandardizer(["the", "a"]), SequenceFitter(7, "pre", "post"), TfIdfWeighting(sublinear_tf=False)],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert restored.get_config() == config


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="padding"):
        SequenceFitter(3, padding="middle")
    with pytest.raises(ValueError, match="length"):
        SequenceFitter(0)
    with pytest.raises(ValueError, match="max_tokens"):
        make_vectorizer(2)


def test_names_invariants():
    assert names.LABEL_KEY != names.TEXT_KEY
    assert names.CLASSIFY_INPUT == "inputs"  # TF Serving's Classify API reads this alias
    assert len(set(names.PREDICT_OUTPUTS)) == len(names.PREDICT_OUTPUTS)
    assert names.probability_key("sport") == "p_sport"
