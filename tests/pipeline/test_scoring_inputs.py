"""`textserve score` on bad input and faults: each case of issue 9's list, and no silent coercion.

Every case runs the real command on the session's tiny export (in-process
through `pipeline.cli.main`, or in a subprocess where the process itself must
fail: a file-size limit makes the kernel refuse writes exactly as a full disk
does, with EFBIG instead of ENOSPC). Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import RunStopped
from tests.conftest import REPO_ROOT

WORDS = ["striker scored the goal", "shares fell on inflation", "bake the flour", "rocket reached orbit"]


def _score(*args: str) -> int:
    return main(["score", *args, "--no-progress"])


def _jsonl(path):
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def _summary(path):
    return json.loads(path.read_text("utf-8"))


def test_unterminated_csv_quote_is_one_error_row_and_the_rest_is_scored(tmp_path, tiny_run, capsys):
    """The issue's 6-row file: it was summarised as `read 3 = scored 3 + errored 0`."""
    source = tmp_path / "feed.csv"
    source.write_text(
        'text,label\nthe striker scored,football\nshares fell,markets\n"bake the flour,cooking\n'
        "rocket to orbit,space\nkeeper saves,football\nbonds rose,markets\n"
    )
    assert (
        _score(str(source), "--model", str(tiny_run.version_dir), "--output", str(tmp_path / "o.jsonl")) == 0
    )
    summary = _summary(tmp_path / "o.summary.json")
    assert (summary["read"], summary["scored"], summary["errored"]) == (6, 5, 1)
    (error,) = _jsonl(tmp_path / "o.errors.jsonl")
    assert (
        error["line"] == 4 and "unterminated quoted field" in error["reason"] and "line 4" in error["reason"]
    )
    assert "read 6 = scored 5 + errored 1" in capsys.readouterr().out


def test_lines_that_are_not_objects_and_texts_that_are_not_strings_are_error_rows(tmp_path, tiny_run, capsys):
    source = tmp_path / "feed.jsonl"
    lines = [
        {"id": "a1", "text": WORDS[0]},
        [WORDS[1]],
        7,
        {"id": "a4", "text": 12345},
        {"id": "a5", "text": None},
        {"id": "a6", "text": "   "},
        {"id": "a7", "text": WORDS[2]},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert (
        _score(str(source), "--model", str(tiny_run.version_dir), "--output", str(tmp_path / "o.jsonl")) == 0
    )
    out = capsys.readouterr().out
    assert "ids: 'id'" in out  # the `id` key is used without --id-column, and the log says so
    assert [row["id"] for row in _jsonl(tmp_path / "o.jsonl")] == ["a1", "a7"]
    reasons = {e["line"]: e["reason"] for e in _jsonl(tmp_path / "o.errors.jsonl")}
    assert reasons == {
        2: "line is not a JSON object (it is an array)",
        3: "line is not a JSON object (it is a number)",
        4: "text key 'text' is a number, not a string",
        5: "text key 'text' is null",
        6: "empty text (nothing to score)",
    }
    summary = _summary(tmp_path / "o.summary.json")
    assert (summary["read"], summary["scored"], summary["errored"]) == (7, 2, 5)
    assert summary["ids_from"] == ["id"]


@pytest.fixture(scope="module")
def same_docs(tmp_path_factory):
    """200 documents as JSON Lines and as Parquet (two row groups), with ids and labels."""
    root = tmp_path_factory.mktemp("same_docs")
    docs = [{"id": f"d{i}", "text": f"{WORDS[i % 4]} number {i}", "label": f"c{i % 4}"} for i in range(200)]
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    pq.write_table(pa.Table.from_pylist(docs), root / "docs.parquet", row_group_size=120)
    return root


def test_parquet_in_gives_the_jsonl_predictions_and_parquet_out_is_typed(same_docs, tmp_path, tiny_run):
    model = ["--model", str(tiny_run.version_dir), "--probabilities"]
    assert _score(str(same_docs / "docs.jsonl"), *model, "--output", str(tmp_path / "j.jsonl")) == 0
    assert _score(str(same_docs / "docs.parquet"), *model, "--output", str(tmp_path / "p.jsonl")) == 0
    assert (tmp_path / "j.jsonl").read_bytes() == (tmp_path / "p.jsonl").read_bytes()

    args = [str(same_docs / "docs.parquet"), *model, "--format", "parquet", "--num-shards", "2"]
    assert _score(*args, "--output", str(tmp_path / "scored.parquet")) == 0
    tables = [pq.read_table(tmp_path / f"scored-{k:05d}-of-00002.parquet") for k in range(2)]
    schema = tables[0].schema
    assert schema.field("id").type == pa.string() and schema.field("label").type == pa.string()
    assert {schema.field(n).type for n in schema.names if n == "score" or n.startswith("p_")} == {
        pa.float32()
    }
    rows = pa.concat_tables(tables).to_pylist()
    reference = _jsonl(tmp_path / "j.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in reference]
    for row, ref in zip(rows, reference):
        assert row["label"] == ref["label"] and row["score"] == pytest.approx(ref["score"], rel=1e-6)
    metrics = _summary(tmp_path / "scored.summary.json")["metrics"]
    assert metrics["count"] == 200


def test_parquet_without_the_text_column_or_empty_fails_at_the_start(tmp_path, tiny_run, capsys):
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["a"], "topic": ["x"]}), no_text)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    model = ["--model", str(tiny_run.version_dir)]
    for source, message in (
        (no_text, "column 'text' not found; the file has columns ['body', 'topic']"),
        (empty, "empty.parquet: not a readable Parquet file"),
    ):
        assert _score(str(source), *model, "--output", str(tmp_path / "o.jsonl")) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not (tmp_path / "o.jsonl").exists()


