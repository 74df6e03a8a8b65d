"""The one frozen configuration object, built at the entry point and passed down.

Hyperparameters sit at the top of each section, with the BBC News tutorial's
values as defaults. A run resolves its config once:

    defaults  <  TOML file (--config)  <  --set section.key=value overrides

and writes the result to `<run>/config.toml` and into the SavedModel's
`assets.extra/`, so every artifact says exactly how it was made. Unknown
sections or keys are rejected with the list of valid ones.

The key names below are a public interface: other commands and users' scripts
set them (`data.format`, `data.text_column`, `data.label_column`, `split.seed`,
`preprocessing.max_tokens`, `preprocessing.sequence_length`,
`preprocessing.stopwords`, `model.arch`, `train.epochs`, `train.batch_size`).
`train`, `evaluate` and `score` read documents with the same `[data]` section;
`score` takes its job settings from `[score]`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from model.config import ARCHITECTURES, ModelConfig
from preprocessing.config import PreprocessingConfig, check_choice

__all__ = [
    "ARCHITECTURES",
    "ModelConfig",
    "PipelineConfig",
    "PreprocessingConfig",
    "load_config",
    "valid_keys",
]

DATA_FORMATS = ("auto", "folder", "text", "csv", "tsv", "jsonl", "tfrecord", "parquet")
LABEL_CONFLICT_POLICIES = ("error", "drop", "keep_first")
SCORE_OUTPUT_FORMATS = ("jsonl", "csv", "parquet", "tfrecord")
SCORE_RUNNERS = ("tfdata", "beam")

# Settings whose best value depends on the architecture. They apply unless the
# file or a --set gives the key explicitly; the resolved value is what
# config.toml records. A linear model on L2-normalised TF-IDF rows needs a far
# larger step and more passes than the tutorial's BiLSTM.
ARCH_DEFAULTS = {
    # The [train] defaults are the BiLSTM's (see TrainConfig).
    "bilstm": {},
    # Kim's CNN reads longer documents over a larger vocabulary than the tutorial's 200 x 5,000.
    "cnn": {
        "preprocessing.max_tokens": 20000,
        "preprocessing.sequence_length": 300,
        "model.dropout": 0.5,
        "train.learning_rate": 0.001,
        "train.epochs": 15,
        "train.early_stopping_patience": 3,
        "train.clipnorm": 0.0,
        "train.batch_size": 32,
    },
    # fastText: unigrams and bigrams share one vocabulary, so it needs room for
    # both, and a document's n-grams are about twice its words.
    "fasttext": {
        "preprocessing.max_tokens": 50000,
        "preprocessing.sequence_length": 1000,
        "model.dropout": 0.2,
        "train.learning_rate": 0.01,
        "train.epochs": 30,
        "train.early_stopping_patience": 5,
        "train.clipnorm": 0.0,
        "train.batch_size": 32,
    },
    # An ensemble trains each member with that member's defaults (member_config).
    "ensemble": {},
    "tfidf": {
        "train.learning_rate": 0.05,
        "train.epochs": 30,
        "train.early_stopping_patience": 5,
        "train.clipnorm": 0.0,
        "train.batch_size": 32,
        "model.dropout": 0.5,
    },
}


@dataclass(frozen=True)
class DataConfig:
    """Where documents come from and how records are read (train, evaluate and score alike).

    The default `label_column` and `id_column` are used where the input has
    them: `train` needs labels, `score` compares with them when present, and
    ids fall back to `file:line` (or the path, for class folders).
    """

    format: str = "auto"  # auto: folder for directories, else by file extension
    text_column: tuple[str | int, ...] = ("text",)  # several columns are joined with a space
    label_column: str | int = "label"  # "" = none
    id_column: str | int = "id"  # used when present; "" = always derive ids from file and line
    header: bool = True  # CSV/TSV: first row holds column names
    # Text that is not valid UTF-8 is decoded with this encoding and reported; "" = it is an error.
    fallback_encoding: str = "latin-1"
    # CSV/TSV: a quoted field spanning more lines is reported as unterminated (a missing quote).
    csv_max_field_lines: int = 1000
    # One text under two labels: stop ("error"), drop every copy ("drop"), or keep the first label.
    on_label_conflict: str = "error"

    def __post_init__(self):
        check_choice("data.format", self.format, DATA_FORMATS)
        check_choice("data.on_label_conflict", self.on_label_conflict, LABEL_CONFLICT_POLICIES)
        columns = self.text_column
        if isinstance(columns, (str, int)):
            columns = (columns,)
        if not columns:
            raise ValueError("`data.text_column` must name at least one column, received [].")
        object.__setattr__(self, "text_column", tuple(columns))
        if self.csv_max_field_lines < 1:
            raise ValueError(
                f"`data.csv_max_field_lines` must be >= 1, received {self.csv_max_field_lines!r}."
            )
        if self.fallback_encoding:
            try:
                "".encode(self.fallback_encoding)
            except LookupError:
                raise ValueError(
                    f'`data.fallback_encoding` must be a Python codec name (e.g. latin-1) or "", '
                    f"received {self.fallback_encoding!r}."
                ) from None


@dataclass(frozen=True)
class SplitConfig:
    """Train/validation/test split by a hash of each document's content, keyed by `seed`.

    Stable: adding documents never moves existing ones (see pipeline/splits.py).
    """

    seed: int = 42
    validation_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self):
        for name in ("validation_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"`split.{name}` must be in (0, 0.5), received {value!r}.")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation; early stopping restores the best validation-loss weights.

    The defaults are the BiLSTM's. Against the tutorial (10 epochs, Adam 0.001,
    Keras' batch of 32): Adam's step is 0.003 (0.001 is still improving at epoch
    10), gradients are clipped to norm 1 (an LSTM at 0.003 takes loss spikes that
    ruin some splits), up to 20 epochs with patience 4 let slower splits converge,
    and batches of 16 (0.9726 ± 0.0043 over 5 splits against 0.9605 ± 0.0159 at 32,
    benchmarks/README.md#accuracy) take twice the steps per epoch, each noisier.
    """

    epochs: int = 20
    batch_size: int = 16
    learning_rate: float = 0.003  # Adam
    early_stopping_patience: int = 4
    seed: int = 42
    clipnorm: float = 1.0  # Adam's per-variable gradient-norm limit; 0 = none
    repeats: int = 0  # --repeats K: K more runs on split seeds 1..K, for mean ± sd

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"`train.epochs` and `train.batch_size` must be >= 1, received "
                f"{self.epochs!r} and {self.batch_size!r}."
            )
        if self.repeats < 0:
            raise ValueError(f"`train.repeats` must be >= 0, received {self.repeats!r}.")


