"""Typed serving errors and every mapping of them to gRPC status codes and HTTP statuses.

Every failure the server can describe is raised as a `ServingError` carrying a
gRPC status code and TF Serving's message. This module owns every mapping:

* `as_serving_error(exc, what)`: any exception from below a front end becomes a
  `ServingError` (unexpected ones INTERNAL, logged once with their traceback);
* `abort_grpc(context, error)`: the gRPC front ends answer with the code and
  TF Serving's truncated message;
* `http_status(code)` / `ServingError.http_status`: the REST front end's status
  for `{"error": message}` (TF Serving's net_http mapping);
* `code_name_for_http(status)`: the same table read backwards, for clients.

Keeping them together means one failure looks the same on both surfaces
(TFS_CONTRACT.md §3, §6).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

log = logging.getLogger("serving.errors")

# TF Serving's HTTP mapping of canonical status codes (net_http / http_server.cc).
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# gRPC messages longer than this are cut, as TF Serving's grpc_status_util does.
MAX_ERROR_MESSAGE_CHARS = 1024


class ServingError(Exception):
    """A request failure with a canonical status code and a client-facing message.

    Args:
      code: the `grpc.StatusCode` TF Serving answers with for this failure.
      message: the text clients see, worded as TF Serving words it.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST front end uses for this code."""
        return http_status(self.code)

    def grpc_message(self) -> str:
        """The message as sent over gRPC, truncated like TF Serving's."""
        if len(self.message) <= MAX_ERROR_MESSAGE_CHARS:
            return self.message
        return self.message[:MAX_ERROR_MESSAGE_CHARS] + "...TRUNCATED"

    def __repr__(self) -> str:
        return f"ServingError({self.code.name}, {self.message!r})"


def http_status(code: grpc.StatusCode) -> int:
    """Maps a gRPC status code to TF Serving's HTTP status (unknown codes → 500)."""
    return _HTTP_STATUS.get(code, 500)


# The canonical code a REST status stands for (the table above read backwards; 400 also
# covers FAILED_PRECONDITION and OUT_OF_RANGE, 500 also INTERNAL and DATA_LOSS).
_CODE_FOR_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "UNKNOWN",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_name_for_http(status: int) -> str:
    """The canonical code name an HTTP status from a TF Serving REST API stands for ("UNKNOWN" if none)."""
    return _CODE_FOR_HTTP.get(status, "UNKNOWN")


def as_serving_error(error: BaseException, what: str) -> ServingError:
    """Any exception as the `ServingError` a client is answered with.

    Args:
      error: what a request raised.
      what: the request, for the log and the message (e.g. "Predict on model 'm'").

    Returns:
      `error` itself when it is a `ServingError`; otherwise INTERNAL with the
      exception's text (logged here once with its traceback: it is a bug).
    """
    if isinstance(error, ServingError):
        return error
    log.error("%s failed unexpectedly", escape_for_log(what), exc_info=error)
    return ServingError(grpc.StatusCode.INTERNAL, f"{what} failed: {type(error).__name__}: {error}")


async def abort_grpc(context: Any, error: ServingError) -> NoReturn:
    """Ends a `grpc.aio` call with the error's code and TF Serving's (truncated) message."""
    await context.abort(error.code, error.grpc_message())
    raise AssertionError("unreachable: context.abort() raises")


def escape_for_log(text: str) -> str:
    """`text` with control characters escaped, so a name from a request cannot forge log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def deadline_exceeded() -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def resource_exhausted(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
