"""Reading, validating, deduplicating and splitting labelled documents."""

import csv
import json

import pytest

from pipeline.config import DataConfig
from pipeline.data import ingest
from pipeline.errors import DataError


def _folder(root, docs):
    for relative, content in docs.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def test_folder_reports_fallback_empty_and_duplicates(tmp_path):
    root = _folder(
        tmp_path / "d",
        {
            "README.TXT": "not a document",
            "sport/1.txt": "Goal in the last minute",
            "sport/2.txt": "  GOAL in the   last minute\n",  # duplicate after whitespace/case folding
            "sport/3.txt": "Caf\xe9 league final".encode("latin-1"),  # not UTF-8
            "tech/1.txt": "",
            "tech/2.txt": "New phone released",
        },
    )
    data = ingest(root, DataConfig())
    report = data.report
    assert data.ids == ["sport/1.txt", "sport/3.txt", "tech/2.txt"]
    assert "Café league final" in data.texts
    assert report["records_read"] == 5 and report["records_kept"] == 3
    assert report["dropped_by_reason"] == {
        "empty_text": 1,
        "missing_label": 0,
        "duplicate": 1,
        "label_conflict": 0,
    }
    assert report["duplicates"] == [
        {"kept": "sport/1.txt", "dropped": "sport/2.txt", "where": f"{root}/sport/2.txt:1"}
    ]
    assert report["decoded_with_fallback"][0]["id"] == "sport/3.txt"
    assert report["empty_text"][0]["id"] == "tech/1.txt"
    assert report["ignored_files"] == [str(root / "README.TXT")]
    json.dumps(report)  # the report must be writable as JSON


def test_one_text_under_two_labels_names_both_places(tmp_path):
    root = _folder(tmp_path / "d", {"a/1.txt": "Same words", "b/9.txt": "same   WORDS"})
    with pytest.raises(DataError, match=r"two labels: 'a' at .*a/1.txt:1 and 'b' at .*b/9.txt:1"):
        ingest(root, DataConfig())


