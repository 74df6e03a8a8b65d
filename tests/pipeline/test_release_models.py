"""`textserve models`: rollback and version labels (see release_support)."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline import release
from pipeline.errors import ReleaseError
from pipeline.release import labels
from tests.conftest import REPO_ROOT
from tests.pipeline.release_support import (
    good_run,
    log_lines,
    numeric_dirs,
    push_run,
    textserve,
    textserve_command,
)

__all__ = ["good_run"]  # a fixture, used by name


# --- Rollback and labels -----------------------------------------------------------------------


def test_rollback_republishes_as_new_version(good_run, tiny_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    push_run(tiny_run, base, force=True, reason="test")

    cli = textserve("models", "rollback", str(base), "--to", "1", "--reason", "v2 misroutes sport")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert numeric_dirs(base) == ["1", "2", "3"]
    assert (base / "3" / "saved_model.pb").read_bytes() == (base / "1" / "saved_model.pb").read_bytes()
    assert (base / "3" / "variables" / "variables.index").read_bytes() == (
        base / "1" / "variables" / "variables.index"
    ).read_bytes()
    record = log_lines(base)[-1]
    assert record["action"] == "rollback" and record["rollback_of"] == 1 and record["version"] == 3
    assert record["reason"] == "v2 misroutes sport" and record["run_dir"] == str(good_run.run_dir.resolve())

    missing = textserve("models", "rollback", str(base), "--to", "7")
    assert missing.returncode == 2 and "no complete version 7" in missing.stderr


def test_label_writes_version_labels_and_widens_the_policy(good_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    push_run(good_run, base)
    config_file = tmp_path / "models.config"
    shutil.copy(REPO_ROOT / "serving" / "configs" / "models.config", config_file)

    stable = release.label_version(base, config_file, "stable", 1)
    assert stable.versions_served == (1, 2) and "specific" in stable.messages[0]
    cli = textserve(
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


def test_label_creates_the_config_with_the_base_path_and_a_generated_note(good_run, tmp_path):
    base = tmp_path / "models" / "tiny"
    push_run(good_run, base)
    config_file = tmp_path / "conf" / "tiny.config"
    result = labels.label_version(base, config_file, "stable", 1)
    assert result.messages[0].endswith(f"created, serving tiny from {base}")
    text = config_file.read_text()
    assert text.startswith(labels.GENERATED_HEADER)
    (entry,) = text_format.Parse(text, model_server_config_pb2.ModelServerConfig()).model_config_list.config
    assert (entry.name, entry.base_path, dict(entry.version_labels)) == ("tiny", str(base), {"stable": 1})
    assert list(entry.model_version_policy.specific.versions) == [1]  # a later push waits for a label


def test_label_keeps_the_header_says_what_it_drops_and_warns_on_another_base_path(good_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    config_file = tmp_path / "models.config"
    shutil.copy(REPO_ROOT / "serving" / "configs" / "models.config", config_file)
    original = (REPO_ROOT / "serving" / "configs" / "models.config").read_text()
    result = labels.label_version(base, config_file, "stable", 1)
    assert any("comments below the leading comment block are not kept" in w for w in result.warnings)
    assert any("base_path is /models/bbc_news" in w for w in result.warnings)
    text = config_file.read_text()
    assert text.startswith(original.split("model_config_list")[0].rstrip()) and labels.REWRITE_NOTE in text
    assert (REPO_ROOT / "serving" / "configs" / "models.config").read_text() == original


def test_concurrent_label_calls_on_one_config_lose_nothing(good_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    push_run(good_run, base)
    config_file = tmp_path / "models.config"
    errors = []

    def label(name, version):
        try:
            labels.label_version(base, config_file, name, version)
        except Exception as error:  # reported below; a thread cannot raise into the test
            errors.append(error)

    threads = [threading.Thread(target=label, args=(f"l{i}", 1 + i % 2)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    procs = [
        subprocess.Popen(
            [
                *textserve_command(),
                "models",
                "label",
                str(base),
                "--model-config",
                str(config_file),
                "--label",
                f"p{i}",
                "--version",
                "2",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        proc.stderr.close()
    assert not errors
    parsed = text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = parsed.model_config_list.config
    assert dict(entry.version_labels) == {**{f"l{i}": 1 + i % 2 for i in range(8)}, "p0": 2, "p1": 2}


def test_rollback_with_a_model_config_moves_labels_back_and_unloads_newer(good_run, tmp_path):
    base = tmp_path / "models"
    push_run(good_run, base)
    push_run(good_run, base)
    config_file = tmp_path / "models.config"
    labels.label_version(base, config_file, "stable", 1)
    labels.label_version(base, config_file, "canary", 2)
    labels.label_version(base, config_file, "stable", 2)
    cli = textserve("models", "rollback", str(base), "--to", "1", "--model-config", str(config_file))
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "labels ['canary', 'stable'] -> 1" in cli.stdout
    (entry,) = text_format.Parse(
        config_file.read_text(), model_server_config_pb2.ModelServerConfig()
    ).model_config_list.config
    assert dict(entry.version_labels) == {"stable": 1, "canary": 1}
    assert list(entry.model_version_policy.specific.versions) == [1]
    assert numeric_dirs(base) == ["1", "2"]  # nothing copied, nothing deleted
    again = textserve("models", "rollback", str(base), "--to", "2", "--model-config", str(config_file))
    assert again.returncode == 2 and "not loaded under" in again.stderr
