"""`textserve tune`: a real KerasTuner search on the validation split whose TOML `train --config` takes."""

import json

import pytest

from tests.conftest import TINY_OVERRIDES

pytest.importorskip("keras_tuner")
pytestmark = pytest.mark.e2e  # trains a model per trial


def test_tune_writes_a_config_that_train_accepts(tiny_corpus, tmp_path):
    from pipeline.config import load_config
    from pipeline.train import train
    from pipeline.tune import SEARCH_SPACES, tune

    base = load_config(None, [*TINY_OVERRIDES, "model.arch=tfidf", "train.epochs=2"])
    result = tune(base, tiny_corpus, tmp_path / "tune", trials=2, log=lambda *_: None)

    trials = json.loads((tmp_path / "tune" / "trials.json").read_text())
    assert result.trials == len(trials) == 2
    assert result.best_loss == min(t["validation_loss"] for t in trials)
    assert result.best_accuracy == trials[0]["validation_accuracy"]
    assert set(result.best_values) == {key for key, _, _ in SEARCH_SPACES["tfidf"]}
    low, high = SEARCH_SPACES["tfidf"][1][2]
    assert low <= result.best_values["train.learning_rate"] <= high

    tuned = load_config(result.config_path)  # what `train --config` does
    assert tuned.model.arch == "tfidf"
    assert tuned.train.learning_rate == pytest.approx(result.best_values["train.learning_rate"])
    assert tuned.model.dropout == pytest.approx(result.best_values["model.dropout"])
    assert (tuned.data, tuned.split, tuned.preprocessing) == (base.data, base.split, base.preprocessing)
    run = train(tuned, tiny_corpus, tmp_path / "run", verbose=0, log=lambda *_: None)
    test_ids = json.loads((tmp_path / "run" / "splits.json").read_text())["test"]
    assert run.metrics["test"]["count"] == len(test_ids) > 0  # trained and evaluated on the tuned config
