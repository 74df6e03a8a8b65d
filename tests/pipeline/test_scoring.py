"""`textserve score`: every input format, bad records, shards, resume, Beam and a real server.

Scoring runs in-process through `pipeline.cli.main` (or `run_scoring`) on the
session's tiny BiLSTM export; the kill-and-resume test runs the real command in
a subprocess and SIGKILLs it halfway. Predictions are checked against the
exported model's own `serving_default` on the same texts.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from tests.conftest import REPO_ROOT

DOCS = [
    ("d1", "The striker scored a late penalty to win the cup match", "football"),
    ("d2", "Shares and bonds fell as investors feared inflation and bank rates", "markets"),
    ("d3", "Bake the flour with butter and garlic then simmer the sauce", "cooking"),
    ("d4", "The rocket carried the astronaut into orbit around the moon", "space"),
    ("d5", "Keeper saves in midfield tackle as the league referee watches", "football"),
    ("d6", "Telescope finds a new planet in a distant galaxy", "space"),
]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _score(*args: str) -> int:
    return main(["score", *args, "--no-progress"])


@pytest.fixture(scope="module")
def model(tiny_run):
    from model.export import ExportedModel

    return ExportedModel(tiny_run.version_dir)


def _expected(model, texts: list[str]) -> list[str]:
    from preprocessing import names

    return [label.decode() for label in model.predict(texts)[names.PREDICTED_LABEL]]


def _write_input(fmt: str, path: Path) -> Path:
    """Writes DOCS in one input format (ids in an `uid` field/column, labels in `topic`)."""
    if fmt == "text":
        data = "".join(f"{text}\n" for _, text, _ in DOCS).encode()
    elif fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        lines = [delimiter.join(["uid", "body", "topic"])] + [
            delimiter.join((*d[:1], d[1], *d[2:])) for d in DOCS
        ]
        data = ("\n".join(lines) + "\n").encode()
    elif fmt == "jsonl":
        data = b"".join(
            json.dumps({"uid": i, "body": t, "topic": lab}).encode() + b"\n" for i, t, lab in DOCS
        )
    else:
        import tensorflow as tf

        tmp = path.with_suffix(".raw")
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for doc_id, text, label in DOCS:
                feature = {
                    key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
                    for key, value in (("uid", doc_id), ("body", text), ("topic", label))
                }
                writer.write(
                    tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
                )
        data = tmp.read_bytes()
        tmp.unlink()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "name",
    [
        "docs.txt",
        "docs.csv",
        "docs.tsv",
        "docs.jsonl",
        "docs.tfrecord",
        "docs.jsonl.gz",
        "docs.csv.gz",
        "docs.tfrecord.gz",
        "docs.txt.gz",
    ],
)
def test_each_input_format_scores_every_document_like_the_model(name, tmp_path, tiny_run, model):
    fmt = {"txt": "text"}.get(name.split(".")[1], name.split(".")[1])
    source = _write_input(fmt, tmp_path / name)
    columns = (
        [] if fmt == "text" else ["--text-column", "body", "--id-column", "uid", "--label-column", "topic"]
    )
    out = tmp_path / "out.jsonl"
    assert _score(str(source), "--model", str(tiny_run.version_dir), "--output", str(out), *columns) == 0

    rows = _read_jsonl(out)
    expected_ids = [f"{name}:{i}" for i in range(1, 7)] if fmt == "text" else [d[0] for d in DOCS]
    assert [row["id"] for row in rows] == expected_ids
    assert [row["label"] for row in rows] == _expected(model, [d[1] for d in DOCS])
    assert all(0.0 < row["score"] <= 1.0 for row in rows)
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert (summary["read"], summary["scored"], summary["errored"]) == (6, 6, 0)
    assert ("metrics" in summary) == (fmt != "text")
    if fmt != "text":
        assert summary["metrics"]["count"] == 6


def test_globs_directories_and_class_folders(tmp_path, tiny_run, tiny_corpus, model):
    (tmp_path / "in").mkdir()
    for i in range(3):
        _write_input("jsonl", tmp_path / "in" / f"part{i}.jsonl")
    out = tmp_path / "glob.jsonl"
    args = ["--model", str(tiny_run.version_dir), "--text-column", "body"]
    assert _score(str(tmp_path / "in" / "part*.jsonl"), "--output", str(out), *args) == 0
    assert len(_read_jsonl(out)) == 18
    # A directory of files stands for its files.
    assert _score(str(tmp_path / "in"), "--output", str(tmp_path / "dir.jsonl"), *args) == 0
    assert sorted(r["id"] for r in _read_jsonl(tmp_path / "dir.jsonl")) == sorted(
        r["id"] for r in _read_jsonl(out)
    )

    # The class-folder layout: labels come from the folders, README.TXT is not a document.
    out = tmp_path / "folder.jsonl"
    assert _score(str(tiny_corpus), "--model", str(tiny_run.version_dir), "--output", str(out)) == 0
    rows = _read_jsonl(out)
    assert len(rows) == 4 * 24 and "cooking/000.txt" in {r["id"] for r in rows}
    texts = [(tiny_corpus / r["id"]).read_text() for r in rows]
    assert [r["label"] for r in rows] == _expected(model, texts)
    summary = json.loads((tmp_path / "folder.summary.json").read_text())
    assert summary["metrics"]["count"] == 96
    # The folder holds the run's training documents: counted apart, with the figures on the rest.
    trained = len(json.loads((tiny_run.run_dir / "splits.json").read_text())["train"])
    leakage = summary["leakage"]
    assert leakage["known"] and leakage["trained_on"] == trained and leakage["unseen"] == 96 - trained
    assert leakage["unseen_metrics"]["count"] == 96 - trained
    # A file of texts none of which it trained on says so.
    fresh = tmp_path / "fresh.jsonl"
    fresh.write_text('{"text": "a sentence it never saw", "label": "cooking"}\n', "utf-8")
    assert (
        _score(str(fresh), "--model", str(tiny_run.version_dir), "--output", str(tmp_path / "f.jsonl")) == 0
    )
    leakage = json.loads((tmp_path / "f.summary.json").read_text())["leakage"]
    assert leakage == {
        "known": True,
        "trained_on": 0,
        "unseen": 1,
        "unseen_metrics": leakage["unseen_metrics"],
    }


def test_bbc_folder_accuracy_and_undecodable_file(bbc_path, bbc_run, tmp_path, capsys):
    out = tmp_path / "bbc.csv"
    assert (
        _score(
            str(bbc_path),
            "--model",
            str(bbc_run.version_dir),
            "--output",
            str(out),
            "--format",
            "csv",
            "--probabilities",
            "--num-shards",
            "2",
            "--fallback-encoding",
            "",
        )
        == 0
    )
    summary = json.loads((tmp_path / "bbc.summary.json").read_text())
    assert summary["read"] == 2225 == summary["scored"] + summary["errored"]
    # The archive has one file that is not UTF-8; with --fallback-encoding "" it is reported, not guessed.
    errors = _read_jsonl(tmp_path / "bbc.errors.jsonl")
    assert len(errors) == summary["errored"] >= 1
    assert all("not valid UTF-8" in e["reason"] and e["source"].startswith(str(bbc_path)) for e in errors)
    assert summary["metrics"]["accuracy"] > 0.97
    assert "accuracy" in capsys.readouterr().out
    with open(tmp_path / "bbc-00000-of-00002.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == [
        "id",
        "label",
        "score",
        "p_business",
        "p_entertainment",
        "p_politics",
        "p_sport",
        "p_tech",
    ]

    # The default is train's rule: decode with latin-1 and say so (one rule for train and score).
    out = tmp_path / "latin.jsonl"
    assert _score(str(bbc_path), "--model", str(bbc_run.version_dir), "--output", str(out)) == 0
    summary = json.loads((tmp_path / "latin.summary.json").read_text())
    assert summary["errored"] == 0
    assert summary["decoded_with_fallback"]["count"] == len(errors)
    assert summary["decoded_with_fallback"]["first"] == [f"{e['source']}:1" for e in errors]
    assert "decoded with latin-1" in capsys.readouterr().out


def _broken_jsonl(path: Path, lines: int = 20_000) -> dict[int, str]:
    """Writes `lines` JSONL lines, 1% of them broken in five ways; returns {line: expected reason}."""
    rng = np.random.default_rng(3)
    broken = {int(i) + 1 for i in rng.choice(lines, size=lines // 100, replace=False)}
    kinds = [
        (b'{"text": "goal striker", ', "malformed JSON"),
        (b'{"body": "no text key"}', "missing key"),
        (b'{"text": "   "}', "empty text"),
        (b'{"text": "caf\xe9 au lait"}', "not valid UTF-8"),
        (b'["a", "list"]', "not a JSON object"),
    ]
    reasons = {}
    with open(path, "wb") as handle:
        for n in range(1, lines + 1):
            if n in broken:
                raw, reason = kinds[n % len(kinds)]
                reasons[n] = reason
                handle.write(raw + b"\n")
            else:
                handle.write(
                    json.dumps({"text": f"{DOCS[n % 6][1]} number {n}", "label": DOCS[n % 6][2]}).encode()
                    + b"\n"
                )
    return reasons


def test_50000_lines_with_1_percent_broken(tmp_path, tiny_run):
    """Issue 9's acceptance: scored + errored = read, every error row with its line and reason."""
    source = tmp_path / "feed.jsonl"
    reasons = _broken_jsonl(source, lines=50_000)
    out = tmp_path / "scored.jsonl"
    assert (
        _score(
            str(source),
            "--model",
            str(tiny_run.version_dir),
            "--output",
            str(out),
            "--batch-size",
            "512",
            "--label-column",
            "label",
            "--num-shards",
            "3",
            "--fallback-encoding",
            "",  # undecodable lines are one of the five kinds of broken line here
        )
        == 0
    )
    rows = [r for k in range(3) for r in _read_jsonl(tmp_path / f"scored-{k:05d}-of-00003.jsonl")]
    errors = _read_jsonl(tmp_path / "scored.errors.jsonl")
    assert len(rows) + len(errors) == 50_000
    assert len(errors) == 500
    assert {e["line"]: e for e in errors}.keys() == reasons.keys()
    for error in errors:
        assert reasons[error["line"]] in error["reason"], error
        assert error["source"] == str(source) and error["id"] == f"feed.jsonl:{error['line']}"
    # Stable order: rows are in input order, skipping exactly the broken lines.
    assert [r["id"] for r in rows] == [f"feed.jsonl:{n}" for n in range(1, 50_001) if n not in reasons]
    summary = json.loads((tmp_path / "scored.summary.json").read_text())
    assert (summary["read"], summary["scored"], summary["errored"]) == (50_000, 49_500, 500)
    assert summary["metrics"]["count"] == 49_500


