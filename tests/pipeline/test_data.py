"""Reading, validating, deduplicating and splitting labelled documents."""

import json

import pytest

from pipeline.config import DataConfig, SplitConfig
from pipeline.data import ingest, split_ids
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


def test_split_is_stratified_seeded_and_disjoint(tiny_corpus):
    data = ingest(tiny_corpus, DataConfig())
    first = split_ids(data, SplitConfig(seed=3))
    assert first == split_ids(data, SplitConfig(seed=3))
    assert first != split_ids(data, SplitConfig(seed=4))
    all_ids = first["train"] + first["validation"] + first["test"]
    assert sorted(all_ids) == sorted(data.ids)
    for name in ("validation", "test"):
        labels = {doc_id.split("/")[0] for doc_id in first[name]}
        assert labels == set(data.label_names)  # every class in every split


def test_real_bbc_has_101_duplicates_and_one_latin1_file(bbc_path):
    data = ingest(bbc_path, DataConfig())
    report = data.report
    assert report["records_read"] == 2225
    assert report["dropped_by_reason"]["duplicate"] == 101 and report["records_kept"] == 2124
    assert [entry["id"] for entry in report["decoded_with_fallback"]] == ["sport/199.txt"]
    assert len(data.label_names) == 5
