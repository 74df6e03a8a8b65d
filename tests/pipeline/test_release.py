"""`textserve push` and `textserve models`: gate, atomic versioned publish, lineage, faults.

Two cheap models trained on the tiny corpus play the roles:

* `good_run`: TF-IDF, perfect on the tiny test split, passes the default gate;
* `tiny_run` (session fixture): a two-epoch BiLSTM, clearly worse.

Most pushes here skip infra validation (with a reason, as the CLI requires) so
that each test takes seconds; infra validation has its own tests, and the
acceptance test runs the whole path against our server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from pipeline import release
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import InfraValidationError, ReleaseError
from preprocessing import names
from tests.conftest import REPO_ROOT, TINY_OVERRIDES

REASON = "unit test: infra validation has its own tests"


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def good_run(tiny_corpus, tmp_path_factory):
    from pipeline.train import train

    config = load_config(None, [*TINY_OVERRIDES, "model.arch=tfidf"])
    return train(config, tiny_corpus, tmp_path_factory.mktemp("good") / "run", verbose=0, log=_quiet)


def _config(run, *settings) -> PipelineConfig:
    return load_config(run.run_dir / "config.toml", ["release.infra_validation=false", *settings])


def _push(run, base, *settings, force=False, reason=REASON, infra=False, **overrides):
    """Pushes with the run's config plus `release.*` settings; infra validation off unless `infra`."""
    items = [*settings, *(f"release.{k}={v}" for k, v in overrides.items())]
    config = load_config(
        run.run_dir / "config.toml", items if infra else ["release.infra_validation=false", *items]
    )
    return release.push(run.run_dir, base, config, force=force, reason=reason, log=_quiet)


def _log_lines(base: Path) -> list[dict]:
    path = base / release.RELEASE_LOG
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()] if path.exists() else []


def _numeric_dirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.isdigit()) if base.exists() else []


def _textserve(*args, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=env,
    )


# --- Publishing and lineage -------------------------------------------------------------------


def test_two_pushes_give_versions_1_and_2_with_lineage(good_run, tmp_path):
    base = tmp_path / "models" / "tiny"
    first = _push(good_run, base)
    second = _push(good_run, base)

    assert (first.version, second.version) == (1, 2)
    assert _numeric_dirs(base) == ["1", "2"]
    assert not [p.name for p in base.iterdir() if p.name.startswith(release.STAGING_PREFIX)]
    source_files = sorted(str(p.relative_to(good_run.version_dir)) for p in good_run.version_dir.rglob("*"))
    for version in ("1", "2"):
        published = sorted(str(p.relative_to(base / version)) for p in (base / version).rglob("*"))
        extra = f"{names.ASSETS_EXTRA}/{release.RECORD_FILE}"
        assert published == sorted([*source_files, extra])
        assert (base / version / "saved_model.pb").read_bytes() == (
            good_run.version_dir / "saved_model.pb"
        ).read_bytes()

    records = _log_lines(base)
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
        assert record["metrics"]["candidate"]["accuracy"] == 1.0
        assert record["time"].endswith("Z") and record["forced"] is False
    assert records[0]["metrics"]["baseline"] is None
    assert records[1]["metrics"]["baseline_version"] == 1
    assert records[1]["metrics"]["baseline"]["accuracy"] == 1.0
    # The version carries its own record too.
    assert json.loads((base / "2" / "assets.extra" / release.RECORD_FILE).read_text()) == records[1]

    infos, notes = release.list_versions(base)
    assert [info.version for info in infos] == [2, 1] and not notes
    table = release.format_versions(str(base), infos, notes)
    assert table.splitlines()[2].startswith("2 *") and "1.0000" in table


def test_gate_refuses_worse_candidate_then_force_pushes_with_reason(good_run, tiny_run, tmp_path):
    base = tmp_path / "models"
    _push(good_run, base)
    before = (base / release.RELEASE_LOG).read_text()

    refused = _textserve(
        "push",
        str(tiny_run.run_dir),
        "--model-base-path",
        str(base),
        "--skip-infra-validation",
        "--reason",
        "test",
    )
    assert refused.returncode == 1, refused.stderr[-3000:]
    table = refused.stderr
    assert "the gate refused" in table and "gate: FAIL" in table
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert "candidate (run)" in header and "version 1" in header
    accuracy_row = next(line for line in table.splitlines() if line.startswith("accuracy"))
    worse = tiny_run.metrics["test"]["accuracy"]
    assert f"{worse:.4f}" in accuracy_row and "1.0000" in accuracy_row
    assert _numeric_dirs(base) == ["1"] and (base / release.RELEASE_LOG).read_text() == before

    forced = _textserve(
        "push",
        str(tiny_run.run_dir),
        "--model-base-path",
        str(base),
        "--skip-infra-validation",
        "--force",
        "--reason",
        "ship the BiLSTM for the latency test",
    )
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "gate: FAIL" in forced.stdout and "as version 2" in forced.stdout
    record = _log_lines(base)[-1]
    assert record["version"] == 2 and record["forced"] is True
    assert record["reason"] == "ship the BiLSTM for the latency test"
    assert record["gate"]["passed"] is False and record["gate"]["failures"]
    assert record["metrics"]["baseline_version"] == 1

    listed = _textserve("models", "list", str(base))
    assert listed.returncode == 0
    assert "push (forced)" in listed.stdout and "ship the BiLSTM" in listed.stdout


