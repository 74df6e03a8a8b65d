"""Typed serving errors and their mapping to gRPC status codes and HTTP statuses.

Every failure the server can describe is raised as a `ServingError` carrying a
gRPC status code and TF Serving's message. The gRPC layer aborts with the code;
the REST layer maps the code to HTTP with `http_status` and answers
`{"error": message}`. Keeping both mappings here means one failure looks the
same on both surfaces (TFS_CONTRACT.md §3, §6).
"""

from __future__ import annotations

import grpc

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
