"""Cutting a byte stream into physical records, with numpy, before any parser sees it.

Line-based formats (text, JSON Lines) are cut at newlines. CSV/TSV records may
span lines inside quoted fields, so the cut needs the quote state at every
newline: the number of quotes before it is even outside a quoted field. Two
cases would make that count lie, and both are handled here so that no record
silently swallows the ones after it:

* a quote in the middle of an unquoted field (`5" screen`) is not special in
  CSV (it opens nothing): quotes with a non-delimiter, non-quote byte on both
  sides are not counted;
* a quoted field that never closes, or spans more than `max_lines` lines, is
  reported as one bad record at the line where its record started, and
  reading resumes on the next line.

Counting and reading both use these functions, so `read = scored + errored`
holds on physical records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNK_BYTES = 4 << 20  # read size: big enough for the parsers' threads, small enough for flat memory
_NEWLINE, _QUOTE, _CR = 10, 34, 13
_BOM = b"\xef\xbb\xbf"
_SPACE_BYTES = b" \t\r\n\x0b\x0c"
_SPACES = np.frombuffer(_SPACE_BYTES, np.uint8)


def read_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yields a file's bytes in chunks, gunzipping `.gz`; a UTF-8 byte-order mark is dropped.

    Raises:
      OSError, EOFError: an unreadable or truncated file (the callers name it).
    """
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        first = True
        while True:
            chunk = handle.read(chunk_bytes)
            if not chunk:
                return
            if first and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
            first = False
            yield chunk


