"""Stable train/validation/test splits by content hash, and training-document fingerprints.

Each document goes to a split by a 64-bit hash of its normalised content
(whitespace folded, case folded: the same key deduplication uses), keyed by
`split.seed`, as TFX ExampleGen's hash buckets do:

    u = hash(seed, content) / 2**64
    test        if u < split.test_fraction
    validation  if u < split.test_fraction + split.validation_fraction
    train       otherwise

A document's split depends on nothing but its own text and the seed, so adding
documents never moves existing ones, renaming a file does not move it, and two
runs with the same seed agree on every document they share. Each class gets
the configured fractions in expectation; the realised class balance per split
(and any class a split lacks) is reported in `splits.json`, because a hash
cannot promise exact stratification without giving up that stability.

`training_fingerprints` records the training documents as a compact, exact set
of unsalted 64-bit content hashes for the model card, so the release gate and
`textserve evaluate` can tell which documents a model trained on. Sorted,
delta-encoded and zlib-compressed, the set takes about 7.2 bytes per document
(956 KB of base64 in the card for 100,000 documents, measured). Two different
texts share a 64-bit hash with probability about n·m / 2**64 (5e-10 for
100,000 against 100,000 documents), so membership answers are exact in practice.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config import SplitConfig
from pipeline.data import normalized_content
from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.data import Dataset

SPLITS = ("train", "validation", "test")
FINGERPRINT_ALGORITHM = "blake2b-64 of whitespace-folded, case-folded UTF-8 text"
FINGERPRINT_ENCODING = "sorted uint64, first value then deltas, big-endian, zlib, base64"
CARD_KEY = "training_fingerprints"
_PERSON = b"textserve-doc"  # separates these hashes from any other use of blake2b


def _digest(text: str, key: bytes = b"") -> int:
    data = normalized_content(text).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, key=key, person=_PERSON).digest(), "big")


def split_of(text: str, config: SplitConfig) -> str:
    """The split one document belongs to under `config` (see the module docstring)."""
    u = _digest(text, key=f"split.seed={config.seed}".encode()) / 2**64
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.validation_fraction:
        return "validation"
    return "train"


def split_ids(dataset: Dataset, config: SplitConfig) -> dict[str, list[str]]:
    """Assigns every document of a deduplicated dataset to train, validation or test by content hash.

    Args:
      dataset: the documents (ids, texts, labels).
      config: the seed and the validation/test fractions.

    Returns:
      `{"train": [...], "validation": [...], "test": [...]}`, document ids in dataset order.

    Raises:
      DataError: a split came out empty (too few documents for the fractions).
    """
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for doc_id, text in zip(dataset.ids, dataset.texts):
        splits[split_of(text, config)].append(doc_id)
    empty = [name for name in SPLITS if not splits[name]]
    if empty:
        raise DataError(
            f"the {' and '.join(empty)} split of {len(dataset.ids)} documents came out empty "
            f"(split.validation_fraction {config.validation_fraction}, split.test_fraction "
            f"{config.test_fraction}); add documents or raise the fractions."
        )
    return splits


def class_balance(dataset: Dataset, splits: Mapping[str, Sequence[str]]) -> dict:
    """How each class is spread over the splits, against the whole dataset.

    Args:
      dataset: the documents that were split.
      splits: from `split_ids`.

    Returns:
      `{"counts": {split: {label: n}}, "shares": {split: {label: fraction of the split}},
      "overall": {label: fraction of all documents}, "largest_deviation": float,
      "missing": [{"split", "label"}]}`; `largest_deviation` is the largest
      difference between a class's share of a split and of all documents.
    """
    label_of = dict(zip(dataset.ids, dataset.labels))
    overall_counts = Counter(dataset.labels)
    total = len(dataset.labels)
    overall = {label: overall_counts[label] / total for label in sorted(overall_counts)}
    counts, shares, missing, deviation = {}, {}, [], 0.0
    for name in SPLITS:
        split_counts = Counter(label_of[doc_id] for doc_id in splits[name])
        size = max(len(splits[name]), 1)
        counts[name] = {label: split_counts.get(label, 0) for label in overall}
        shares[name] = {label: round(counts[name][label] / size, 4) for label in overall}
        for label in overall:
            deviation = max(deviation, abs(counts[name][label] / size - overall[label]))
            if not counts[name][label]:
                missing.append({"split": name, "label": label})
    return {
        "counts": counts,
        "shares": shares,
        "overall": {label: round(share, 4) for label, share in overall.items()},
        "largest_deviation": round(deviation, 4),
        "missing": missing,
    }


def splits_record(dataset: Dataset, splits: Mapping[str, Sequence[str]], config: SplitConfig) -> dict:
    """What `splits.json` holds: the method, the seed, the class balance and the ids per split."""
    return {
        "method": "content hash (see pipeline/splits.py)",
        "seed": config.seed,
        "validation_fraction": config.validation_fraction,
        "test_fraction": config.test_fraction,
        "class_balance": class_balance(dataset, splits),
        **{name: list(splits[name]) for name in SPLITS},
    }


def describe_balance(balance: dict) -> str:
    """One line per split: its size and each class's share, and any class it lacks."""
    lines = []
    for name in SPLITS:
        counts = balance["counts"][name]
        shares = ", ".join(f"{label} {share:.0%}" for label, share in balance["shares"][name].items())
        lines.append(f"      {name:<10} {sum(counts.values()):>6} documents: {shares}")
    lines.append(
        f"      largest class-share deviation from the whole dataset: {balance['largest_deviation']:.1%}"
    )
    for gap in balance["missing"]:
        lines.append(f"      warning: no {gap['label']!r} document in the {gap['split']} split")
    return "\n".join(lines)