@dataclass(frozen=True)
class ExportConfig:
    """The SavedModel written to `<run>/export/<version>/`."""

    version: int = 1
    model_name: str = "bbc_news"  # the name TF Serving serves it under
    warmup_records: int = 5
    verify_tolerance: float = 1e-5


@dataclass(frozen=True)
class ReleaseConfig:
    """`textserve push`: the gate's thresholds and how the push runs.

    Read from the run's `config.toml`, then `textserve push --config/--set
    release.*` and the push's own flags (`--skip-infra-validation`,
    `--model-server`, `--infra-timeout`, `--infra-sample`, `--lock-timeout`);
    the resolved section goes into every release record.
    """

    min_accuracy: float = 0.9
    min_macro_f1: float = 0.9
    max_regression: float = 0.01  # refused if the candidate is worse by more, with `confidence`
    min_eval_docs: int = 30  # fewest documents the gate accepts for each check
    confidence: float = 0.95  # of the intervals the gate shows and applies max_regression to
    bootstrap_resamples: int = 1000
    infra_validation: bool = True  # serve the candidate on loopback before publishing
    model_server: str = ""  # "" = tensorflow_model_server when on PATH, else python -m serving
    infra_timeout_s: float = 300.0  # time the server may take to load the candidate
    infra_sample: int = 32  # test documents sent over gRPC and REST
    lock_timeout_s: float = 120.0  # time to wait for a concurrent push

    def __post_init__(self):
        if self.max_regression < 0:
            raise ValueError(f"`release.max_regression` must be >= 0, received {self.max_regression!r}.")
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"`release.confidence` must be in [0.5, 1), received {self.confidence!r}.")
        if self.min_eval_docs < 1 or self.bootstrap_resamples < 100:
            raise ValueError(
                f"`release.min_eval_docs` must be >= 1 and `release.bootstrap_resamples` >= 100, received "
                f"{self.min_eval_docs!r} and {self.bootstrap_resamples!r}."
            )
        if self.infra_sample < 1:
            raise ValueError(f"`release.infra_sample` must be >= 1, received {self.infra_sample!r}.")
        for name in ("infra_timeout_s", "lock_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`release.{name}` must be > 0, received {getattr(self, name)!r}.")