def test_csv_multiline_quoted_fields_and_several_text_columns(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text(
        'id,title,body,category\n7,"Rates","rise\nagain",business\n8,Match,"won, 2-1",sport\n9,x,,\n'
    )
    data = ingest(path, DataConfig(text_column=("title", "body"), label_column="category", id_column="id"))
    assert data.ids == ["7", "8"] and data.texts == ["Rates rise\nagain", "Match won, 2-1"]
    assert data.report["missing_label"] == [{"id": "9", "where": f"{path}:5"}]


def test_tsv_by_index_without_header(tmp_path):
    path = tmp_path / "news.tsv"
    path.write_text("sport\tgreat goal\nbusiness\tshares up\n")
    data = ingest(path, DataConfig(text_column=(1,), label_column=0, header=False))
    assert data.labels == ["sport", "business"] and data.ids == ["news.tsv:1", "news.tsv:2"]


def test_csv_missing_column_names_file_line_and_header(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("title,category\nx,y\n")
    with pytest.raises(
        DataError, match=r"news.csv:1: column 'text' not found; the header has \['title', 'category'\]"
    ):
        ingest(path, DataConfig(label_column="category"))


def test_csv_short_row_names_line(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text("text,label\nok,a\nbroken\n")
    with pytest.raises(DataError, match=r"news.csv:3: row has 1 fields"):
        ingest(path, DataConfig())


def test_jsonl_keys_and_malformed_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"headline": "Rates rise", "topic": "business"}\n\n{"headline": "Goal", "topic": "sport"}\n'
    )
    data = ingest(good, DataConfig(text_column=("headline",), label_column="topic"))
    assert data.labels == ["business", "sport"] and data.ids == ["good.jsonl:1", "good.jsonl:3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        ingest(bad, DataConfig())


def test_unreadable_and_unknown_inputs(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        ingest(tmp_path / "missing.csv", DataConfig())
    odd = tmp_path / "data.xls"
    odd.write_text("x")
    with pytest.raises(DataError, match=r"data\.format"):
        ingest(odd, DataConfig())


def test_real_bbc_has_101_duplicates_and_one_latin1_file(bbc_path):
    data = ingest(bbc_path, DataConfig())
    report = data.report
    assert report["records_read"] == 2225
    assert report["dropped_by_reason"]["duplicate"] == 101 and report["records_kept"] == 2124
    assert [entry["id"] for entry in report["decoded_with_fallback"]] == ["sport/199.txt"]
    assert len(data.label_names) == 5


# --- One text under two labels (data.on_label_conflict) -------------------------------------------


def _conflicted(root):
    return _folder(
        root,
        {
            "a/1.txt": "Same words",
            "a/2.txt": "Other words",
            "b/9.txt": "same   WORDS",
            "a/3.txt": "SAME words",  # a third copy, under the first label
        },
    )


def test_label_conflict_error_suggests_the_option(tmp_path):
    with pytest.raises(DataError, match=r"--set data\.on_label_conflict=drop .*keep_first"):
        ingest(_conflicted(tmp_path / "d"), DataConfig())


def test_label_conflict_drop_and_keep_first_are_reported_with_every_place(tmp_path):
    root = _conflicted(tmp_path / "d")
    dropped = ingest(root, DataConfig(on_label_conflict="drop"))
    assert dropped.ids == ["a/2.txt"]
    (conflict,) = dropped.report["label_conflicts"]
    assert conflict["resolution"] == "dropped every copy" and conflict["label_kept"] is None
    assert [(p["id"], p["label"]) for p in conflict["places"]] == [
        ("a/1.txt", "a"),
        ("a/3.txt", "a"),
        ("b/9.txt", "b"),
    ]
    assert conflict["places"][2]["where"] == f"{root}/b/9.txt:1"
    assert dropped.report["dropped_by_reason"]["label_conflict"] == 3
    assert (
        dropped.report["records_read"] == dropped.report["records_kept"] + dropped.report["records_dropped"]
    )

    first = ingest(root, DataConfig(on_label_conflict="keep_first"))
    assert first.ids == ["a/1.txt", "a/2.txt"]
    assert first.report["label_conflicts"][0]["label_kept"] == "a"
    assert first.report["dropped_by_reason"]["label_conflict"] == 1  # b/9.txt
    assert first.report["duplicates"] == [
        {"kept": "a/1.txt", "dropped": "a/3.txt", "where": f"{root}/a/3.txt:1"}
    ]
    json.dumps(first.report)


def test_headerless_news_csv_with_a_conflict_trains_with_drop(tmp_path, tiny_corpus):
    """Issue 11's acceptance: class index, title, description; one text under two labels."""
    from pipeline.cli import main
    from tests.conftest import TINY_OVERRIDES

    classes = sorted(p.name for p in tiny_corpus.iterdir() if p.is_dir())
    rows = []
    for index, label in enumerate(classes, start=1):
        for doc in sorted((tiny_corpus / label).glob("*.txt")):
            words = doc.read_text().split()
            rows.append([str(index), " ".join(words[:3]), " ".join(words[3:])])
    rows.append(["2", rows[0][1], rows[0][2]])  # the first document again, under another class
    path = tmp_path / "news.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    args = ["train", "--data", str(path), "--out", str(tmp_path / "run"), "--quiet"]
    for override in [*TINY_OVERRIDES, "data.header=false", "data.label_column=0", "data.text_column=[1, 2]"]:
        args += ["--set", override]
    assert main(args) == 2  # the default stops, naming both places
    assert main([*args, "--set", "data.on_label_conflict=drop"]) == 0
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    (conflict,) = report["label_conflicts"]
    assert {p["where"] for p in conflict["places"]} == {f"{path}:1", f"{path}:{len(rows)}"}
    assert {p["label"] for p in conflict["places"]} == {"1", "2"}
    assert report["dropped_by_reason"]["label_conflict"] == 2
    assert report["records_read"] == len(rows) == report["records_kept"] + report["records_dropped"]


# --- The same reading rules as `score` -----------------------------------------------------------------


def test_train_reports_an_unterminated_csv_quote_with_its_line(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text('text,label\nfine,a\n"never closed,b\nalso fine,a\n')
    with pytest.raises(
        DataError, match=r"news\.csv:3: unterminated quoted field: the record starting on line 3"
    ):
        ingest(path, DataConfig())


def test_train_decodes_latin1_csv_with_the_fallback_and_can_refuse_it(tmp_path):
    path = tmp_path / "news.csv"
    path.write_bytes(b"text,label\nCaf\xe9 league final,sport\nshares,business\n")
    data = ingest(path, DataConfig())
    assert data.texts[0] == "Café league final"
    assert data.report["decoded_with_fallback"] == [
        {"id": "news.csv:2", "where": f"{path}:2", "encoding": "latin-1", "reason": "not valid UTF-8"}
    ]
    with pytest.raises(DataError, match=r"news\.csv:2: text is not valid UTF-8"):
        ingest(path, DataConfig(fallback_encoding=""))


def test_parquet_and_jsonl_train_the_same_dataset(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = [{"id": f"d{i}", "text": f"text {i}", "label": f"c{i % 2}"} for i in range(10)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    pq.write_table(pa.Table.from_pylist(docs), tmp_path / "d.parquet")
    a, b = ingest(tmp_path / "d.jsonl", DataConfig()), ingest(tmp_path / "d.parquet", DataConfig())
    assert (a.ids, a.texts, a.labels) == (b.ids, b.texts, b.labels) and a.fingerprint() == b.fingerprint()
