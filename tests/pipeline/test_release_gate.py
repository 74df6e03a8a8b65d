"""The release gate: never on training data, intervals instead of noise, and its refusals.

The candidate and the served baseline are scored on the candidate's test
documents minus those the baseline trained on (or on --eval-data); both
models' training sets come from the fingerprints in their model cards.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from pipeline import release
from pipeline.config import DataConfig, ReleaseConfig, load_config
from pipeline.data import Dataset, ingest
from pipeline.release.gate import EvaluationSet, compare
from pipeline.splits import CARD_KEY
from tests.conftest import TINY_OVERRIDES, write_tiny_corpus
from tests.pipeline.release_support import GOOD_RUN_GATE, RunView, good_run, numeric_dirs, push_run, quiet

__all__ = ["good_run"]  # a fixture, used by name


def _train(corpus, out, *overrides):
    from pipeline.train import train

    config = load_config(None, [*TINY_OVERRIDES, "model.arch=tfidf", *GOOD_RUN_GATE, *overrides])
    return train(config, corpus, out, verbose=0, log=quiet)


@pytest.fixture(scope="module")
def corpus400(tmp_path_factory):
    """400 synthetic documents: enough that runs split with two seeds share some test documents."""
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus400"), per_class=100, seed=3)


@pytest.fixture(scope="module")
def seed42_run(corpus400, tmp_path_factory):
    return _train(corpus400, tmp_path_factory.mktemp("seed42") / "run")


@pytest.fixture(scope="module")
def seed7_run(corpus400, tmp_path_factory):
    """The same data and model as seed42_run, split with split.seed=7."""
    return _train(corpus400, tmp_path_factory.mktemp("seed7") / "run", "split.seed=7")


def _splits(run) -> dict:
    return json.loads((run.run_dir / "splits.json").read_text())


@pytest.mark.e2e  # trains two runs
def test_baseline_is_never_scored_on_its_own_training_documents(seed42_run, seed7_run, tmp_path):
    base = tmp_path / "models"
    push_run(seed42_run, base)
    result = push_run(seed7_run, base, "release.min_eval_docs=1")
    test, baseline_train = set(_splits(seed7_run)["test"]), set(_splits(seed42_run)["train"])
    shared, excluded = len(test - baseline_train), len(test & baseline_train)
    assert excluded > 0  # the unfair case of issue 10 happens here
    comparison = result.comparison
    assert len(comparison.floor_set.data.ids) == len(test)
    assert sorted(comparison.comparison_set.data.ids) == sorted(test - baseline_train)
    assert comparison.comparison_set.excluded == {"version 1 trained on them": excluded}
    assert comparison.baseline["count"] == comparison.candidate_on_shared["count"] == shared
    gate = result.record["gate"]
    assert (
        f"{shared} documents ({excluded} excluded: version 1 trained on them)" == gate["comparison_documents"]
    )
    low, high = gate["intervals"]["shared"]["difference"]["accuracy"]
    assert low <= high


@pytest.mark.e2e  # trains two runs
def test_too_few_shared_documents_is_a_refusal_naming_the_counts(seed42_run, seed7_run, tmp_path):
    base = tmp_path / "models"
    push_run(seed42_run, base)
    with pytest.raises(release.GateRefused) as refused:
        push_run(seed7_run, base, "release.min_eval_docs=30")
    message = str(refused.value)
    shared = len(set(_splits(seed7_run)["test"]) - set(_splits(seed42_run)["train"]))
    assert f"only {shared} documents" in message and "release.min_eval_docs is 30" in message
    assert "--eval-data PATH" in message and "version 1 trained on them" in message
    assert numeric_dirs(base) == ["1"]


def test_intervals_keep_noise_from_flipping_the_decision():
    labels = ["a", "b"] * 20
    data = Dataset([str(i) for i in range(40)], [f"text {i}" for i in range(40)], labels)
    one_error = ["b" if i == 0 else label for i, label in enumerate(labels)]
    evaluation = EvaluationSet(data, "test")
    thresholds = ReleaseConfig(min_accuracy=0.5, min_macro_f1=0.5, max_regression=0.01, min_eval_docs=10)
    small = compare(
        one_error, evaluation, ["a", "b"], thresholds, baseline_version=1,
        comparison_set=evaluation, shared_predictions=(one_error, labels),
    )  # fmt: skip
    assert small.passed  # 0.975 vs 1.000 on 40 documents: within the noise
    low, high = small.intervals["shared"]["difference"]["accuracy"]
    assert low < -0.01 <= high

    many = ["a", "b"] * 200
    big = Dataset([str(i) for i in range(400)], [f"t{i}" for i in range(400)], many)
    worse = ["b" if i % 10 == 0 else label for i, label in enumerate(many)]
    big_set = EvaluationSet(big, "test")
    clear = compare(
        worse, big_set, ["a", "b"], thresholds, baseline_version=1,
        comparison_set=big_set, shared_predictions=(worse, many),
    )  # fmt: skip
    assert not clear.passed and any("with 95% confidence" in f for f in clear.failures)
    accuracy_low, accuracy_high = clear.intervals["floor"]["accuracy"]  # Wilson interval
    assert accuracy_low < clear.candidate["accuracy"] < accuracy_high


def _strip_fingerprints(run_dir):
    card_path = run_dir / "export" / "1" / "assets.extra" / "model_card.json"
    card = json.loads(card_path.read_text())
    del card[CARD_KEY]
    card_path.write_text(json.dumps(card))


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def test_candidate_without_fingerprints_is_refused_and_eval_data_suggested(good_run, tiny_corpus, tmp_path):
    run = tmp_path / "old-run"
    shutil.copytree(good_run.run_dir, run)
    _strip_fingerprints(run)
    with pytest.raises(release.GateRefused) as refused:
        push_run(RunView(run), tmp_path / "models")
    assert "records no training fingerprints" in str(refused.value) and "--eval-data PATH" in str(
        refused.value
    )
    assert not (tmp_path / "models").exists()  # a failed push leaves nothing behind

    holdout = write_tiny_corpus(tmp_path / "holdout", per_class=6, seed=99)
    data = ingest(holdout, DataConfig())
    csv_path = _write_csv(tmp_path / "holdout.csv", zip(data.texts, data.labels))
    logged = []
    pushed = release.push(
        run,
        tmp_path / "models",
        load_config(run / "config.toml", ["release.infra_validation=false"]),
        reason="test",
        eval_data=csv_path,
        log=logged.append,
    )
    assert pushed.version == 1 and any("cannot be checked against its training data" in m for m in logged)
    assert pushed.record["evaluation"]["source"] == f"--eval-data {csv_path}"


def test_eval_data_sharing_training_documents_is_warned_and_excluded(good_run, tiny_corpus, tmp_path):
    data = ingest(tiny_corpus, DataConfig())
    train_ids = _splits(good_run)["train"][:7]
    trained = data.subset(train_ids)
    fresh = ingest(write_tiny_corpus(tmp_path / "fresh", per_class=5, seed=123), DataConfig())
    rows = list(zip(trained.texts, trained.labels)) + list(zip(fresh.texts, fresh.labels))
    csv_path = _write_csv(tmp_path / "eval.csv", rows)
    logged = []
    config = load_config(good_run.run_dir / "config.toml", ["release.infra_validation=false"])
    result = release.push(
        good_run.run_dir, tmp_path / "m", config, reason="t", eval_data=csv_path, log=logged.append
    )
    floor = result.comparison.floor_set
    assert floor.excluded.get("the candidate trained on them") == 7
    assert len(floor.data.ids) == ingest(csv_path, DataConfig()).report["records_kept"] - 7
    assert any("the candidate trained on 7 of the" in m for m in logged)


def test_baseline_with_another_label_set_is_refused_with_both_lists(good_run, tiny_corpus, tmp_path):
    three = tmp_path / "three"
    shutil.copytree(tiny_corpus, three)
    shutil.rmtree(three / "space")
    other = _train(three, tmp_path / "three-run")
    base = tmp_path / "models"
    push_run(other, base)
    with pytest.raises(release.GateRefused) as refused:
        push_run(good_run, base)
    message = str(refused.value)
    assert "version 1 has other labels than the candidate" in message
    assert "['cooking', 'football', 'markets']" in message
    assert "['cooking', 'football', 'markets', 'space']" in message
    assert numeric_dirs(base) == ["1"]