@dataclass(frozen=True)
class ScoreConfig:
    """Batch scoring (`textserve score`); what to read comes from the [data] section."""

    output_format: str = "jsonl"  # jsonl, csv, parquet or tfrecord
    batch_size: int = 256  # documents per model call (or per request with --server)
    num_shards: int = 1
    probabilities: bool = False  # also write every class's probability as p_<class>
    concurrency: int = 4  # with --server: requests in flight
    timeout_s: float = 60.0  # with --server: deadline of one request
    runner: str = "tfdata"  # tfdata: this machine; beam: an Apache Beam pipeline
    beam_args: str = ""  # Beam pipeline options, one shell-quoted string

    def __post_init__(self):
        check_choice("score.output_format", self.output_format, SCORE_OUTPUT_FORMATS)
        check_choice("score.runner", self.runner, SCORE_RUNNERS)
        for name in ("batch_size", "num_shards", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"`score.{name}` must be >= 1, received {getattr(self, name)!r}.")
        if self.timeout_s <= 0:
            raise ValueError(f"`score.timeout_s` must be > 0, received {self.timeout_s!r}.")


@dataclass(frozen=True)
class PipelineConfig:
    """Every setting of a run, in sections."""

    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain TOML-ready values (tuples become lists)."""
        return {
            section.name: {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(getattr(self, section.name)).items()
            }
            for section in dataclasses.fields(self)
        }

    def to_toml(self) -> str:
        """The config as a TOML document that `load_config` reads back."""
        return tomli_w.dumps(self.to_dict())

    def fingerprint(self) -> str:
        """A short hash of the resolved config, for lineage records."""
        return hashlib.sha256(self.to_toml().encode("utf-8")).hexdigest()[:16]


def member_config(config: PipelineConfig, arch: str) -> PipelineConfig:
    """The config one member of an `ensemble` trains with.

    A member takes its own architecture's defaults (`ARCH_DEFAULTS[arch]`)
    for every key the ensemble's config leaves at the global default, and the
    ensemble's value wherever it was set (`--set train.epochs=5` applies to
    every member).

    Args:
      config: the ensemble's resolved config.
      arch: one of `model.ensemble_members`.

    Returns:
      The member's frozen config (`model.arch = arch`).
    """
    plain = PipelineConfig()
    changes: dict[str, dict[str, Any]] = {"model": {"arch": arch}}
    for dotted, value in ARCH_DEFAULTS[arch].items():
        section, key = dotted.split(".")
        if getattr(getattr(config, section), key) == getattr(getattr(plain, section), key):
            changes.setdefault(section, {})[key] = value
    return dataclasses.replace(
        config,
        **{section: dataclasses.replace(getattr(config, section), **kv) for section, kv in changes.items()},
    )


def _sections() -> dict[str, type]:
    return {
        f.name: f.type if isinstance(f.type, type) else globals()[f.type]
        for f in dataclasses.fields(PipelineConfig)
    }


def valid_keys() -> list[str]:
    """Every settable `section.key`, for error messages and --help."""
    return [f"{section}.{f.name}" for section, cls in _sections().items() for f in dataclasses.fields(cls)]


def _parse_override(item: str) -> tuple[str, str, Any]:
    """Splits `section.key=value`; the value is read as a TOML literal when it is one."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ValueError(f"--set expects section.key=value, received {item!r}.")
    dotted, raw = item.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: take it as a string, e.g. model.arch=tfidf
    return section, key, value


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Checks a value against its default's type, converting the safe cases."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"`{key}` must be true or false, received {value!r}.")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple):
        return tuple(value) if isinstance(value, list) else (value,)
    if key in ("data.label_column", "data.id_column") and isinstance(value, (str, int)):
        return value
    if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
        raise ValueError(f"`{key}` must be of type {type(default).__name__}, received {value!r}.")
    return value