def test_an_input_that_disappears_after_the_count_pass_stops_the_run_and_resume_finishes_it(
    tmp_path, tiny_run
):
    from pipeline.scoring.job import ScoreJob, run_scoring

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("".join(f"{WORDS[i % 4]} {i}\n" for i in range(40)))
    second.write_text("".join(f"{WORDS[i % 4]} late {i}\n" for i in range(40)))
    kept = second.read_bytes(), second.stat()
    config = load_config(None, ["score.num_shards=2", "score.batch_size=8"])

    def job(output: str, resume: bool = False) -> ScoreJob:
        inputs = (str(first), str(second))
        return ScoreJob(
            inputs, str(tmp_path / output), config, model=str(tiny_run.version_dir), resume=resume
        )

    def delete_after_counting(line: str) -> None:
        if line.startswith("scoring "):  # logged after the count pass, before reading starts
            second.unlink()

    with pytest.raises(RunStopped, match=r"b\.txt: cannot read the input .*No such file.* restore it"):
        run_scoring(job("out.jsonl"), log=delete_after_counting)
    assert (tmp_path / "out-00000-of-00002.jsonl").is_file()  # the complete shard is kept
    assert not (tmp_path / "out-00001-of-00002.jsonl").exists()
    assert not list(tmp_path.glob(".*.partial"))

    second.write_bytes(kept[0])
    os.utime(second, ns=(kept[1].st_atime_ns, kept[1].st_mtime_ns))
    summary = run_scoring(job("out.jsonl", resume=True), log=lambda _: None)
    assert summary["read"] == 80 and summary["documents_this_run"] == 40
    run_scoring(job("clean.jsonl"), log=lambda _: None)
    for k in range(2):
        name = f"-{k:05d}-of-00002.jsonl"
        assert (tmp_path / f"out{name}").read_bytes() == (tmp_path / f"clean{name}").read_bytes()


def test_a_full_disk_leaves_the_shard_uncommitted_and_resume_continues(tmp_path, tiny_run):
    source = tmp_path / "feed.jsonl"
    # The second shard's rows are long (long ids), so only it outgrows the file-size limit.
    docs = [
        {"id": f"s{i}" if i < 200 else f"{i}-" + "x" * 400, "text": f"{WORDS[i % 4]} {i}"} for i in range(400)
    ]
    source.write_text("".join(json.dumps(d) + "\n" for d in docs))
    args = ["score", str(source), "--model", str(tiny_run.version_dir), "--num-shards", "2", "--no-progress"]
    command = [sys.executable, "-m", "pipeline.cli", *args, "--output", str(tmp_path / "o.jsonl")]

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "cannot write the output" in done.stderr and "o-00001-of-00002.jsonl" in done.stderr
    assert "--resume" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "o-00000-of-00002.jsonl").is_file()
    assert not (tmp_path / "o-00001-of-00002.jsonl").exists() and not list(tmp_path.glob(".*.partial"))

    assert main([*args, "--output", str(tmp_path / "o.jsonl"), "--resume"]) == 0
    assert main([*args, "--output", str(tmp_path / "clean.jsonl")]) == 0
    for k in range(2):
        name = f"-{k:05d}-of-00002.jsonl"
        assert (tmp_path / f"o{name}").read_bytes() == (tmp_path / f"clean{name}").read_bytes()


def test_config_file_overrides_progress_bar_and_saved_settings(tmp_path, tiny_run, capsys):
    source = tmp_path / "feed.csv"
    source.write_text("uid,body\n" + "".join(f"u{i},{WORDS[i % 4]} {i}\n" for i in range(50)))
    config = tmp_path / "score.toml"
    config.write_text(
        '[data]\ntext_column = ["body"]\nid_column = "uid"\n\n[score]\nbatch_size = 7\nnum_shards = 2\n'
    )
    base = [str(source), "--model", str(tiny_run.version_dir), "--config", str(config)]
    assert (
        main(
            [
                "score",
                *base,
                "--output",
                str(tmp_path / "o.jsonl"),
                "--set",
                "score.num_shards=3",
                "--progress",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "doc/s" in captured.err  # tqdm's rate; it also shows the ETA
    assert "ids: 'uid'" in captured.out
    shards = [tmp_path / f"o-{k:05d}-of-00003.jsonl" for k in range(3)]  # --set beats the file
    assert [r["id"] for s in shards for r in _jsonl(s)] == [f"u{i}" for i in range(50)]
    saved = load_config(tmp_path / "o.config.toml")
    assert saved.score.batch_size == 7 and saved.score.num_shards == 3 and saved.data.text_column == ("body",)
    assert _summary(tmp_path / "o.summary.json")["config"]["score"]["num_shards"] == 3

    # A flag is the same key as --set; an unknown key is refused with the valid ones.
    assert _score(*base, "--output", str(tmp_path / "f.jsonl"), "--batch-size", "0") == 2
    assert "`score.batch_size` must be >= 1" in capsys.readouterr().err
    assert _score(*base, "--output", str(tmp_path / "f.jsonl"), "--set", "score.speed=9") == 2
    assert "unknown config key `score.speed`" in capsys.readouterr().err


def test_predict_warns_about_empty_texts(tiny_run, capsys):
    assert main(["predict", "--model", str(tiny_run.version_dir), WORDS[0], "  "]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2  # one answer per input, as a server gives
    assert "warning: input 2 is empty" in captured.err
