"""Keeps TensorFlow's start-up chatter off a command's stderr (unless `--verbose`).

Importing TensorFlow and tensorflow-text prints about ten lines on every run:
absl's "All log messages before absl::InitializeLog()" notice, oneDNN and
CPU-feature notes, and on machines without a GPU the CUDA driver probe and its
`cuInit` error. None of it is actionable for a user of `textserve predict`.

`import_tensorflow_quietly` is called by the CLI before anything imports
TensorFlow. It sets TensorFlow's C++ log level to errors-as-exceptions only (a
user's own `TF_CPP_MIN_LOG_LEVEL` wins), hides CUDA on machines that have no NVIDIA
device, and imports TensorFlow with file descriptor 2 pointed at a temporary
file; afterwards every captured line that is not one of those known notices is
written back to stderr, so a real error is never swallowed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# absl/TF C++ log lines: "I0000 00:00:1796160925.312222   17102 port.cc:153] ...".
_CXX_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ (\S+):\d+\] (.*)$")
# Severity I and W are start-up notes; E only for the CUDA probe on a CPU machine.
_NOISE_E_SOURCES = ("cuda_platform.cc", "cuda_executor.cc", "cuda_diagnostics.cc")
_NOISE_PLAIN = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",
)


def _has_nvidia_device() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def _is_noise(line: str) -> bool:
    if line.startswith(_NOISE_PLAIN):
        return True
    match = _CXX_LOG_LINE.match(line)
    if match is None:
        return False
    severity, source, _ = match.groups()
    return severity in "IW" or (severity == "E" and source in _NOISE_E_SOURCES)


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Captures file descriptor 2 (C++ writes too) and replays what is not start-up noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _is_noise(line.rstrip("\n"))
            ]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Imports TensorFlow (and tensorflow-text) for a CLI command, quietly unless `verbose`.

    Args:
      verbose: leave TensorFlow's own logging as it is (`textserve -v`).
    """
    if verbose:
        return
    # 3 hides C++ INFO, WARNING and ERROR lines (e.g. oneDNN's "supports DT_BOOL only
    # on AVX-512" at model load); failures still surface as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not _has_nvidia_device():
        # No GPU: skip the CUDA probe (and its cuInit error) altogether.
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    with _filtered_stderr():
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (its op library prints the same notices)

        tf.constant(0)  # device set-up logs the CPU-feature note: get it over with here
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