# The sizing settings each architecture reads. The others stay in config.toml but change
# nothing, so setting one explicitly for another architecture is a mistake worth a note.
_SEQUENCE_SETTINGS = frozenset(
    {
        "preprocessing.max_tokens",
        "preprocessing.sequence_length",
        "preprocessing.padding",
        "preprocessing.truncating",
        "model.embedding_dim",
        "model.dropout",
    }
)
ARCH_SETTINGS: dict[str, frozenset[str]] = {
    "bilstm": _SEQUENCE_SETTINGS | {"model.lstm_units", "model.dense_units", "model.lstm_pooling"},
    "cnn": _SEQUENCE_SETTINGS | {"model.cnn_filters", "model.cnn_kernel_sizes"},
    "fasttext": _SEQUENCE_SETTINGS | {"model.ngrams"},
    "tfidf": frozenset(
        {"model.ngrams", "model.tfidf_max_tokens", "model.tfidf_sublinear_tf", "model.dropout"}
    ),
}
_SIZING_SETTINGS = frozenset().union(*ARCH_SETTINGS.values())


def unread_overrides(config: PipelineConfig, overrides: Sequence[str]) -> list[str]:
    """The `--set` keys that size a network `config.model.arch` does not build (they have no effect).

    An ensemble's members each read their own settings, so nothing is reported for it.
    """
    reads = ARCH_SETTINGS.get(config.model.arch)
    if reads is None:
        return []
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    return sorted({key for key in keys if key in _SIZING_SETTINGS and key not in reads})


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Resolves defaults, an optional TOML file and `--set` overrides into one config.

    Args:
      path: a TOML file with `[section]` tables, or None for defaults only.
      overrides: `section.key=value` strings, applied after the file.

    Returns:
      The frozen `PipelineConfig`.

    Raises:
      ValueError: naming the unknown section or key (with the valid ones), or
        the key whose value has the wrong type or is out of range.
    """
    values: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValueError(f"cannot read config file {path}: {error}") from error
        for section, table in document.items():
            if not isinstance(table, dict):
                raise ValueError(f"{path}: `{section}` must be a [section] table.")
            for key, value in table.items():
                values.setdefault(section, {})[key] = value
    for item in overrides:
        section, key, value = _parse_override(item)
        values.setdefault(section, {})[key] = value

    arch = values.get("model", {}).get("arch", ModelConfig.arch)
    for dotted, value in ARCH_DEFAULTS.get(arch, {}).items():
        section, key = dotted.split(".")
        values.setdefault(section, {}).setdefault(key, value)

    sections = _sections()
    built = {}
    for section, table in values.items():
        if section not in sections:
            raise ValueError(f"unknown config section [{section}]; valid sections: {', '.join(sections)}.")
        defaults = sections[section]()
        known = {f.name for f in dataclasses.fields(defaults)}
        for key in table:
            if key not in known:
                raise ValueError(
                    f"unknown config key `{section}.{key}`; valid keys: {', '.join(valid_keys())}."
                )
        coerced = {
            key: _coerce(f"{section}.{key}", value, getattr(defaults, key)) for key, value in table.items()
        }
        built[section] = dataclasses.replace(defaults, **coerced)
    return PipelineConfig(**built)
