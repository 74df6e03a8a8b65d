"""The serving-image runtime check (serving/compat/), run against this environment's TensorFlow.

CI runs the full check with the pinned image's TensorFlow in a throw-away venv
(`.ci/run`). These tests run the same code without that install: the C API
runner executes under this interpreter, so it loads the tiny export with this
TensorFlow's C++ SavedModel loader, and its answers are compared with the
in-process model exactly as the real check compares them. They also check that
the pin and its table row cannot drift apart.

    python -m pytest tests/serving/test_compat_runtime.py -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.compat import check_runtime, image_runtimes, probe

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.serving"


def _warmup_records(version_dir: Path) -> int:
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(str(version_dir / probe.WARMUP_FILE)))


# --- the pin and its table row --------------------------------------------------


def test_the_pinned_image_has_a_runtime_row():
    release = image_runtimes.read_pin(DOCKERFILE)
    runtime = image_runtimes.runtime_for(release)
    assert runtime.requirements == [
        f"tensorflow=={runtime.tensorflow}",
        f"tensorflow-text=={runtime.tensorflow_text}",
    ]
    # The Dockerfile says what the image carries; keep it true to the row.
    text = DOCKERFILE.read_text("utf-8")
    for fact in (
        f"tensorflow/serving {release}",
        f"TensorFlow {runtime.tensorflow}",
        f"tensorflow-text {runtime.image_tensorflow_text}",
        f"ICU {runtime.icu}",
        f"Ubuntu {runtime.ubuntu}",
    ):
        assert fact in " ".join(text.split()), f"Dockerfile.serving should say {fact!r} for the pinned image"


def test_a_pin_without_a_row_fails_the_check(tmp_path, capsys):
    dockerfile = tmp_path / "Dockerfile.serving"
    dockerfile.write_text("ARG TF_SERVING_VERSION=9.9.9\nFROM tensorflow/serving:${TF_SERVING_VERSION}\n")
    assert check_runtime.main(["--dockerfile", str(dockerfile), "--runtime-python", sys.executable]) == 1
    error = capsys.readouterr().err
    assert "9.9.9" in error and "image_runtimes.py" in error


@pytest.mark.parametrize(
    "line, tag",
    [
        ("ARG TF_SERVING_VERSION=2.20.0", "2.20.0"),
        ('ARG TF_SERVING_VERSION="2.19.1"', "2.19.1"),
        ("ARG TF_SERVING_VERSION=2.20.0@sha256:" + "ab" * 32, "2.20.0"),
    ],
)
def test_read_pin_takes_the_release_tag(tmp_path, line, tag):
    path = tmp_path / "Dockerfile"
    path.write_text(f"# a comment\n{line}\nFROM tensorflow/serving:${{TF_SERVING_VERSION}}\n")
    assert image_runtimes.read_pin(path) == tag


@pytest.mark.parametrize("text", ["FROM tensorflow/serving:2.20.0\n", "ARG TF_SERVING_VERSION=latest\n"])
def test_read_pin_refuses_a_missing_or_floating_pin(tmp_path, text):
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    with pytest.raises(image_runtimes.PinError, match="TF_SERVING_VERSION"):
        image_runtimes.read_pin(path)


# --- the throw-away venv ----------------------------------------------------------


def _fake_venv(path: Path, requirements: list[str]) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    (path / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (path / check_runtime._MARKER).write_text(json.dumps({"requirements": requirements}))
    return path


def test_a_venv_with_the_same_versions_is_reused(tmp_path):
    venv = _fake_venv(tmp_path / "venv", ["tensorflow==2.20.0", "tensorflow-text==2.20.0"])
    # A base python that does not exist: reusing must not create anything.
    python, reused = check_runtime.ensure_venv(
        ["tensorflow==2.20.0", "tensorflow-text==2.20.0"], venv, "/nonexistent/python3", verbose=False
    )
    assert reused and python == venv / "bin" / "python"


def test_a_venv_of_other_versions_is_rebuilt(tmp_path):
    venv = _fake_venv(tmp_path / "venv", ["tensorflow==2.19.0"])
    with pytest.raises(check_runtime.CheckError, match="/nonexistent/python3"):
        check_runtime.ensure_venv(["tensorflow==2.20.0"], venv, "/nonexistent/python3", verbose=False)
    assert not (venv / check_runtime._MARKER).exists(), "the old venv is gone, the new one not marked done"


def test_a_directory_that_is_not_a_venv_is_never_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(check_runtime.CheckError, match="not a venv"):
        check_runtime.ensure_venv(["tensorflow==2.20.0"], mine, sys.executable, verbose=False)
    assert (mine / "notes.txt").read_text() == "keep me"


# --- the comparison, with this TensorFlow as the "image" runtime ----------------


@pytest.fixture(scope="module")
def check(tiny_run, tmp_path_factory):
    """The check's command line run on the tiny export, with this interpreter as the runtime."""
    work = tmp_path_factory.mktemp("compat")
    findings = work / "findings.json"
    argv = ["--export", str(tiny_run.run_dir / "export"), "--runtime-python", sys.executable]
    argv += ["--work-dir", str(work / "work"), "--json", str(findings)]
    status = check_runtime.main(argv)
    return status, json.loads(findings.read_text("utf-8"))