def test_force_needs_a_reason(good_run, tmp_path):
    with pytest.raises(ReleaseError, match="--reason"):
        _push(good_run, tmp_path / "m", force=True, reason=None)
    assert not (tmp_path / "m").exists()


def test_release_thresholds_come_from_the_config(good_run, tmp_path):
    with pytest.raises(release.GateRefused) as refused:
        _push(good_run, tmp_path / "m", min_accuracy=1.01)
    assert "release.min_accuracy 1.0100" in str(refused.value)
    assert _numeric_dirs(tmp_path / "m") == []


# --- Bad input and faults ---------------------------------------------------------------------


def test_run_without_export_is_refused(good_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(good_run.run_dir / "config.toml", run / "config.toml")
    with pytest.raises(ReleaseError, match="has no export") as error:
        release.push(run, tmp_path / "m", _config(good_run), reason=REASON, log=_quiet)
    assert error.value.exit_code == 2 and not (tmp_path / "m").exists()

    cli = _textserve(
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
        release.push(run, tmp_path / "m", _config(good_run), reason=REASON, log=_quiet)

    pb.write_bytes((good_run.version_dir / "saved_model.pb").read_bytes())
    shutil.rmtree(run / "export" / "1" / "variables")  # the graph parses but cannot restore
    with pytest.raises(ReleaseError, match="does not load as a SavedModel"):
        release.push(run, tmp_path / "m", _config(good_run), reason=REASON, log=_quiet)
    assert _numeric_dirs(tmp_path / "m") == []


def test_unwritable_base_path_fails_before_any_work(good_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ReleaseError, match="cannot write to the model base path"):
        _push(good_run, blocker / "models")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_base_path_is_refused(good_run, tmp_path):
    base = tmp_path / "ro"
    base.mkdir()
    base.chmod(0o555)
    try:
        with pytest.raises(ReleaseError, match="cannot write to the model base path"):
            _push(good_run, base)
    finally:
        base.chmod(0o755)


def test_killed_push_leaves_versions_and_log_unchanged_and_rerun_succeeds(good_run, tmp_path):
    base = tmp_path / "models"
    _push(good_run, base)
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

    assert _numeric_dirs(base) == ["1"]  # nothing a server would load
    assert (base / release.RELEASE_LOG).read_bytes() == log_before
    assert list(base.glob(f"{release.STAGING_PREFIX}*"))  # the killed push's staging dir is left ...

    rerun = _push(_RunView(run), base)
    assert rerun.version == 2 and _numeric_dirs(base) == ["1", "2"]
    assert (base / "2" / "assets.extra" / "padding.bin").stat().st_size == size
    assert not list(base.glob(f"{release.STAGING_PREFIX}*"))  # ... and removed by the next push
    assert [r["version"] for r in _log_lines(base)] == [1, 2]


class _RunView:
    """The two fields `_push` needs from a RunResult, for a copied run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir


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
    versions = _numeric_dirs(base)
    assert versions == [str(v) for v in range(1, len(succeeded) + 1)]
    assert sorted(r["version"] for r in _log_lines(base)) == [int(v) for v in versions]
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
    assert _push(good_run, base).version == 1
    assert not (base / release.LOCK_FILE).exists()


def test_version_interrupted_before_logging_is_recovered(good_run, tmp_path):
    base = tmp_path / "models"
    _push(good_run, base)
    _push(good_run, base)
    # As if the push of version 2 died between its rename and its log append.
    lines = (base / release.RELEASE_LOG).read_text().splitlines()
    (base / release.RELEASE_LOG).write_text(lines[0] + "\n")
    assert _push(good_run, base).version == 3
    records = _log_lines(base)
    assert [r["version"] for r in records] == [1, 2, 3] and "recovered" in records[1]


def test_object_store_ordering_writes_saved_model_pb_last(good_run):
    directories, files = release.copy_plan(str(good_run.version_dir))
    assert files[-1] == "saved_model.pb" and "variables" in directories
    assert "variables/variables.index" in files

    base = f"ram://release-test-{os.getpid()}/tiny"  # a non-local gfile filesystem: no atomic rename
    assert not release.has_atomic_rename(base)
    assert _push(good_run, base).version == 1
    second = _push(good_run, base)  # the baseline is read back from the store
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

    assert _push(good_run, base).version == 1  # the partial one was never loadable: its number is free
    assert release.is_complete(partial) and not tf.io.gfile.exists(f"{base}/{release.LOCK_FILE}.version")


# --- Rollback and labels -----------------------------------------------------------------------


def test_rollback_republishes_as_new_version(good_run, tiny_run, tmp_path):
    base = tmp_path / "models"
    _push(good_run, base)
    _push(tiny_run, base, force=True, reason="test")

    cli = _textserve("models", "rollback", str(base), "--to", "1", "--reason", "v2 misroutes sport")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert _numeric_dirs(base) == ["1", "2", "3"]
    assert (base / "3" / "saved_model.pb").read_bytes() == (base / "1" / "saved_model.pb").read_bytes()
    assert (base / "3" / "variables" / "variables.index").read_bytes() == (
        base / "1" / "variables" / "variables.index"
    ).read_bytes()
    record = _log_lines(base)[-1]
    assert record["action"] == "rollback" and record["rollback_of"] == 1 and record["version"] == 3
    assert record["reason"] == "v2 misroutes sport" and record["run_dir"] == str(good_run.run_dir.resolve())

    missing = _textserve("models", "rollback", str(base), "--to", "7")
    assert missing.returncode == 2 and "no complete version 7" in missing.stderr


def test_label_writes_version_labels_and_widens_the_policy(good_run, tmp_path):
    base = tmp_path / "models"
    _push(good_run, base)
    _push(good_run, base)
    config_file = tmp_path / "models.config"
    shutil.copy(REPO_ROOT / "serving" / "configs" / "models.config", config_file)

    stable = release.label_version(base, config_file, "stable", 1)
    assert stable.versions_served == (1, 2) and "specific" in stable.messages[0]
    cli = _textserve(
        "models",
        "label",
        str(base),
        "--model-config",
        str(config_file),
        "--label",
        "canary",
        "--version",
        "2",
    )
    assert cli.returncode == 0, cli.stderr[-2000:]

    text = config_file.read_text()
    assert text.startswith("# tensorflow.serving.ModelServerConfig")  # the header comment survives
    parsed = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    (entry,) = parsed.model_config_list.config
    assert entry.name == "bbc_news" and entry.base_path == "/models/bbc_news"
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    assert list(entry.model_version_policy.specific.versions) == [1, 2]

    promote = release.label_version(base, config_file, "stable", 2)  # already served: policy unchanged
    assert len(promote.messages) == 1 and promote.versions_served == (1, 2)

    with pytest.raises(ReleaseError, match=r"\[A-Za-z0-9_\]"):
        release.label_version(base, config_file, "can ary", 2)
    with pytest.raises(ReleaseError, match="no complete version 9"):
        release.label_version(base, config_file, "canary", 9)


# --- Infra validation --------------------------------------------------------------------------


def test_infra_validation_failure_stops_the_push(good_run, tmp_path):
    base = tmp_path / "models"
    with pytest.raises(InfraValidationError, match="exited with code 1 before the model loaded"):
        _push(good_run, base, 'release.model_server="/bin/false"', "release.infra_timeout_s=30", infra=True)
    assert _numeric_dirs(base) == [] and not _log_lines(base)
    assert not list(base.glob(f"{release.STAGING_PREFIX}*"))


def test_infra_validation_and_hot_swap_on_our_server(good_run, tiny_corpus, tmp_path):
    """Acceptance: two pushes to an empty path; a polling server swaps to version 2 with no failed request."""
    from pipeline.train import train
    from tests.serving.conftest import running_server

    base = tmp_path / "models"
    first = _push(good_run, base, "release.infra_timeout_s=90", infra=True)
    assert first.version == 1 and first.record["infra_validation"]["documents"] == 8
    assert first.record["infra_validation"]["warmup_requests"] == 5

    second_run = train(
        load_config(None, [*TINY_OVERRIDES, "model.arch=tfidf", "train.seed=7"]),
        tiny_corpus,
        tmp_path / "second",
        verbose=0,
        log=_quiet,
    )
    with running_server(
        ["--model_name=tiny", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"]
    ) as server:
        failures, versions_seen, stop = [], [], threading.Event()

        def hammer():
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "tiny"
                request.inputs["text"].CopyFrom(
                    tf.make_tensor_proto(["rocket orbit launch"], dtype=tf.string)
                )
                while not stop.is_set():
                    try:
                        versions_seen.append(stub.Predict(request, timeout=30).model_spec.version.value)
                    except grpc.RpcError as error:
                        failures.append(f"{error.code().name}: {error.details()}")

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            assert _push(second_run, base, "release.infra_timeout_s=90", infra=True).version == 2
            deadline = time.monotonic() + 60
            while (not versions_seen or versions_seen[-1] != 2) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join()
    assert not failures, failures[:5]
    assert versions_seen[0] == 1 and versions_seen[-1] == 2
