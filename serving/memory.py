"""Memory bounds for decoded inputs: a per-request and a server-wide budget, and giving memory back.

A request's wire size (REST body after gunzip, gRPC message size) is reserved,
times `EXPANSION` (decoding JSON or a TensorProto into numpy arrays, and the
tensors the session makes of them, take a few times the wire size), before it is
decoded, and released when the answer has been built. A request that alone
needs more than `--max_request_input_bytes`, or that would take the in-flight
total past `--max_inflight_input_bytes`, is answered RESOURCE_EXHAUSTED (HTTP
429, TF Serving's mapping) instead of growing the process.

After a large request, glibc keeps the freed arenas mapped; `trim()` asks it to
return them (`malloc_trim`) so RSS comes back down. Everything here runs on the
event loop thread, so the counters need no lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import Iterator

from serving.errors import resource_exhausted

log = logging.getLogger("serving.memory")

# Decoded size per wire byte reserved for a request (see module docstring).
EXPANSION = 4
# Releasing a reservation at least this large trims the heap.
TRIM_AFTER_BYTES = 16 << 20
# Defaults that fit a 2 GiB pod next to the model and the runtime (documented in `serve --help`).
DEFAULT_MAX_REQUEST_INPUT_BYTES = 256 << 20
DEFAULT_MAX_INFLIGHT_INPUT_BYTES = 768 << 20


def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc.malloc_trim if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_TRIM = _malloc_trim()


def trim() -> None:
    """Returns freed heap memory to the operating system where the C library can (glibc)."""
    if _TRIM is not None:
        _TRIM(0)


class InputBudget:
    """Counts the decoded-input bytes in flight and refuses requests beyond the limits.

    Args:
      per_request: most bytes one request may reserve (0 = no limit).
      total: most bytes all requests in flight may hold together (0 = no limit).
    """

    def __init__(self, per_request: int, total: int):
        self.per_request = per_request
        self.total = total
        self.in_flight = 0

    @contextlib.contextmanager
    def reserve(self, wire_bytes: int, what: str) -> Iterator[int]:
        """Holds `wire_bytes * EXPANSION` for the block.

        Args:
          wire_bytes: the request's size on the wire.
          what: how the request is named in the error, e.g. "request body".

        Yields:
          The bytes reserved.

        Raises:
          ServingError: RESOURCE_EXHAUSTED when the request is over either limit.
        """
        need = wire_bytes * EXPANSION
        if self.per_request and need > self.per_request:
            raise resource_exhausted(
                f"The {what} of {wire_bytes} bytes needs about {need} bytes once decoded, more than "
                f"--max_request_input_bytes={self.per_request}; split it into smaller requests"
            )
        if self.total and self.in_flight + need > self.total:
            raise resource_exhausted(
                f"The server holds {self.in_flight} bytes of decoded inputs; this {what} needs {need} "
                f"more, past --max_inflight_input_bytes={self.total}; retry later"
            )
        self.in_flight += need
        try:
            yield need
        finally:
            self.in_flight -= need
            if need >= TRIM_AFTER_BYTES:
                trim()

    @staticmethod
    def reserve_or_none(
        budget: InputBudget | None, wire_bytes: int, what: str
    ) -> contextlib.AbstractContextManager:
        """`budget.reserve(...)`, or a no-op block when there is no budget."""
        if budget is None:
            return contextlib.nullcontext(0)
        return budget.reserve(wire_bytes, what)