def test_the_c_api_loads_the_export_and_agrees_with_the_in_process_model(check, tiny_run):
    status, findings = check
    assert status == 0, findings
    assert findings["passed"] is True
    (export,) = findings["exports"]
    assert export["export"] == str(tiny_run.version_dir)
    assert export["unknown_ops"] == []
    assert "error" not in export and export["disagreements"] == []
    import tensorflow as tf

    assert export["tensorflow"] == tf.__version__  # the runner really ran this TensorFlow
    # Same TensorFlow on both sides: only the loader differs, so answers are identical.
    assert export["max_delta"] <= 1e-6


def test_every_signature_and_warmup_record_is_replayed(tiny_run):
    calls = probe.build_calls(tiny_run.version_dir, probe.DOCUMENTS)
    names = [call.name for call in calls]
    warmup = _warmup_records(tiny_run.version_dir)
    assert warmup > 0
    assert names == ["serving_default", "classify"] + [f"warmup record {n}" for n in range(1, warmup + 1)]
    assert [len(call.rows) for call in calls[:2]] == [len(probe.DOCUMENTS)] * 2
    texts = [text for _, text in probe.DOCUMENTS]
    assert any(ord(ch) >= 0x1FBF0 for text in texts for ch in text), "recent-Unicode text is probed"
    assert "" in texts, "an empty document is probed"


@pytest.fixture(scope="module")
def answered(tiny_run):
    """Calls on the tiny export and this process's answers to them."""
    calls = probe.build_calls(tiny_run.version_dir, probe.DOCUMENTS)
    return calls, probe.run_reference(tiny_run.version_dir, calls)


def _copy(answers):
    return [{alias: np.array(values, copy=True) for alias, values in outputs.items()} for outputs in answers]


def test_a_changed_label_is_a_disagreement(answered):
    calls, reference = answered
    candidate = _copy(reference)
    labels = candidate[0]["label"]
    labels[3] = b"not-a-class" if labels[3] != b"not-a-class" else b"other"
    comparison = probe.compare(calls, reference, candidate, tolerance=1e-4)
    assert not comparison.passed
    (disagreement,) = comparison.disagreements
    assert disagreement.startswith(f"serving_default, {probe.DOCUMENTS[3][0]}: label")
    assert "not-a-class" in disagreement or "other" in disagreement


def test_probabilities_beyond_the_tolerance_fail_and_name_the_row(answered):
    calls, reference = answered
    candidate = _copy(reference)
    scores = candidate[1]["scores"]  # classify
    row = len(probe.DOCUMENTS) - 2
    top = int(scores[row].argmax())
    scores[row, top] += 2e-3  # the top class stays on top: a drift, not a new label
    comparison = probe.compare(calls, reference, candidate, tolerance=1e-4)
    assert comparison.disagreements == []
    assert comparison.max_delta == pytest.approx(2e-3, rel=1e-3)
    assert comparison.calls[1].worst_row == probe.DOCUMENTS[row][0]
    assert not comparison.passed
    assert probe.compare(calls, reference, candidate, tolerance=1e-2).passed


def test_a_new_top_class_in_classify_scores_is_a_disagreement(answered):
    calls, reference = answered
    candidate = _copy(reference)
    scores = candidate[1]["scores"]
    scores[0] = scores[0][::-1] if scores[0].argmax() != scores[0][::-1].argmax() else np.roll(scores[0], 1)
    comparison = probe.compare(calls, reference, candidate, tolerance=1.0)
    assert [d.split(":")[0] for d in comparison.disagreements] == [f"classify, {probe.DOCUMENTS[0][0]}"]


def test_missing_text_kernels_are_reported_as_unknown_ops(tiny_run, tmp_path):
    # A TF Serving build without tensorflow-text: the loader refuses the graph,
    # and the check names the ops rather than only the loader's message.
    findings = tmp_path / "findings.json"
    argv = ["--export", str(tiny_run.version_dir), "--runtime-python", sys.executable, "--no-text-ops"]
    argv += ["--work-dir", str(tmp_path / "work"), "--json", str(findings)]
    assert check_runtime.main(argv) == 1
    (export,) = json.loads(findings.read_text("utf-8"))["exports"]
    assert export["unknown_ops"] == ["CaseFoldUTF8", "NormalizeUTF8"]
    assert export["error"]["stage"] == "load" and "NormalizeUTF8" in export["error"]["message"]


def test_help_answers_without_tensorflow():
    for command in (
        [sys.executable, "-m", "serving.compat.check_runtime", "--help"],
        [sys.executable, "-I", str(check_runtime.RUNNER), "--help"],
    ):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert completed.returncode == 0, completed.stderr
        assert "TF_LoadSessionFromSavedModel" in completed.stdout or "TF Serving" in completed.stdout