@dataclass(frozen=True)
class Lines:
    """Complete lines of a buffer: line `i` is `data[starts[i]:ends[i]]` (no newline), on line `first + i`."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    first: int

    def nonblank(self) -> np.ndarray:
        """Indices of lines holding more than ASCII whitespace (JSON Lines skips the others).

        Only lines that are empty or start with whitespace are looked at byte by byte: a JSON line
        starts with `{`, so the check costs one byte per line, not one per byte.
        """
        if not len(self.starts):
            return np.zeros(0, np.int64)
        arr = np.frombuffer(self.data, np.uint8)
        lengths = self.ends - self.starts
        first = (
            arr[np.minimum(self.starts, max(len(arr) - 1, 0))]
            if len(arr)
            else np.zeros(len(lengths), np.uint8)
        )
        suspect = np.flatnonzero((lengths == 0) | np.isin(first, _SPACES))
        solid = np.ones(len(lengths), bool)
        for i in suspect:
            solid[i] = bool(self.data[self.starts[i] : self.ends[i]].strip(_SPACE_BYTES))
        return np.flatnonzero(solid)


def line_frames(chunks: Iterator[bytes]) -> Iterator[Lines]:
    """Cuts a chunk stream at newlines; a last line without a newline is a line too."""
    carry = b""
    line = 1
    for chunk in chunks:
        buf = carry + chunk if carry else chunk
        newlines = np.flatnonzero(np.frombuffer(buf, np.uint8) == _NEWLINE)
        if not len(newlines):
            carry = buf
            continue
        cut = int(newlines[-1]) + 1
        starts = np.concatenate([[0], newlines[:-1] + 1])
        yield Lines(buf[:cut], starts, newlines, line)
        line += len(newlines)
        carry = buf[cut:]
    if carry:
        yield Lines(carry, np.zeros(1, np.int64), np.array([len(carry)], np.int64), line)


@dataclass(frozen=True)
class Records:
    """CSV records cut from a buffer: record `i` is `data[starts[i]:ends[i]]` (newline included).

    `lines[i]` is the physical line where record `i` starts; blank records are kept
    (the parser skips them) and `nonblank()` names the others.
    """

    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray

    def nonblank(self) -> np.ndarray:
        """Indices of records that are not empty lines (`\\n` or `\\r\\n` alone)."""
        arr = np.frombuffer(self.data, np.uint8)
        length = self.ends - self.starts
        last = arr[np.maximum(self.ends - 1, 0)] if len(arr) else np.zeros(0, np.uint8)
        before = arr[np.maximum(self.ends - 2, 0)] if len(arr) else np.zeros(0, np.uint8)
        blank = (length == 0) | ((length == 1) & (last == _NEWLINE))
        blank |= (length == 2) & (last == _NEWLINE) & (before == _CR)
        return np.flatnonzero(~blank)


@dataclass(frozen=True)
class BadRecord:
    """A record whose quoted field never closes (or spans too many lines), at the line it started."""

    line: int
    reason: str


def _counted_quotes(arr: np.ndarray, delimiter: int) -> np.ndarray:
    """Positions of the quotes that open, close or escape: not those alone inside an unquoted field."""
    quotes = np.flatnonzero(arr == _QUOTE)
    if not len(quotes):
        return quotes
    n = len(arr)
    before = np.where(quotes > 0, arr[np.maximum(quotes - 1, 0)], _NEWLINE)
    after = np.where(quotes < n - 1, arr[np.minimum(quotes + 1, n - 1)], _NEWLINE)
    edge = (_NEWLINE, _CR, _QUOTE, delimiter)
    return quotes[np.isin(before, edge) | np.isin(after, edge)]


def csv_frames(chunks: Iterator[bytes], delimiter: str, max_lines: int) -> Iterator[Records | BadRecord]:
    """Cuts a CSV/TSV chunk stream into records, in order, reporting unterminated quoted fields.

    Args:
      chunks: the file's bytes (see `read_chunks`).
      delimiter: "," or "\\t".
      max_lines: a record spanning more physical lines is reported as a
        `BadRecord` (a quote that never closes) and reading resumes on its
        second line.
    """
    delim = ord(delimiter)
    carry = b""
    line = 1
    iterator = iter(chunks)
    while True:
        chunk = next(iterator, None)
        final = chunk is None
        buf = carry + chunk if chunk is not None else carry
        carry = b""
        while buf:
            arr = np.frombuffer(buf, np.uint8)
            newlines = np.flatnonzero(arr == _NEWLINE)
            quotes = _counted_quotes(arr, delim)
            outside = (np.searchsorted(quotes, newlines) & 1) == 0
            ends = newlines[outside] + 1
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
            # Physical lines each record covers: from its first line to the one its newline ends.
            first_newline = np.searchsorted(newlines, starts)
            spans = np.searchsorted(newlines, ends - 1) - first_newline + 1
            too_long = np.flatnonzero(spans > max_lines)
            if len(too_long):
                bad = int(too_long[0])
                if bad:
                    yield Records(buf[: starts[bad]], starts[:bad], ends[:bad], line + first_newline[:bad])
                bad_line = line + int(first_newline[bad])
                yield BadRecord(bad_line, _too_long(bad_line, max_lines))
                resume = int(newlines[first_newline[bad]]) + 1
                buf, line = buf[resume:], bad_line + 1
                continue
            tail = int(ends[-1]) if len(ends) else 0
            if len(ends):
                yield Records(buf[:tail], starts, ends, line + first_newline)
            consumed = int(np.searchsorted(newlines, tail))  # newlines inside the records just cut
            line += consumed
            rest = buf[tail:]
            if not rest:
                break
            rest_newlines = len(newlines) - consumed
            if rest_newlines < max_lines:
                if not final:
                    carry = rest  # an unfinished record: wait for the next chunk
                    break
                if (len(quotes) - int(np.searchsorted(quotes, tail))) % 2 == 0:
                    # The last record, without a newline after it.
                    yield Records(
                        rest, np.zeros(1, np.int64), np.array([len(rest)], np.int64), np.array([line])
                    )
                    break
                yield BadRecord(line, _unterminated(line))
            else:
                yield BadRecord(line, _too_long(line, max_lines))
            cut = rest.find(b"\n")
            if cut < 0:
                break
            buf, line = rest[cut + 1 :], line + 1
        if final:
            return


def _unterminated(line: int) -> str:
    return (
        f"unterminated quoted field: the record starting on line {line} opens a quote that never closes "
        f"(reading resumed on line {line + 1})"
    )


def _too_long(line: int, max_lines: int) -> str:
    return (
        f"unterminated quoted field: the record starting on line {line} has a quoted field spanning more "
        f"than {max_lines} lines (data.csv_max_field_lines; reading resumed on line {line + 1})"
    )