def test_output_formats_agree(tmp_path, tiny_run):
    import tensorflow as tf

    source = _write_input("jsonl", tmp_path / "docs.jsonl")
    base = [
        "--model",
        str(tiny_run.version_dir),
        "--text-column",
        "body",
        "--id-column",
        "uid",
        "--probabilities",
    ]
    for fmt in ("jsonl", "csv", "tfrecord"):
        assert (
            _score(str(source), "--output", str(tmp_path / f"o.{fmt}"), "--format", fmt, "--overwrite", *base)
            == 0
        )
    reference = _read_jsonl(tmp_path / "o.jsonl")
    assert set(reference[0]) == {"id", "label", "score", "p_cooking", "p_football", "p_markets", "p_space"}
    with open(tmp_path / "o.csv", newline="") as handle:
        from_csv = list(csv.DictReader(handle))
    examples = [
        tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(tmp_path / "o.tfrecord"))
    ]
    for ref, row, example in zip(reference, from_csv, examples, strict=True):
        features = example.features.feature
        assert ref["id"] == row["id"] == features["id"].bytes_list.value[0].decode()
        assert ref["label"] == row["label"] == features["label"].bytes_list.value[0].decode()
        assert (
            ref["score"]
            == pytest.approx(float(row["score"]))
            == pytest.approx(features["score"].float_list.value[0])
        )
        assert sum(ref[k] for k in ref if k.startswith("p_")) == pytest.approx(1.0, abs=1e-5)


