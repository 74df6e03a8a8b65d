"""The frozen config: defaults, file and --set layering, validation, round trip."""

import dataclasses

import pytest

from pipeline.config import PipelineConfig, load_config, valid_keys

PUBLIC_KEYS = [
    "data.format",
    "data.text_column",
    "data.label_column",
    "split.seed",
    "preprocessing.max_tokens",
    "preprocessing.sequence_length",
    "preprocessing.stopwords",
    "model.arch",
    "train.epochs",
    "train.batch_size",
]


def test_defaults_are_the_tutorials():
    config = load_config()
    assert (config.preprocessing.max_tokens, config.preprocessing.sequence_length) == (5000, 200)
    assert (config.preprocessing.padding, config.preprocessing.truncating) == ("post", "post")
    # The BiLSTM's optimisation defaults moved (README "Training"): 20 epochs with
    # patience 4 and clipped gradients instead of the tutorial's 10 epochs.
    assert config.model.arch == "bilstm" and config.train.epochs == 20
    assert (config.train.early_stopping_patience, config.train.clipnorm) == (4, 1.0)
    assert (config.model.embedding_dim, config.model.lstm_units, config.model.dense_units) == (64, 64, 64)


def test_public_keys_exist():
    assert set(PUBLIC_KEYS) <= set(valid_keys())


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = 3\nbatch_size = 8\n[data]\ntext_column = ["title", "body"]\n')
    config = load_config(path, ["train.epochs=5", "data.label_column=2", "model.arch=tfidf"])
    assert config.train.epochs == 5 and config.train.batch_size == 8
    assert config.data.text_column == ("title", "body") and config.data.label_column == 2
    assert config.model.arch == "tfidf"


def test_architecture_defaults_apply_unless_set():
    assert load_config(None, ["model.arch=tfidf"]).train.learning_rate == 0.05
    assert load_config(None, ["model.arch=tfidf", "train.learning_rate=0.2"]).train.learning_rate == 0.2
    # The BiLSTM's batch of 16 is its own measured default; the others keep the 32 they were measured at.
    assert load_config(None, []).train.batch_size == 16
    assert {
        load_config(None, [f"model.arch={a}"]).train.batch_size for a in ("cnn", "fasttext", "tfidf")
    } == {32}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown config key `train.epoch`.*train\.epochs"):
        load_config(None, ["train.epoch=3"])
    with pytest.raises(ValueError, match=r"unknown config section \[trian\]"):
        load_config(None, ["trian.epochs=3"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=three", "train.epochs` must be of type int"),
        ("model.arch=transformer", "model.arch` must be one of"),
        ("split.test_fraction=0.7", "split.test_fraction` must be in"),
        ("data.header=yes", "data.header` must be true or false"),
        ("nodot=1", "section.key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_config(None, [override])


def test_toml_round_trip_and_frozen(tmp_path):
    config = load_config(None, ["model.arch=tfidf", "data.text_column=[1, 2]", "data.header=false"])
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 1  # type: ignore[misc]
    assert PipelineConfig().fingerprint() == load_config().fingerprint()


def test_every_architecture_has_defaults_that_only_apply_unless_set():
    from pipeline.config import ARCH_DEFAULTS, ARCHITECTURES

    assert set(ARCH_DEFAULTS) == set(ARCHITECTURES)
    cnn = load_config(None, ["model.arch=cnn"])
    assert cnn.preprocessing.sequence_length == ARCH_DEFAULTS["cnn"]["preprocessing.sequence_length"]
    assert cnn.model.cnn_kernel_sizes == (3, 4, 5)
    assert (
        load_config(
            None, ["model.arch=cnn", "preprocessing.sequence_length=50"]
        ).preprocessing.sequence_length
        == 50
    )
    fasttext = load_config(None, ["model.arch=fasttext"])
    assert (
        fasttext.model.ngrams == 2
        and fasttext.preprocessing.max_tokens > load_config().preprocessing.max_tokens
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.repeats=-1", "train.repeats` must be >= 0"),
        ("model.cnn_kernel_sizes=[3, 0]", "model.cnn_kernel_sizes` must be positive integers"),
        ("model.dropout=1.0", r"model.dropout` must be in \[0, 1\)"),
    ],
)
def test_new_keys_are_validated(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_repeats_and_kernel_sizes_round_trip(tmp_path):
    config = load_config(None, ["model.arch=cnn", "model.cnn_kernel_sizes=[2, 3]", "train.repeats=3"])
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config and config.model.cnn_kernel_sizes == (2, 3)


def test_ensemble_members_take_their_own_defaults_unless_the_run_sets_a_key():
    from pipeline.config import ARCH_DEFAULTS, member_config

    ensemble = load_config(
        None, ["model.arch=ensemble", "model.ensemble_members=['tfidf', 'cnn']", "train.epochs=4"]
    )
    tfidf, cnn = (member_config(ensemble, arch) for arch in ensemble.model.ensemble_members)
    assert (tfidf.model.arch, cnn.model.arch) == ("tfidf", "cnn")
    assert tfidf.train.learning_rate == ARCH_DEFAULTS["tfidf"]["train.learning_rate"]
    assert cnn.preprocessing.max_tokens == ARCH_DEFAULTS["cnn"]["preprocessing.max_tokens"]
    assert tfidf.train.epochs == cnn.train.epochs == 4  # set for the ensemble: every member
    with pytest.raises(ValueError, match=r"model\.ensemble_members` must be one of"):
        load_config(None, ["model.arch=ensemble", "model.ensemble_members=['tfidf', 'ensemble']"])


def test_a_setting_the_architecture_does_not_read_is_named():
    from pipeline.config import ARCH_SETTINGS, ModelConfig, load_config, unread_overrides

    overrides = ["model.arch=tfidf", "preprocessing.max_tokens=50", "train.epochs=1", "model.ngrams=1"]
    assert unread_overrides(load_config(None, overrides), overrides) == ["preprocessing.max_tokens"]
    overrides = ["model.lstm_units=8", "model.cnn_filters=16"]
    assert unread_overrides(load_config(None, overrides), overrides) == ["model.cnn_filters"]
    assert unread_overrides(load_config(None, ["model.arch=ensemble"]), ["model.lstm_units=8"]) == []
    # Every sizing setting named is a real key of the config.
    known = {f"model.{name}" for name in ModelConfig.__dataclass_fields__} | {
        f"preprocessing.{name}" for name in ("max_tokens", "sequence_length", "padding", "truncating")
    }
    assert set().union(*ARCH_SETTINGS.values()) <= known
