"""Settings of the in-graph text preprocessing, and the one argument check every config uses.

The `[preprocessing]` section of a run's TOML config is this dataclass; the
pipeline composes it with the other sections (pipeline/config.py), and
preprocessing/text.py builds the layers from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Closed choices, checked by `check_choice`.
PADDING_SIDES = ("post", "pre")
STOPWORD_PRESETS = ("english", "none")


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises ValueError naming `key`, the value received and the valid choices."""
    if value not in choices:
        raise ValueError(f"`{key}` must be one of {list(choices)}, received {value!r}.")


@dataclass(frozen=True)
class PreprocessingConfig:
    """In-graph text preprocessing (see preprocessing/text.py)."""

    max_tokens: int = 5000  # vocabulary limit, padding and OOV included
    sequence_length: int = 200
    stopwords: str = "english"  # "english", "none", or a file with one word per line
    padding: str = "post"
    truncating: str = "post"

    def __post_init__(self) -> None:
        if self.max_tokens < 3:
            raise ValueError(f"`preprocessing.max_tokens` must be >= 3, received {self.max_tokens!r}.")
        if self.sequence_length < 1:
            raise ValueError(
                f"`preprocessing.sequence_length` must be >= 1, received {self.sequence_length!r}."
            )
        check_choice("preprocessing.padding", self.padding, PADDING_SIDES)
        check_choice("preprocessing.truncating", self.truncating, PADDING_SIDES)
