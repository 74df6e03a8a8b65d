"""Content-hashed splits (stable under additions, seeded, reported) and training fingerprints."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from pipeline.config import DataConfig, SplitConfig
from pipeline.data import Dataset, ingest
from pipeline.errors import DataError
from pipeline.evaluate import leakage_report
from pipeline.splits import (
    CARD_KEY,
    FingerprintSet,
    class_balance,
    fingerprints,
    split_ids,
    splits_record,
    training_fingerprints,
)
from tests.conftest import REPO_ROOT


def _synthetic(per_class: int, classes: int = 5, seed: int = 0, prefix: str = "") -> Dataset:
    rng = random.Random(seed)
    ids, texts, labels = [], [], []
    for c in range(classes):
        for i in range(per_class):
            ids.append(f"{prefix}c{c}/{i}")
            texts.append(
                f"class {c} document {prefix}{i} " + " ".join(rng.choice("abcdefgh") for _ in range(12))
            )
            labels.append(f"class{c}")
    return Dataset(ids, texts, labels)


def _assignment(dataset: Dataset, splits: dict) -> dict[str, str]:
    text_of = dict(zip(dataset.ids, dataset.texts))
    return {text_of[doc_id]: name for name, ids in splits.items() for doc_id in ids}


def test_split_is_seeded_disjoint_and_complete(tiny_corpus):
    data = ingest(tiny_corpus, DataConfig())
    first = split_ids(data, SplitConfig(seed=3))
    assert first == split_ids(data, SplitConfig(seed=3))
    assert first != split_ids(data, SplitConfig(seed=4))
    all_ids = first["train"] + first["validation"] + first["test"]
    assert sorted(all_ids) == sorted(data.ids) and len(set(all_ids)) == len(all_ids)


def test_adding_documents_never_moves_existing_ones_and_ids_do_not_matter():
    base = _synthetic(200)
    before = _assignment(base, split_ids(base, SplitConfig(seed=11)))
    extra = _synthetic(150, seed=5, prefix="new")
    grown = Dataset(base.ids + extra.ids, base.texts + extra.texts, base.labels + extra.labels)
    after = _assignment(grown, split_ids(grown, SplitConfig(seed=11)))
    assert all(after[text] == split for text, split in before.items())
    # Renamed files, reordered rows: the split follows the text alone.
    renamed = Dataset([f"x{i}" for i in range(len(base.ids))][::-1], base.texts[::-1], base.labels[::-1])
    assert _assignment(renamed, split_ids(renamed, SplitConfig(seed=11))) == before


def test_two_runs_with_the_same_seed_agree_on_shared_documents():
    full = _synthetic(200)
    half = full.subset(full.ids[::2])
    whole = _assignment(full, split_ids(full, SplitConfig(seed=42)))
    part = _assignment(half, split_ids(half, SplitConfig(seed=42)))
    assert all(whole[text] == split for text, split in part.items())
    other_seed = _assignment(full, split_ids(full, SplitConfig(seed=7)))
    assert sum(whole[t] != other_seed[t] for t in whole) > len(whole) // 10


def test_normalised_content_decides_the_split():
    texts = ["Shares rose  sharply\ttoday", "shares ROSE sharply today"]
    data = Dataset(["a", "b"], texts, ["x", "x"])
    config = SplitConfig(seed=1, validation_fraction=0.45, test_fraction=0.45)
    try:
        splits = split_ids(data, config)
    except DataError:  # both land in one split, leaving others empty: that is the point
        splits = None
    if splits is not None:
        assert _assignment(data, splits)[texts[0]] == _assignment(data, splits)[texts[1]]
    assert fingerprints(texts)[0] == fingerprints(texts)[1]


def test_class_balance_is_close_on_real_sizes_and_reported():
    data = _synthetic(400)
    config = SplitConfig(seed=42)
    splits = split_ids(data, config)
    balance = class_balance(data, splits)
    assert not balance["missing"]  # every class in every split
    # As close as a hash allows: each class's count per split is within 4 binomial
    # standard deviations of the configured fraction of that class.
    fraction = {"train": 0.8, "validation": 0.1, "test": 0.1}
    for name, counts in balance["counts"].items():
        for count in counts.values():
            expected, sd = 400 * fraction[name], (400 * fraction[name] * (1 - fraction[name])) ** 0.5
            assert abs(count - expected) < 4 * sd, (name, count)
    for name, ids in splits.items():
        labels = data.subset(ids).labels
        assert balance["counts"][name] == {label: labels.count(label) for label in sorted(set(data.labels))}
    fractions = {name: len(ids) / len(data.ids) for name, ids in splits.items()}
    assert abs(fractions["test"] - 0.1) < 0.02 and abs(fractions["validation"] - 0.1) < 0.02


def test_small_classes_missing_from_a_split_are_reported(tiny_corpus):
    data = ingest(tiny_corpus, DataConfig())
    splits = split_ids(data, SplitConfig(seed=3))
    record = splits_record(data, splits, SplitConfig(seed=3))
    label_of = dict(zip(data.ids, data.labels))
    expected = [
        {"split": name, "label": label}
        for name in ("train", "validation", "test")
        for label in data.label_names
        if not any(label_of[i] == label for i in splits[name])
    ]
    assert record["class_balance"]["missing"] == expected
    assert record["seed"] == 3 and {"train", "validation", "test"} <= set(record)


def test_an_empty_split_is_an_error_naming_the_fractions():
    data = _synthetic(1, classes=3)
    with pytest.raises(DataError, match=r"came out empty .*split\.test_fraction"):
        split_ids(data, SplitConfig(seed=0, validation_fraction=0.01, test_fraction=0.01))


def test_fingerprint_set_is_exact_and_round_trips_through_the_card():
    data = _synthetic(300)
    entry = training_fingerprints(data.texts[:1000])
    json.dumps(entry)  # JSON-ready
    back = FingerprintSet.from_card({CARD_KEY: entry})
    assert back is not None and len(back) == entry["count"] == 1000
    seen = back.contains(data.texts)
    assert seen[:1000].all() and not seen[1000:].any()
    assert back.contains(["  " + data.texts[0].upper() + " "]).all()  # same normalised content
    assert FingerprintSet.from_card({}) is None
    broken = {**entry, "data": base64.b64encode(b"not zlib").decode()}
    with pytest.raises(ValueError, match="corrupt"):
        FingerprintSet.from_card({CARD_KEY: broken})


def test_fingerprint_size_for_100k_documents_is_about_7_bytes_each():
    values = np.random.default_rng(0).integers(0, 2**63, 100_000, dtype=np.uint64) * np.uint64(2)
    entry = FingerprintSet(values).to_card()
    assert entry["count"] == 100_000
    assert len(entry["data"]) < 1_000_000  # the docstring states ~956 KB of base64
    assert (FingerprintSet.from_card({CARD_KEY: entry}).values == np.unique(values)).all()


def test_run_records_splits_balance_and_training_fingerprints(tiny_run):
    splits = json.loads((tiny_run.run_dir / "splits.json").read_text())
    assert splits["method"].startswith("content hash") and "class_balance" in splits
    card = json.loads((tiny_run.version_dir / "assets.extra" / "model_card.json").read_text())
    trained = FingerprintSet.from_card(card)
    data = ingest(card["data"]["source"], DataConfig())
    assert len(trained) == len(splits["train"])
    assert trained.contains(data.subset(splits["train"]).texts).all()
    assert not trained.contains(data.subset(splits["test"] + splits["validation"]).texts).any()


def test_leakage_report_counts_training_documents_and_scores_the_rest():
    data = _synthetic(50)
    card = {CARD_KEY: training_fingerprints(data.texts[:200])}
    predicted = list(data.labels)
    predicted[-1] = "class0"  # one mistake, on a document the model never saw
    report = leakage_report(card, data.texts, data.labels, predicted, sorted(set(data.labels)))
    assert report["known"] and report["trained_on"] == 200 and report["unseen"] == 50
    assert report["unseen_metrics"]["count"] == 50 and report["unseen_metrics"]["accuracy"] == 49 / 50
    assert "trained on 200 of these 250 documents" in report["note"]
    older = leakage_report({}, data.texts, data.labels, predicted, sorted(set(data.labels)))
    assert not older["known"] and "no training fingerprints" in older["note"]


def test_evaluate_warns_how_much_of_the_data_the_model_trained_on(tiny_run, tiny_corpus, tmp_path):
    out = tmp_path / "metrics.json"
    evaluated = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "evaluate",
            "--model",
            str(tiny_run.version_dir.parent),
            "--data",
            str(tiny_corpus),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    trained = len(json.loads((tiny_run.run_dir / "splits.json").read_text())["train"])
    assert f"warning: the model trained on {trained} of these 96 documents" in evaluated.stdout
    assert f"the {96 - trained} documents it never trained on" in evaluated.stdout
    leakage = json.loads(out.read_text())["leakage"]
    assert leakage["trained_on"] == trained and leakage["unseen_metrics"]["count"] == 96 - trained
