"""Every expected failure of a `textserve` command, and its exit code, in one place.

A command raises one of these when it cannot go on for a reason the user can
act on; the message says what went wrong, where (file, line, field) and what to
do. `pipeline.cli.main` catches `TextserveError` once, prints
`textserve: error: <message>` without a traceback and exits with the error's
`exit_code`. Anything else that escapes is a bug and keeps its traceback.

Exit codes:

    0    the job ran (bad records, if any, are in the job's errors file)
    1    the job ran and was refused or stopped: gate refused, infra validation
         failed, export did not verify, a scoring run stopped mid-way (resume it)
    2    the job could not start: bad options or config, unreadable input,
         invalid model, unreachable server
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

from typing import Any

EXIT_REFUSED = 1
EXIT_CANNOT_START = 2
EXIT_INTERRUPTED = 130


class TextserveError(Exception):
    """An expected failure with a message for the user (no traceback)."""

    exit_code = EXIT_CANNOT_START


class UsageError(TextserveError, ValueError):
    """Options or config values that cannot work together or are out of range."""


class DataError(TextserveError, ValueError):
    """Input data that cannot be used; the message names the file, line or column."""


class FetchError(TextserveError):
    """A dataset download or its check failed."""

    exit_code = EXIT_REFUSED


class VerificationError(TextserveError):
    """The reloaded export does not answer like the model that was trained."""

    exit_code = EXIT_REFUSED


class ScoringError(TextserveError):
    """A problem that stops a scoring job before it runs (bad input file, bad model, bad options)."""


class RunStopped(ScoringError):
    """A scoring job stopped part-way (server gone, disk full); completed shards are kept."""

    exit_code = EXIT_REFUSED


class ReleaseError(TextserveError):
    """A push, rollback or label cannot proceed; the message says why and what to do.

    Args:
      message: what went wrong and what to do.
      exit_code: `EXIT_CANNOT_START` for unusable input (no export, corrupt
        model, bad path), `EXIT_REFUSED` for a refusal (gate, lock held).
    """

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT_START):
        super().__init__(message)
        self.exit_code = exit_code


class GateRefused(ReleaseError):
    """The candidate is below a threshold or worse than the served baseline.

    Args:
      message: the refusal, with both models' figures.
      comparison: the gate's side-by-side comparison (for the caller to print).
    """

    def __init__(self, message: str, comparison: Any):
        super().__init__(message, exit_code=EXIT_REFUSED)
        self.comparison = comparison


class InfraValidationError(TextserveError):
    """The candidate did not load or did not answer correctly in the serving binary."""

    exit_code = EXIT_REFUSED
