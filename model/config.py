"""Settings of the networks: the `[model]` section of a run's config.

Kept with the networks it sizes (model/network.py), as the model's own
contract; the pipeline composes it into the run config.
"""

from __future__ import annotations

from dataclasses import dataclass

from preprocessing.config import check_choice

ARCHITECTURES = ("bilstm", "tfidf")


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture; `arch` picks the builder in model/network.py."""

    arch: str = "bilstm"
    embedding_dim: int = 64
    lstm_units: int = 64
    dense_units: int = 64
    ngrams: int = 2  # tfidf: unigrams and bigrams
    tfidf_max_tokens: int = 20000  # tfidf: its own vocabulary (n-grams need more room)
    dropout: float = 0.4  # bilstm: spatial dropout on embeddings; tfidf: dropout on features

    def __post_init__(self) -> None:
        check_choice("model.arch", self.arch, ARCHITECTURES)
