"""Fixtures shared by every test tier: data locations and trained exports.

Two trained models are built once per session and reused:

* `tiny_run`: a BiLSTM trained for two epochs on a small synthetic corpus
  (seconds), for tests that need a real export but not a good one;
* `bbc_run`: the TF-IDF model trained on the real BBC News data (about 20 s),
  for tests that check real accuracy and serve real articles.

The BBC data is read from `<repo>/../shared/data/bbc` or `$TEXTSERVE_BBC_DIR`;
tests that need it are skipped, with the reason, where neither exists.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]

# A small vocabulary per class; documents mix class words with shared filler.
_CLASS_WORDS = {
    "cooking": ["oven", "recipe", "flour", "butter", "garlic", "simmer", "sauce", "bake", "onion", "pepper"],
    "football": [
        "goal",
        "striker",
        "penalty",
        "league",
        "referee",
        "keeper",
        "midfield",
        "match",
        "tackle",
        "cup",
    ],
    "markets": [
        "shares",
        "investors",
        "profit",
        "bond",
        "inflation",
        "bank",
        "stocks",
        "dividend",
        "trading",
        "rates",
    ],
    "space": [
        "rocket",
        "orbit",
        "astronaut",
        "launch",
        "planet",
        "telescope",
        "moon",
        "satellite",
        "mission",
        "galaxy",
    ],
}
_FILLER = ["the", "report", "said", "today", "new", "people", "would", "also", "year", "week", "time"]


def bbc_dir() -> Path | None:
    """The BBC News folder on this machine, or None."""
    configured = os.environ.get("TEXTSERVE_BBC_DIR")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "bbc"
    return candidate if (candidate / "business").is_dir() else None


@pytest.fixture(scope="session")
def bbc_path() -> Path:
    path = bbc_dir()
    if path is None:
        pytest.skip("BBC News data not found at ../shared/data/bbc and TEXTSERVE_BBC_DIR is not set")
    return path


def write_tiny_corpus(root: Path, per_class: int = 24, seed: int = 7) -> Path:
    """Writes a class-folder corpus of synthetic documents (distinct class vocabularies)."""
    rng = random.Random(seed)
    for label, words in _CLASS_WORDS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tokens = [
                rng.choice(words) if rng.random() < 0.6 else rng.choice(_FILLER)
                for _ in range(rng.randint(8, 30))
            ]
            (root / label / f"{i:03d}.txt").write_text(" ".join(tokens).capitalize() + ".\n", "utf-8")
    (root / "README.TXT").write_text("Synthetic corpus for tests.\n", "utf-8")
    return root


TINY_OVERRIDES = [
    "preprocessing.max_tokens=200",
    "preprocessing.sequence_length=24",
    "model.embedding_dim=8",
    "model.lstm_units=8",
    "model.dense_units=8",
    "train.epochs=2",
    "train.batch_size=16",
    "export.model_name=tiny",
]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def tiny_run(tiny_corpus, tmp_path_factory):
    """A run directory with a tiny BiLSTM export (RunResult)."""
    from pipeline.config import load_config
    from pipeline.train import train

    config = load_config(None, TINY_OVERRIDES)
    return train(
        config, tiny_corpus, tmp_path_factory.mktemp("tiny_run") / "run", verbose=0, log=lambda *_: None
    )


@pytest.fixture(scope="session")
def bbc_run(bbc_path, tmp_path_factory):
    """A run directory with the TF-IDF model trained on the real BBC data (RunResult)."""
    from pipeline.config import load_config
    from pipeline.train import train

    config = load_config(None, ["model.arch=tfidf"])
    return train(config, bbc_path, tmp_path_factory.mktemp("bbc_run") / "run", verbose=0, log=lambda *_: None)


# --- Test tiers ---------------------------------------------------------------
# Every test gets exactly one tier marker, from what it needs, so that
# `pytest -m unit` (seconds, no training, no server) can run on every save:
#   e2e       trains a model (uses a training fixture), runs `textserve` as a
#             process, or lives in tests/e2e/ (mark such tests @pytest.mark.e2e);
#   contract  checks TF Serving's contract on its own test models (tests/serving/
#             tests using the `tfs_testdata` fixture), mostly through a server process;
#   unit      everything else.
# `pytest -q` (the README's command) runs all three.
# Fixtures that train; a test that trains by itself carries @pytest.mark.e2e.
TRAINING_FIXTURES = {"tiny_run", "bbc_run", "good_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        trains = bool(TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())))
        if trains or item.get_closest_marker("e2e") or "e2e" in path.parts:
            tier = "e2e"
        elif "serving" in path.parts and "tfs_testdata" in getattr(item, "fixturenames", ()):
            tier = "contract"
        else:
            tier = "unit"
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