def test_shards_concatenate_to_the_single_output(tmp_path, tiny_run):
    source = _write_input("jsonl", tmp_path / "docs.jsonl")
    base = ["--model", str(tiny_run.version_dir), "--text-column", "body", "--batch-size", "4"]
    assert _score(str(source), "--output", str(tmp_path / "one.jsonl"), *base) == 0
    assert _score(str(source), "--output", str(tmp_path / "many.jsonl"), "--num-shards", "4", *base) == 0
    shards = [tmp_path / f"many-{k:05d}-of-00004.jsonl" for k in range(4)]
    assert b"".join(p.read_bytes() for p in shards) == (tmp_path / "one.jsonl").read_bytes()
    assert [len(_read_jsonl(p)) for p in shards] == [2, 2, 2, 0]  # ceil(6 / 4) per shard, the last empty


def test_kill_halfway_then_resume_gives_the_same_output(tmp_path, tiny_run):
    source = tmp_path / "feed.txt"
    source.write_text("".join(f"{DOCS[n % 6][1]} {n}\n" for n in range(4000)), "utf-8")
    common = [
        str(source),
        "--model",
        str(tiny_run.version_dir),
        "--num-shards",
        "8",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "pipeline.cli", "score", *common, "--output", str(tmp_path / "k.jsonl")]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "k-00001-of-00008.jsonl").exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the scorer never completed its second shard"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = [k for k in range(8) if (tmp_path / f"k-{k:05d}-of-00008.jsonl").exists()]
    assert 2 <= len(finished) < 8, "kill landed too late to test resuming"
    assert not (tmp_path / "k.summary.json").exists()

    # Rerunning without --resume refuses to mix jobs; a changed job is refused too.
    assert _score(*common[:-1], "--output", str(tmp_path / "k.jsonl")) == 2
    assert _score(*common[:-1], "--output", str(tmp_path / "k.jsonl"), "--resume", "--probabilities") == 2
    assert _score(*common[:-1], "--output", str(tmp_path / "k.jsonl"), "--resume") == 0
    summary = json.loads((tmp_path / "k.summary.json").read_text())
    assert summary["read"] == 4000 and summary["documents_this_run"] < 4000

    assert _score(*common[:-1], "--output", str(tmp_path / "full.jsonl")) == 0
    for k in range(8):
        resumed = (tmp_path / f"k-{k:05d}-of-00008.jsonl").read_bytes()
        assert resumed == (tmp_path / f"full-{k:05d}-of-00008.jsonl").read_bytes(), f"shard {k} differs"
    assert not list(tmp_path.glob(".*.partial"))


