"""The export is atomic: a run stopped mid-export leaves no version directory, and a rerun is clean.

A real `textserve train` process is killed (SIGKILL) while its hidden staging
directory holds a SavedModel, i.e. mid-export; an exception or Ctrl-C inside
the export removes the staging directory (the `StagedExport` test).
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO_ROOT, TINY_OVERRIDES

pytestmark = pytest.mark.e2e


def _start_train(corpus, run):
    sets = [arg for override in TINY_OVERRIDES for arg in ("--set", override)]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "train",
            "--data",
            str(corpus),
            "--out",
            str(run),
            "--quiet",
            *sets,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


def _wait_for_staging(process, export_dir, timeout=240.0):
    """Polls until the run's staging directory holds a SavedModel (the export is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staged = list(export_dir.glob(".1.partial-*/saved_model.pb"))
        if staged:
            return staged[0].parent
        if process.poll() is not None:
            pytest.fail(f"train ended before its export started: {process.communicate()[1][-2000:]}")
        time.sleep(0.01)
    process.kill()
    pytest.fail("train did not reach its export in time")


def test_killed_export_leaves_no_version_and_the_rerun_is_clean(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    export_dir = run / "export"

    killed = _start_train(tiny_corpus, run)
    staging = _wait_for_staging(killed, export_dir)
    killed.kill()
    killed.wait(timeout=60)
    assert not (export_dir / "1").exists()  # nothing push or TF Serving would see as a version
    assert staging.is_dir()  # only the hidden staging directory is left behind

    rerun = _start_train(tiny_corpus, run)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    assert f"removed {staging}" in stdout
    assert sorted(p.name for p in export_dir.iterdir()) == ["1"]  # the stale staging is gone
    version = export_dir / "1"
    card = json.loads((version / "assets.extra" / "model_card.json").read_text())
    assert card["labels"] == ["cooking", "football", "markets", "space"]
    assert (version / "assets.extra" / "config.toml").is_file()
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_staged_export_refuses_an_existing_version_and_commits_only_complete_exports(tmp_path):
    from model.export import StagedExport

    version = tmp_path / "export" / "1"
    with pytest.raises(FileNotFoundError, match=r"saved_model\.pb"), StagedExport(version) as staged:
        (staged.path / "variables").mkdir()  # half an export
        staged.commit()
    assert not staged.path.exists() and not version.exists()  # leaving on an error cleans up
    version.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="refusing to overwrite"), StagedExport(version):
        pass
