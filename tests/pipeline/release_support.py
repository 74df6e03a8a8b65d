"""Shared by the tests/pipeline/test_release_*.py modules: a good model, push helpers, the CLI.

Two cheap models trained on the tiny corpus play the roles:

* `good_run`: TF-IDF, 11 of 12 right on the tiny test split; its config sets
  the floors to 0.8 so that it passes them;
* `tiny_run` (session fixture in tests/conftest.py): a two-epoch BiLSTM, clearly worse.

Most pushes skip infra validation (with a reason, as the CLI requires) so that
each test takes seconds. The tiny corpus's test split has about ten documents,
so pushes here lower `release.min_eval_docs` to 5 (TINY_GATE); the gate's own
tests check the default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import release
from pipeline.config import PipelineConfig, load_config
from tests.conftest import REPO_ROOT, TINY_OVERRIDES

TINY_GATE = "release.min_eval_docs=5"
GOOD_RUN_GATE = (TINY_GATE, "release.min_accuracy=0.8", "release.min_macro_f1=0.8")
REASON = "unit test: infra validation has its own tests"


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def good_run(tiny_corpus, tmp_path_factory):
    """A TF-IDF run on the tiny corpus (RunResult), trained once per test module."""
    from pipeline.train import train

    config = load_config(None, [*TINY_OVERRIDES, "model.arch=tfidf", *GOOD_RUN_GATE])
    return train(config, tiny_corpus, tmp_path_factory.mktemp("good") / "run", verbose=0, log=quiet)


def run_config(run, *settings) -> PipelineConfig:
    """The run's config with infra validation off, the tiny gate and `settings`."""
    return load_config(run.run_dir / "config.toml", ["release.infra_validation=false", TINY_GATE, *settings])


def push_run(run, base, *settings, force=False, reason=REASON, infra=False, eval_data=None, **overrides):
    """Pushes with the run's config plus `release.*` settings; infra validation off unless `infra`."""
    items = [TINY_GATE, *settings, *(f"release.{k}={v}" for k, v in overrides.items())]
    if not infra:
        items.insert(0, "release.infra_validation=false")
    config = load_config(run.run_dir / "config.toml", items)
    return release.push(run.run_dir, base, config, force=force, reason=reason, eval_data=eval_data, log=quiet)


def log_lines(base: Path) -> list[dict]:
    """The release log's records ([] when there is none)."""
    path = base / release.RELEASE_LOG
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.exists() else []


def numeric_dirs(base: Path) -> list[str]:
    """The version directories under `base`, as names."""
    return sorted(p.name for p in base.iterdir() if p.name.isdigit()) if base.exists() else []


def textserve_command() -> list[str]:
    """The `textserve` command line of this interpreter."""
    return [sys.executable, "-m", "pipeline.cli"]


def textserve(*args, timeout=600):
    """Runs `textserve ARGS` in a child process from the repository root."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [*textserve_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=env,
    )


class RunView:
    """The one field `push_run` needs from a RunResult, for a copied run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