def test_bad_inputs_and_models_fail_at_the_start(tmp_path, tiny_run, capsys):
    model = ["--model", str(tiny_run.version_dir)]
    good = _write_input("jsonl", tmp_path / "good.jsonl")
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(good.read_bytes())[:-20])
    bad_csv = _write_input("csv", tmp_path / "cols.csv")
    cases = [
        ([str(tmp_path / "missing.jsonl"), *model], "no such file"),
        ([str(tmp_path / "nothing-*.jsonl"), *model], "matches no file"),
        ([str(good), str(truncated), *model], "cut.jsonl.gz"),
        ([str(bad_csv), "--text-column", "headline", *model], "'headline' not found"),
        ([str(tmp_path / "good.dat"), *model], "cannot tell the input format"),
        ([str(good), "--model", str(tmp_path)], "no SavedModel here"),
    ]
    (tmp_path / "good.dat").write_text("x\n")
    broken_model = tmp_path / "broken" / "1"
    shutil.copytree(tiny_run.version_dir, broken_model)
    (broken_model / "saved_model.pb").write_bytes(b"not a protobuf")
    cases.append(([str(good), "--model", str(broken_model)], "cannot load the SavedModel"))
    for args, message in cases:
        out = tmp_path / "out.jsonl"
        assert _score(*args, "--output", str(out)) == 2, args
        assert message in capsys.readouterr().err, args
        assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists()


