"""Batching parameters as TF Serving reads them from `--batching_parameters_file`.

`BatchingOptions.from_proto` resolves a `BatchingParameters` message with TF's
batch-scheduler defaults for unset fields and checks TF's rules (e.g. the last
`allowed_batch_sizes` entry equals the batch size), so a bad file fails start-up.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

# TF's batch-scheduler defaults, used for fields the parameters file leaves unset.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "model_server_batch_threads"


def _wrapped(proto: Any, field: str, default: Any) -> Any:
    """Reads a `google.protobuf` wrapper field (`name { value: X }`), or `default` if unset."""
    if proto is None:
        return default
    try:
        if not proto.HasField(field):
            return default
    except ValueError:
        # Not a message field in this descriptor: a plain scalar.
        return getattr(proto, field, default)
    return getattr(proto, field).value


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Resolved batching parameters.

    Attributes:
      max_batch_size: largest request (rows) accepted; also the batch size
        unless large-batch splitting is on.
      batch_timeout_micros: longest wait for a partial batch to fill.
      max_enqueued_batches: per-queue bound; beyond it requests get UNAVAILABLE.
      num_batch_threads: batches run in parallel.
      thread_pool_name: label of the batching metrics.
      allowed_batch_sizes: if set, batches are padded up to the next of these.
      pad_variable_length_inputs: pad inner dimensions to the largest in the batch.
      enable_large_batch_splitting: split requests across batches instead of
        waiting for a fresh batch.
      max_execution_batch_size: batch size used when splitting is on.
      idle_fast_path: run a batch at once when no batch of its queue is
        running, instead of waiting `batch_timeout_micros` for it to fill
        (textserve's `--batching_idle_fast_path`; TF's scheduler always waits).
    """

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    idle_fast_path: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_batch_size",
            "max_enqueued_batches",
            "num_batch_threads",
            "max_execution_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError(
                f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}"
            )
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] < 1:
                raise ValueError(
                    f"allowed_batch_sizes must be positive and strictly increasing, got {list(sizes)}"
                )
            if sizes[-1] != self.execution_batch_size:
                raise ValueError(
                    f"the last entry of allowed_batch_sizes ({sizes[-1]}) must equal "
                    f"{'max_execution_batch_size' if self.enable_large_batch_splitting else 'max_batch_size'}"
                    f" ({self.execution_batch_size})"
                )

    @property
    def execution_batch_size(self) -> int:
        """Rows per executed batch."""
        if self.enable_large_batch_splitting:
            return self.max_execution_batch_size
        return self.max_batch_size

    @classmethod
    def from_proto(cls, params: Any | None, idle_fast_path: bool = False) -> BatchingOptions:
        """Builds options from a `BatchingParameters` message (None → TF's defaults).

        Args:
          params: the parsed `--batching_parameters_file`, or None.
          idle_fast_path: see the attribute of the same name.

        Raises:
          ValueError: the parameters break TF's rules (e.g. allowed_batch_sizes).
        """
        max_batch = int(_wrapped(params, "max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        splitting = bool(_wrapped(params, "enable_large_batch_splitting", False))
        return cls(
            max_batch_size=max_batch,
            batch_timeout_micros=int(_wrapped(params, "batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS)),
            max_enqueued_batches=int(_wrapped(params, "max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES)),
            num_batch_threads=int(_wrapped(params, "num_batch_threads", os.cpu_count() or 1)),
            thread_pool_name=str(
                _wrapped(params, "thread_pool_name", DEFAULT_THREAD_POOL_NAME) or DEFAULT_THREAD_POOL_NAME
            ),
            allowed_batch_sizes=tuple(
                int(s) for s in (getattr(params, "allowed_batch_sizes", ()) if params else ())
            ),
            pad_variable_length_inputs=bool(_wrapped(params, "pad_variable_length_inputs", False)),
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=int(_wrapped(params, "max_execution_batch_size", max_batch)),
            idle_fast_path=idle_fast_path,
        )
