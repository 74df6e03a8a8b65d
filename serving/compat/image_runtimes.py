"""Which TensorFlow and tensorflow-text a pinned `tensorflow/serving` image runs.

Dockerfile.serving pins the image (`ARG TF_SERVING_VERSION=...`); this table
maps each release to what its `tensorflow_model_server` binary is built from,
so the runtime check can install the same versions from PyPI. The pin is read
from the Dockerfile, never repeated elsewhere: moving it to a release without
an entry here fails the check (and tests/serving/test_compat_runtime.py).

Facts come from tensorflow/serving at each release tag: the TensorFlow commit
in `WORKSPACE` (named in RELEASE.md, "based on TF version X"), and the
`org_tensorflow_text` and `icu` archives in `tensorflow_serving/workspace.bzl`.
The image links tensorflow-text's kernels from source; where that source
release has no wheel for the image's TensorFlow (2.12.1 on TF 2.18/2.19), the
table names the wheel for that TensorFlow built with the same ICU, since ICU
decides what `NormalizeUTF8` and `CaseFoldUTF8` answer.

To add a release: read those three files at its tag, add a row, and run
`python -m serving.compat.check_runtime` with the new pin.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageRuntime:
    """What one `tensorflow/serving:<release>` image runs, and the wheels that reproduce it.

    Attributes:
      tf_serving: the image tag (a TF Serving release).
      tensorflow: the TensorFlow release its binary is built from (a PyPI version).
      tensorflow_text: the tensorflow-text wheel whose kernels match the image's.
      image_tensorflow_text: the tensorflow-text source release linked into the binary.
      icu: the ICU release the image's text kernels use (major.minor).
      ubuntu: the image's base, which decides what binaries the container has.
    """

    tf_serving: str
    tensorflow: str
    tensorflow_text: str
    image_tensorflow_text: str
    icu: str
    ubuntu: str

    @property
    def requirements(self) -> list[str]:
        """The pip requirements of the throw-away venv that reproduces the image."""
        return [f"tensorflow=={self.tensorflow}", f"tensorflow-text=={self.tensorflow_text}"]


RUNTIMES: dict[str, ImageRuntime] = {
    runtime.tf_serving: runtime
    for runtime in (
        ImageRuntime("2.18.0", "2.18.0", "2.18.0", "2.12.1", "64.2", "20.04"),
        ImageRuntime("2.18.1", "2.18.1", "2.18.1", "2.12.1", "64.2", "20.04"),
        ImageRuntime("2.19.0", "2.19.0", "2.19.0", "2.12.1", "64.2", "20.04"),
        ImageRuntime("2.19.1", "2.19.1", "2.19.0", "2.12.1", "64.2", "20.04"),
        # TensorFlow commit 72fbba3d (the v2.20.0 tag); tensorflow-text and ICU
        # moved with it, so here the wheel is the very release the image links.
        ImageRuntime("2.20.0", "2.20.0", "2.20.0", "2.20.0", "77.1", "22.04"),
    )
}

_PIN = re.compile(r"^\s*ARG\s+TF_SERVING_VERSION=(\S+)\s*$", re.MULTILINE)


class PinError(ValueError):
    """The Dockerfile's pin is missing, malformed, or has no row in `RUNTIMES`."""


def read_pin(dockerfile: Path) -> str:
    """Returns the TF Serving release Dockerfile.serving builds on (its digest dropped).

    Args:
      dockerfile: path of Dockerfile.serving.

    Returns:
      The release tag, e.g. "2.20.0" for `ARG TF_SERVING_VERSION=2.20.0@sha256:...`.

    Raises:
      PinError: when the file has no single `ARG TF_SERVING_VERSION=X.Y.Z` line.
    """
    try:
        text = dockerfile.read_text("utf-8")
    except OSError as error:
        raise PinError(f"{dockerfile}: cannot read it ({error.strerror}); pass --dockerfile PATH") from error
    pins = _PIN.findall(text)
    if len(pins) != 1:
        raise PinError(f"{dockerfile}: expected one `ARG TF_SERVING_VERSION=X.Y.Z` line, found {len(pins)}")
    tag = pins[0].strip("\"'").partition("@")[0]
    if not re.fullmatch(r"\d+\.\d+\.\d+", tag):
        raise PinError(f"{dockerfile}: TF_SERVING_VERSION={pins[0]} is not a release tag X.Y.Z")
    return tag


def runtime_for(tf_serving: str) -> ImageRuntime:
    """Looks up a release in `RUNTIMES`.

    Raises:
      PinError: naming the known releases, when the release has no row.
    """
    try:
        return RUNTIMES[tf_serving]
    except KeyError:
        raise PinError(
            f"TF Serving {tf_serving} has no row in serving/compat/image_runtimes.py RUNTIMES "
            f"(known: {', '.join(RUNTIMES)}). Add one from tensorflow/serving's WORKSPACE and "
            "tensorflow_serving/workspace.bzl at that tag before moving the pin."
        ) from None
