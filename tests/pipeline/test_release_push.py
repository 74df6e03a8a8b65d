"""`textserve push`: gate thresholds, atomic versioned publish, lineage, and faults (see release_support)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from pipeline import release
from pipeline.config import load_config
from pipeline.errors import ReleaseError
from preprocessing import names
from tests.conftest import REPO_ROOT
from tests.pipeline.release_support import (
    REASON,
    TINY_GATE,
    RunView,
    good_run,
    log_lines,
    numeric_dirs,
    push_run,
    quiet,
    run_config,
    textserve,
)

__all__ = ["good_run"]  # a fixture, used by name


# --- Publishing and lineage -------------------------------------------------------------------


def test_two_pushes_give_versions_1_and_2_with_lineage(good_run, tmp_path):
    base = tmp_path / "models" / "tiny"
    first = push_run(good_run, base)
    second = push_run(good_run, base)

    assert (first.version, second.version) == (1, 2)
    assert numeric_dirs(base) == ["1", "2"]
    assert not [p.name for p in base.iterdir() if p.name.startswith(release.STAGING_PREFIX)]
    source_files = sorted(str(p.relative_to(good_run.version_dir)) for p in good_run.version_dir.rglob("*"))
    for version in ("1", "2"):
        published = sorted(str(p.relative_to(base / version)) for p in (base / version).rglob("*"))
        extra = f"{names.ASSETS_EXTRA}/{release.RECORD_FILE}"
        assert published == sorted([*source_files, extra])
        assert (base / version / "saved_model.pb").read_bytes() == (
            good_run.version_dir / "saved_model.pb"
        ).read_bytes()

    records = log_lines(base)
    assert [r["version"] for r in records] == [1, 2]
    card = json.loads((good_run.version_dir / "assets.extra" / "model_card.json").read_text())
    for record in records:
        assert record["run_dir"] == str(good_run.run_dir.resolve())
        assert record["data"]["fingerprint"] == card["data"]["fingerprint"]
        assert (
            record["config_hash"]
            == card["config_hash"]
            == load_config(good_run.run_dir / "config.toml").fingerprint()
        )
        assert record["git_commit"] == card["git_commit"]
        assert record["tensorflow_version"] == tf.__version__
        assert record["metrics"]["candidate"]["accuracy"] == good_run.metrics["test"]["accuracy"]
        assert record["time"].endswith("Z") and record["forced"] is False
    assert records[0]["metrics"]["baseline"] is None
    assert records[1]["metrics"]["baseline_version"] == 1
    # Same split seed: version 1 never trained on the candidate's test split, so all of it is shared.
    assert records[1]["metrics"]["baseline"]["accuracy"] == good_run.metrics["test"]["accuracy"]
    # The version carries its own record too.
    assert json.loads((base / "2" / "assets.extra" / release.RECORD_FILE).read_text()) == records[1]

    infos, notes = release.list_versions(base)
    assert [info.version for info in infos] == [2, 1] and not notes
    table = release.format_versions(str(base), infos, notes)
    accuracy = f"{good_run.metrics['test']['accuracy']:.4f}"
    assert table.splitlines()[2].startswith("2 *") and accuracy in table


def test_gate_refuses_worse_candidate_then_force_pushes_with_reason(good_run, tiny_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    before = (base / release.RELEASE_LOG).read_text()

    refused = textserve(
        "push",
        str(tiny_run.run_dir),
        "--model-base-path",
        str(base),
        "--skip-infra-validation",
        "--reason",
        "test",
        "--set",
        TINY_GATE,
    )
    assert refused.returncode == 1, refused.stderr[-3000:]
    table = refused.stderr
    assert "the gate refused" in table and "gate: FAIL" in table
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert "candidate (run)" in header and "version 1" in header
    accuracy_row = next(line for line in table.splitlines() if line.startswith("accuracy"))
    worse = tiny_run.metrics["test"]["accuracy"]
    assert f"{worse:.4f}" in accuracy_row and f"{good_run.metrics['test']['accuracy']:.4f}" in accuracy_row
    assert numeric_dirs(base) == ["1"] and (base / release.RELEASE_LOG).read_text() == before

    forced = textserve(
        "push",
        str(tiny_run.run_dir),
        "--model-base-path",
        str(base),
        "--skip-infra-validation",
        "--force",
        "--reason",
        "ship the BiLSTM for the latency test",
        "--set",
        TINY_GATE,
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "gate: FAIL" in forced.stdout and "as version 2" in forced.stdout
    record = log_lines(base)[-1]
    assert record["version"] == 2 and record["forced"] is True
    assert record["reason"] == "ship the BiLSTM for the latency test"
    assert record["gate"]["passed"] is False and record["gate"]["failures"]
    assert record["metrics"]["baseline_version"] == 1

    listed = textserve("models", "list", str(base))
    assert listed.returncode == 0
    assert "push (forced)" in listed.stdout and "ship the BiLSTM" in listed.stdout


def test_force_needs_a_reason(good_run, tmp_path):
    with pytest.raises(ReleaseError, match="--reason"):
        push_run(good_run, tmp_path / "m", force=True, reason=None)
    assert not (tmp_path / "m").exists()


def test_release_thresholds_come_from_therun_config(good_run, tmp_path):
    with pytest.raises(release.GateRefused) as refused:
        push_run(good_run, tmp_path / "m", min_accuracy=1.01)
    assert "release.min_accuracy 1.0100" in str(refused.value)
    assert numeric_dirs(tmp_path / "m") == []


# --- Bad input and faults ---------------------------------------------------------------------


def test_run_without_export_is_refused(good_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(good_run.run_dir / "config.toml", run / "config.toml")
    with pytest.raises(ReleaseError, match="has no export") as error:
        release.push(run, tmp_path / "m", run_config(good_run), reason=REASON, log=quiet)
    assert error.value.exit_code == 2 and not (tmp_path / "m").exists()

    cli = textserve(
        "push",
        str(run),
        "--model-base-path",
        str(tmp_path / "m"),
        "--skip-infra-validation",
        "--reason",
        "test",
    )
    assert cli.returncode == 2 and "has no export" in cli.stderr


def test_corrupted_saved_model_is_refused(good_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good_run.run_dir, run)
    pb = run / "export" / "1" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[: len(pb.read_bytes()) // 3])  # a truncated upload
    with pytest.raises(ReleaseError, match="not a readable SavedModel"):
        release.push(run, tmp_path / "m", run_config(good_run), reason=REASON, log=quiet)

    pb.write_bytes((good_run.version_dir / "saved_model.pb").read_bytes())
    shutil.rmtree(run / "export" / "1" / "variables")  # the graph parses but cannot restore
    with pytest.raises(ReleaseError, match="does not load as a SavedModel"):
        release.push(run, tmp_path / "m", run_config(good_run), reason=REASON, log=quiet)
    assert numeric_dirs(tmp_path / "m") == []


def test_unwritable_base_path_fails_before_any_work(good_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ReleaseError, match="cannot write to the model base path"):
        push_run(good_run, blocker / "models")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_base_path_is_refused(good_run, tmp_path):
    base = tmp_path / "ro"
    base.mkdir()
    base.chmod(0o555)
    try:
        with pytest.raises(ReleaseError, match="cannot write to the model base path"):
            push_run(good_run, base)
    finally:
        base.chmod(0o755)


def test_killed_push_leaves_versions_and_log_unchanged_and_rerun_succeeds(good_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    log_before = (base / release.RELEASE_LOG).read_bytes()
    # A candidate with a large asset, so that the copy is still running when the kill lands.
    run = tmp_path / "big-run"
    shutil.copytree(good_run.run_dir, run)
    padding = run / "export" / "1" / "assets.extra" / "padding.bin"
    padding.write_bytes(os.urandom(1 << 20) * 128)
    size = padding.stat().st_size

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "push",
            str(run),
            "--model-base-path",
            str(base),
            "--skip-infra-validation",
            "--reason",
            "kill test",
            "--set",
            TINY_GATE,
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    caught = None
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and caught is None:
        for partial in base.glob(f"{release.STAGING_PREFIX}*/version/assets.extra/padding.bin"):
            if 0 < partial.stat().st_size < size:
                proc.send_signal(signal.SIGKILL)
                caught = partial.stat().st_size
        time.sleep(0.001)
    proc.wait()
    assert caught is not None, "the push finished before the test could interrupt its copy"

    assert numeric_dirs(base) == ["1"]  # nothing a server would load
    assert (base / release.RELEASE_LOG).read_bytes() == log_before
    assert list(base.glob(f"{release.STAGING_PREFIX}*"))  # the killed push's staging dir is left ...

    rerun = push_run(RunView(run), base)
    assert rerun.version == 2 and numeric_dirs(base) == ["1", "2"]
    assert (base / "2" / "assets.extra" / "padding.bin").stat().st_size == size
    assert not list(base.glob(f"{release.STAGING_PREFIX}*"))  # ... and removed by the next push
    assert [r["version"] for r in log_lines(base)] == [1, 2]


def test_concurrent_pushes_get_distinct_complete_versions(good_run, tmp_path):
    base = tmp_path / "models"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "push",
        str(good_run.run_dir),
        "--model-base-path",
        str(base),
        "--skip-infra-validation",
        "--reason",
        "concurrency test",
        "--set",
        TINY_GATE,
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()

    succeeded = [r for r in results if r[0] == 0]
    for code, _, stderr in results:
        assert code == 0 or (code == 1 and "another push holds" in stderr), stderr[-3000:]
    assert succeeded
    versions = numeric_dirs(base)
    assert versions == [str(v) for v in range(1, len(succeeded) + 1)]
    assert sorted(r["version"] for r in log_lines(base)) == [int(v) for v in versions]
    for version in versions:  # every version whole: it loads and carries its own record
        assert json.loads((base / version / "assets.extra" / release.RECORD_FILE).read_text())[
            "version"
        ] == int(version)
        tf.saved_model.load(str(base / version))
    assert not list(base.glob(f"{release.STAGING_PREFIX}*")) and not (base / release.LOCK_FILE).exists()


def test_stale_lock_of_a_dead_push_is_broken(good_run, tmp_path):
    base = tmp_path / "models"
    base.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (base / release.LOCK_FILE).write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "x", "time": time.time()})
    )
    assert push_run(good_run, base).version == 1
    assert not (base / release.LOCK_FILE).exists()


def test_version_interrupted_before_logging_is_recovered(good_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    push_run(good_run, base)
    # As if the push of version 2 died between its rename and its log append.
    lines = (base / release.RELEASE_LOG).read_text().splitlines()
    (base / release.RELEASE_LOG).write_text(lines[0] + "\n")
    assert push_run(good_run, base).version == 3
    records = log_lines(base)
    assert [r["version"] for r in records] == [1, 2, 3] and "recovered" in records[1]


def test_object_store_ordering_writes_saved_model_pb_last(good_run):
    directories, files = release.copy_plan(str(good_run.version_dir))
    assert files[-1] == "saved_model.pb" and "variables" in directories
    assert "variables/variables.index" in files

    base = f"ram://release-test-{os.getpid()}/tiny"  # a non-local gfile filesystem: no atomic rename
    assert not release.has_atomic_rename(base)
    assert push_run(good_run, base).version == 1
    second = push_run(good_run, base)  # the baseline is read back from the store
    assert second.version == 2 and second.comparison.baseline_version == 1
    assert release.is_complete(f"{base}/2") and tf.io.gfile.exists(f"{base}/2/variables/variables.index")
    assert [r["version"] for r in release.read_release_log(base)[0]] == [1, 2]
    assert not tf.io.gfile.exists(f"{base}/{release.LOCK_FILE}")


def test_stale_lock_on_object_store_removes_the_partial_version(good_run):
    base = f"ram://release-stale-{os.getpid()}/tiny"
    partial = f"{base}/1"
    _directories, files = release.copy_plan(str(good_run.version_dir))
    for name in files[:-1]:  # everything but saved_model.pb: a push killed mid-upload
        tf.io.gfile.makedirs(os.path.dirname(f"{partial}/{name}"))
        tf.io.gfile.copy(str(good_run.version_dir / name), f"{partial}/{name}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    holder = {"host": socket.gethostname(), "pid": int(dead.stdout), "token": "t1", "time": time.time()}
    with tf.io.gfile.GFile(f"{base}/{release.LOCK_FILE}", "wb") as handle:
        handle.write(json.dumps(holder))
    with tf.io.gfile.GFile(f"{base}/{release.LOCK_FILE}.version", "wb") as handle:
        handle.write(json.dumps({"token": "t1", "version": 1}))
    assert release.version_dirs(base) == {1: partial} and not release.is_complete(partial)

    assert push_run(good_run, base).version == 1  # the partial one was never loadable: its number is free
    assert release.is_complete(partial) and not tf.io.gfile.exists(f"{base}/{release.LOCK_FILE}.version")


def test_push_interrupted_while_writing_the_release_log_leaves_valid_json_lines(
    good_run, tmp_path, monkeypatch
):
    from pipeline.release import store

    base = tmp_path / "models"
    push_run(good_run, base)
    before = (base / release.RELEASE_LOG).read_bytes()
    real_replace = os.replace

    def interrupted(src, dst):
        if str(dst).endswith(release.RELEASE_LOG):
            raise KeyboardInterrupt  # Ctrl-C at the worst moment: the new log is written, not yet in place
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        push_run(good_run, base)
    monkeypatch.undo()
    assert (base / release.RELEASE_LOG).read_bytes() == before
    assert [json.loads(line)["version"] for line in before.decode().splitlines()] == [1]
    assert not (base / release.LOCK_FILE).exists() and not list(base.glob("*.tmp-*"))
    # The version was in place before the log write; the next push restores its record.
    assert push_run(good_run, base).version == 3
    assert [r["version"] for r in log_lines(base)] == [1, 2, 3]

    # A line torn by an older writer (no newline) stays on its own line; the log reads on.
    with open(base / release.RELEASE_LOG, "ab") as handle:
        handle.write(b'{"version": 9, "act')
    assert push_run(good_run, base).version == 4  # the torn line names no usable number
    records, problems = release.read_release_log(str(base))
    assert [r["version"] for r in records] == [1, 2, 3, 4] and len(problems) == 1 and ":4:" in problems[0]


def test_failed_push_leaves_no_base_path_behind(good_run, tmp_path):
    base = tmp_path / "new" / "models"
    with pytest.raises(release.GateRefused):
        push_run(good_run, base, min_accuracy=1.01)
    assert not base.exists() and not (base / release.LOCK_FILE).exists()


def test_push_config_layers_run_config_file_set_and_flags(good_run, tmp_path):
    from pipeline.cli import build_parser
    from pipeline.cli.release import push_config

    extra = tmp_path / "release.toml"
    extra.write_text("[release]\nmin_accuracy = 0.5\nmax_regression = 0.2\ninfra_timeout_s = 10.0\n")
    args = build_parser().parse_args(
        [
            "push",
            str(good_run.run_dir),
            "--model-base-path",
            "x",
            "--config",
            str(extra),
            "--set",
            "release.max_regression=0.3",
            "--infra-timeout",
            "20",
            "--skip-infra-validation",
        ]
    )
    settings = push_config(args).release
    assert (settings.min_accuracy, settings.max_regression, settings.infra_timeout_s) == (0.5, 0.3, 20.0)
    assert settings.infra_validation is False and settings.min_eval_docs == 5  # from the run's config.toml
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\narch = 'bilstm'\n")
    cli = textserve(
        "push", str(good_run.run_dir), "--model-base-path", str(tmp_path / "m"), "--config", str(bad)
    )
    assert cli.returncode == 2 and "push reads only the [release] table" in cli.stderr
