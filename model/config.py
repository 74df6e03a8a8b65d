"""Settings of the networks: the `[model]` section of a run's config.

Kept with the networks it sizes (model/network.py), as the model's own
contract; the pipeline composes it into the run config.
"""

from __future__ import annotations

from dataclasses import dataclass

from preprocessing.config import check_choice

ARCHITECTURES = ("bilstm", "cnn", "fasttext", "tfidf", "ensemble")
# How the BiLSTM turns its outputs over time into one vector: the tutorial's
# final states ("last"), or the mean of its outputs at every real token ("mean").
LSTM_POOLINGS = ("last", "mean")
# What an `ensemble` may average: any architecture but itself.
MEMBER_ARCHITECTURES = ARCHITECTURES[:-1]


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture; `arch` picks the builder in model/network.py."""

    arch: str = "bilstm"
    embedding_dim: int = 64
    lstm_units: int = 64
    dense_units: int = 64
    # bilstm: "mean" measured 0.9605 ± 0.0159 against "last"'s 0.9438 ± 0.0249 over 5 splits at batch 32
    # (benchmarks/README.md#accuracy): a news article's topic is spread over all its words,
    # and the final state of 200 steps likely keeps mostly the last words.
    lstm_pooling: str = "mean"
    ngrams: int = 2  # tfidf, fasttext: unigrams and bigrams
    tfidf_max_tokens: int = 20000  # tfidf: its own vocabulary (n-grams need more room)
    # tfidf: a term counted c times weighs 1 + ln c, not c: 0.9863 ± 0.0076 against 0.9815 ± 0.0059
    # over 5 splits (benchmarks/README.md#accuracy); a topic shows in which words occur more
    # than in how often one of them repeats.
    tfidf_sublinear_tf: bool = True
    dropout: float = 0.4  # bilstm/cnn: spatial dropout on embeddings; cnn/fasttext/tfidf: before the softmax
    cnn_filters: int = 64  # cnn: filters per kernel width
    cnn_kernel_sizes: tuple[int, ...] = (3, 4, 5)  # cnn: phrase widths in tokens
    ensemble_members: tuple[str, ...] = ("tfidf", "fasttext")  # ensemble: architectures averaged

    def __post_init__(self) -> None:
        check_choice("model.arch", self.arch, ARCHITECTURES)
        check_choice("model.lstm_pooling", self.lstm_pooling, LSTM_POOLINGS)
        sizes = self.cnn_kernel_sizes
        if isinstance(sizes, int):
            sizes = (sizes,)
        if not sizes or any(not isinstance(w, int) or w < 1 for w in sizes):
            raise ValueError(f"`model.cnn_kernel_sizes` must be positive integers, received {sizes!r}.")
        object.__setattr__(self, "cnn_kernel_sizes", tuple(sizes))
        members = self.ensemble_members
        members = (members,) if isinstance(members, str) else tuple(members)
        for member in members:
            check_choice("model.ensemble_members", member, MEMBER_ARCHITECTURES)
        if len(members) < 2:
            raise ValueError(
                f"`model.ensemble_members` needs two or more architectures, received {list(members)}."
            )
        object.__setattr__(self, "ensemble_members", members)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`model.dropout` must be in [0, 1), received {self.dropout!r}.")
