"""`pipeline/readers`: every format's records, problems and line numbers, without a model.

The Arrow fast paths must give exactly what the per-line rules give; these
tests check that through public behaviour only (a chunk with one bad line is
read line by line, the same data without it is read by Arrow).
"""

from __future__ import annotations

import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import DataConfig
from pipeline.errors import DataError
from pipeline.readers import InputFile, count_records, inspect_input, read_blocks, resolve_inputs


def _rows(path, config: DataConfig | None = None, **kwargs) -> list[dict]:
    config = config or DataConfig()
    (source,) = resolve_inputs([path], config.format)
    rows = [row for block in read_blocks(source, config, **kwargs) for row in block.to_pylist()]
    assert count_records(source, config) == len(rows)  # the count pass agrees with the reader
    return rows


def _problems(rows) -> dict[int, str]:
    return {row["line"]: row["problem"] for row in rows if row["problem"]}


# --- CSV / TSV ----------------------------------------------------------------------------------


def test_csv_unterminated_quote_is_reported_where_it_opened_and_the_rest_is_read(tmp_path):
    path = tmp_path / "news.csv"
    path.write_text('text,label\nfirst,a\nsecond,b\n"third never closes,c\nfourth,d\nfifth,e\nsixth,f\n')
    rows = _rows(path)
    assert len(rows) == 6  # every physical record is accounted for: none swallowed
    assert list(_problems(rows)) == [4]
    assert "unterminated quoted field" in rows[2]["problem"] and "line 4" in rows[2]["problem"]
    assert [r["text"] for r in rows if not r["problem"]] == ["first", "second", "fourth", "fifth", "sixth"]


def test_csv_field_spanning_too_many_lines_counts_as_unterminated(tmp_path):
    path = tmp_path / "news.csv"
    lines = "".join(f"ok {i},b\n" for i in range(10))
    path.write_text(f'text,label\n"opens and never closes,a\n{lines}"two\nlines",c\n')
    rows = _rows(path, DataConfig(csv_max_field_lines=3))
    # Reading resumes on the line after the one that opened the quote: nothing else is lost.
    assert list(_problems(rows)) == [2] and "spanning more than 3 lines" in rows[0]["problem"]
    assert [r["text"] for r in rows[1:]] == [f"ok {i}" for i in range(10)] + ["two\nlines"]
    assert rows[-1]["line"] == 13
    # Within the default limit (1,000 lines) the quote reaches the next one: that merged record is
    # reported at the line where it opened instead of being scored.
    default = _rows(path)
    assert len(default) == 2 and default[0]["line"] == 2 and default[0]["problem"]


def test_csv_stray_quote_inside_a_field_is_text(tmp_path):
    path = tmp_path / "shop.csv"
    path.write_text('text,label\nA 5" screen and a 7" one,tech\n"quoted ""inner"" text",x\n')
    assert [r["text"] for r in _rows(path)] == ['A 5" screen and a 7" one', 'quoted "inner" text']


def test_csv_larger_than_a_read_chunk_matches_pythons_csv(tmp_path):
    """Multi-line quoted fields across the 4 MiB chunk boundaries: same records as the csv module."""
    path = tmp_path / "big.csv.gz"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["uid", "body", "topic"])
    expected = []
    for i in range(30_000):
        body = (
            f'para {i}\nsecond line, with comma and "quote" {"x" * (i % 300)}' if i % 7 == 0 else f"plain {i}"
        )
        writer.writerow([f"u{i}", body, f"t{i % 5}"])
        expected.append((f"u{i}", body, f"t{i % 5}"))
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    rows = _rows(path, DataConfig(text_column=("body",), label_column="topic", id_column="uid"))
    assert [(r["id"], r["text"], r["label"]) for r in rows] == expected
    assert not _problems(rows)


def test_csv_bad_rows_get_their_own_reason_and_the_rest_of_the_chunk_is_unchanged(tmp_path):
    good = "".join(f"{i},text number {i},lab{i % 3}\n" for i in range(200))
    clean = tmp_path / "clean.csv"
    clean.write_text("id,text,label\n" + good)
    dirty = tmp_path / "dirty.csv"
    dirty.write_bytes(b"id,text,label\n" + good.encode() + b"x,short\ny,caf\xe9 au lait,lab0\n")
    reference = _rows(clean)
    rows = _rows(dirty)
    assert [{k: v for k, v in r.items() if k != "source"} for r in rows[:200]] == [
        {k: v for k, v in r.items() if k != "source"} for r in reference
    ]
    assert "row has 2 fields" in rows[200]["problem"] and rows[200]["line"] == 202
    assert rows[201]["text"] == "café au lait" and rows[201]["fallback"] == "latin-1"
    strict = _rows(dirty, DataConfig(fallback_encoding=""))
    assert "not valid UTF-8" in strict[201]["problem"]


