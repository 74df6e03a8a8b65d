"""Text standardisation, stopwords and sequence fitting, on tiny literal inputs."""

import keras
import pytest
import tensorflow as tf

from preprocessing import names
from preprocessing.text import SequenceFitter, TextStandardizer, load_stopwords, make_vectorizer, normalize


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


@pytest.mark.parametrize(
    "layer",
    [TextStandardizer(["the", "a"]), SequenceFitter(7, "pre", "post")],
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