# --- Training-document fingerprints ----------------------------------------------------------


def fingerprints(texts: Iterable[str]) -> np.ndarray:
    """The unsalted 64-bit content hashes of `texts`, in order (dtype uint64)."""
    return np.array([_digest(text) for text in texts], dtype=np.uint64)


class FingerprintSet:
    """An exact set of document fingerprints, as stored in a model card.

    Args:
      values: the 64-bit fingerprints (any order, duplicates allowed).
    """

    def __init__(self, values: np.ndarray):
        self.values = np.unique(np.asarray(values, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.values)

    def contains(self, texts: Sequence[str]) -> np.ndarray:
        """For each text, whether its fingerprint is in the set (a bool array)."""
        wanted = fingerprints(texts)
        if not len(self.values) or not len(wanted):
            return np.zeros(len(wanted), dtype=bool)
        at = np.searchsorted(self.values, wanted).clip(max=len(self.values) - 1)
        return self.values[at] == wanted

    def to_card(self) -> dict:
        """The JSON-ready form for the model card (see the module docstring for its size)."""
        deltas = np.diff(self.values, prepend=np.uint64(0))
        packed = zlib.compress(deltas.astype(">u8").tobytes(), 9)
        return {
            "algorithm": FINGERPRINT_ALGORITHM,
            "encoding": FINGERPRINT_ENCODING,
            "count": len(self.values),
            "data": base64.b64encode(packed).decode("ascii"),
        }

    @classmethod
    def from_card(cls, card: Mapping) -> FingerprintSet | None:
        """Reads the set back from a model card; None when the card has none (older exports).

        Raises:
          ValueError: the card's entry is there but unreadable or of another algorithm.
        """
        entry = card.get(CARD_KEY)
        if not entry:
            return None
        if entry.get("algorithm") != FINGERPRINT_ALGORITHM or entry.get("encoding") != FINGERPRINT_ENCODING:
            raise ValueError(
                f"model card {CARD_KEY} use {entry.get('algorithm')!r} / {entry.get('encoding')!r}; "
                f"this textserve reads {FINGERPRINT_ALGORITHM!r} / {FINGERPRINT_ENCODING!r}."
            )
        try:
            raw = zlib.decompress(base64.b64decode(entry["data"]))
        except (KeyError, ValueError, zlib.error) as error:
            raise ValueError(f"model card {CARD_KEY} data is corrupt: {error}") from error
        values = np.cumsum(np.frombuffer(raw, dtype=">u8").astype(np.uint64), dtype=np.uint64)
        if len(values) != entry.get("count"):
            raise ValueError(f"model card {CARD_KEY}: {len(values)} values but count {entry.get('count')}.")
        return cls(values)


def training_fingerprints(texts: Iterable[str]) -> dict:
    """The model card entry for the documents a model trained on (see `FingerprintSet.to_card`)."""
    return FingerprintSet(fingerprints(texts)).to_card()