def test_csv_header_columns_required_and_optional(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_text("body,topic\nhello,x\n")
    with pytest.raises(DataError, match=r"column 'text' not found; the header has \['body', 'topic'\]"):
        _rows(path)
    config = DataConfig(text_column=("body",))
    (source,) = resolve_inputs([path])
    # Training needs the label column; scoring simply has no labels without it.
    with pytest.raises(DataError, match="column 'label' not found"):
        list(read_blocks(source, config, labels_required=True))
    assert _rows(path, config)[0]["label"] is None
    # An id column given explicitly must exist; the default `id` is used only where present.
    with pytest.raises(DataError, match="column 'uid' not found"):
        _rows(path, DataConfig(text_column=("body",), id_column="uid"))
    assert _rows(path, config)[0]["id"] == "feed.csv:2"


# --- JSON Lines ------------------------------------------------------------------------------------


def test_jsonl_bad_lines_each_get_a_reason(tmp_path):
    path = tmp_path / "feed.jsonl"
    lines = [
        b'{"text": "fine", "id": 7, "label": 3}',
        b"[1, 2]",
        b"42",
        b'{"text": 12345}',
        b'{"text": null}',
        b'{"text": true}',
        b'{"text": {"nested": "x"}}',
        b'{"body": "no text"}',
        b'{"text": "cut',
        b"",
        b'{"text": "caf\xe9"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    rows = _rows(path)
    assert len(rows) == 10  # the blank line is no record
    assert rows[0] == {**rows[0], "id": "7", "label": "3", "text": "fine", "problem": None}
    problems = _problems(rows)
    assert "not a JSON object (it is an array)" in problems[2]
    assert "not a JSON object (it is a number)" in problems[3]
    assert problems[4] == "text key 'text' is a number, not a string"
    assert problems[5] == "text key 'text' is null"
    assert problems[6] == "text key 'text' is a boolean, not a string"
    assert problems[7] == "text key 'text' is an object, not a string"
    assert problems[8] == "missing key(s) ['text']"
    assert problems[9].startswith("malformed JSON")
    assert rows[-1]["line"] == 11 and rows[-1]["text"] == "café" and rows[-1]["fallback"] == "latin-1"


def test_jsonl_arrow_path_and_per_line_path_agree(tmp_path):
    good = b"".join(
        json.dumps(
            {"id": i if i % 2 else f"s{i}", "text": f"doc {i} \u00e9\u4e2d", "label": i % 4, "x": [i]}
        ).encode()
        + b"\n"
        for i in range(500)
    )
    clean, dirty = tmp_path / "clean.jsonl", tmp_path / "dirty.jsonl"
    clean.write_bytes(good)
    dirty.write_bytes(good + b"not json\n")
    reference = [{k: v for k, v in r.items() if k != "source"} for r in _rows(clean)]
    rows = [{k: v for k, v in r.items() if k != "source"} for r in _rows(dirty)]
    assert rows[:500] == reference and len(rows) == 501
    assert reference[1]["id"] == "1" and reference[2]["id"] == "s2" and reference[3]["label"] == "3"


def test_id_key_is_used_where_present_and_reported(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"text": "y"}\n{"id": "", "text": "z"}\n')
    assert [r["id"] for r in _rows(path)] == ["a", "feed.jsonl:2", "feed.jsonl:3"]
    info = inspect_input(InputFile(path, "jsonl"), DataConfig())
    assert (info.count, info.id_column, info.label_column) == (3, "id", None)
    assert [r["id"] for r in _rows(path, DataConfig(id_column=""))] == [f"feed.jsonl:{n}" for n in (1, 2, 3)]


# --- Parquet -----------------------------------------------------------------------------------------


def test_parquet_rows_nulls_and_row_groups(tmp_path):
    path = tmp_path / "docs.parquet"
    table = pa.table({"id": [10, 11, 12, 13], "text": ["a", None, "c", ""], "label": ["x", "y", None, "z"]})
    pq.write_table(table, path, row_group_size=2)
    rows = _rows(path)
    assert [(r["id"], r["text"], r["label"], r["line"]) for r in rows] == [
        ("10", "a", "x", 1),
        ("11", "", "y", 2),
        ("12", "c", None, 3),
        ("13", "", "z", 4),
    ]
    assert _problems(rows) == {2: "text is null (row group 0)"}


def test_parquet_structural_problems_name_the_file(tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.parquet: not a readable Parquet file"):
        _rows(empty)
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"body": ["a"], "topic": ["x"]}), no_text)
    with pytest.raises(DataError, match=r"column 'text' not found; the file has columns \['body', 'topic'\]"):
        _rows(no_text)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(DataError, match="text column 'text' holds int64, not strings"):
        _rows(numbers)
    no_rows = tmp_path / "no_rows.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), no_rows)
    assert _rows(no_rows) == []


def test_same_records_from_jsonl_csv_and_parquet(tmp_path):
    docs = [(f"d{i}", f'text, with "quotes" {i}\nand a second line', f"lab{i % 3}") for i in range(50)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": d, "text": t, "label": lab}) + "\n" for d, t, lab in docs))
    with open(tmp_path / "docs.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "text", "label"), *docs])
    pq.write_table(
        pa.table({"id": [d[0] for d in docs], "text": [d[1] for d in docs], "label": [d[2] for d in docs]}),
        tmp_path / "docs.parquet",
    )
    seen = [
        [(r["id"], r["text"], r["label"]) for r in _rows(tmp_path / name)]
        for name in ("docs.jsonl", "docs.csv", "docs.parquet")
    ]
    assert seen[0] == seen[1] == seen[2] == docs


# --- Plain text and folders -------------------------------------------------------------------------------


def test_text_lines_keep_blank_lines_and_decode_with_the_fallback(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first\r\n\ncaf\xe9\nlast without newline")
    rows = _rows(path)
    assert [(r["id"], r["text"], r["fallback"]) for r in rows] == [
        ("docs.txt:1", "first", None),
        ("docs.txt:2", "", None),
        ("docs.txt:3", "café", "latin-1"),
        ("docs.txt:4", "last without newline", None),
    ]
    assert "not valid UTF-8" in _rows(path, DataConfig(fallback_encoding=""))[2]["problem"]