def test_beam_runner_gives_the_tfdata_predictions(tmp_path, tiny_run):
    """Beam's DirectRunner in multi_processing mode, 2 workers: the handler is pickled, each worker loads the model."""
    pytest.importorskip("apache_beam", reason="apache-beam is not installed (pip install '.[beam]')")
    source = tmp_path / "feed.jsonl"
    reasons = _broken_jsonl(source, lines=600)
    base = [str(source), "--model", str(tiny_run.version_dir), "--probabilities", "--batch-size", "64"]
    base += ["--fallback-encoding", ""]
    beam_args = "--direct_num_workers=2 --direct_running_mode=multi_processing"
    assert _score(*base, "--output", str(tmp_path / "tf.jsonl")) == 0
    beam = [*base, "--output", str(tmp_path / "beam.jsonl"), "--num-shards", "2", "--runner", "beam"]
    assert _score(*beam, "--beam-args", beam_args) == 0
    tf_rows = {r["id"]: r for r in _read_jsonl(tmp_path / "tf.jsonl")}
    shards = [tmp_path / f"beam-{k:05d}-of-00002.jsonl" for k in range(2)]
    beam_rows = {r["id"]: r for shard in shards for r in _read_jsonl(shard)}
    assert beam_rows.keys() == tf_rows.keys() and len(tf_rows) == 600 - len(reasons)
    for doc_id, row in tf_rows.items():
        assert beam_rows[doc_id]["label"] == row["label"]
        for key in row.keys() - {"id", "label"}:
            assert beam_rows[doc_id][key] == pytest.approx(row[key], abs=1e-5)
    # Shards are the tf.data runner's: the same documents in input order.
    assert [r["id"] for shard in shards for r in _read_jsonl(shard)] == [
        r["id"] for r in _read_jsonl(tmp_path / "tf.jsonl")
    ]
    beam_errors = [e["line"] for e in _read_jsonl(tmp_path / "beam.errors.jsonl")]
    assert beam_errors == sorted(reasons)
    summary = json.loads((tmp_path / "beam.summary.json").read_text())
    assert (summary["read"], summary["errored"], summary["runner"]) == (600, len(reasons), "beam")

    # --resume: a shard whose commit never happened is the only one scored again.
    first = shards[0].read_bytes()
    second = shards[1].read_bytes()
    shards[1].unlink()
    (tmp_path / "beam.resume" / "00001.json").unlink()
    assert _score(*beam, "--resume") == 0
    summary = json.loads((tmp_path / "beam.summary.json").read_text())
    assert summary["read"] == 600 and summary["documents_this_run"] == 300
    assert shards[0].read_bytes() == first
    second_ids = [json.loads(line)["id"] for line in second.decode().splitlines()]
    assert [r["id"] for r in _read_jsonl(shards[1])] == second_ids


# --- Through a real model server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_tiny(tiny_run):
    from tests.serving.conftest import running_server

    try:
        context = running_server(
            ["--model_name=tiny", f"--model_base_path={tiny_run.version_dir.parent}"], timeout_s=90
        )
        server = context.__enter__()
    except RuntimeError as error:
        pytest.skip(
            f"`python -m serving` did not start on the tiny export (being finished in parallel): {error}"[
                :800
            ]
        )
    yield server
    context.__exit__(None, None, None)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_scoring_through_a_server_matches_in_process(scheme, served_tiny, tmp_path, tiny_run):
    source = tmp_path / "feed.jsonl"
    reasons = _broken_jsonl(source, lines=500)
    url = f"grpc://{served_tiny.grpc_target}" if scheme == "grpc" else served_tiny.rest_url
    local = ["--model", str(tiny_run.version_dir)]
    remote = ["--server", url, "--model-name", "tiny", "--concurrency", "3"]
    for name, where in (("local", local), ("remote", remote)):
        assert (
            _score(
                str(source),
                *where,
                "--output",
                str(tmp_path / f"{name}.jsonl"),
                "--probabilities",
                "--batch-size",
                "32",
                "--fallback-encoding",
                "",
            )
            == 0
        )
    local_rows, remote_rows = _read_jsonl(tmp_path / "local.jsonl"), _read_jsonl(tmp_path / "remote.jsonl")
    assert [r["id"] for r in remote_rows] == [r["id"] for r in local_rows]  # same order
    assert len(remote_rows) == 500 - len(reasons)
    for a, b in zip(local_rows, remote_rows):
        assert a["label"] == b["label"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a.keys() == b.keys()
    assert (tmp_path / "remote.errors.jsonl").read_bytes() == (tmp_path / "local.errors.jsonl").read_bytes()


def test_unknown_server_model_fails_at_the_start(served_tiny, tmp_path, capsys):
    source = _write_input("text", tmp_path / "docs.txt")
    url = f"grpc://{served_tiny.grpc_target}"
    assert (
        _score(str(source), "--server", url, "--model-name", "nope", "--output", str(tmp_path / "o.jsonl"))
        == 2
    )
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
