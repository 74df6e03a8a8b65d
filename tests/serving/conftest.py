"""Shared fixtures for the serving tests: test models, free ports, a real server process.

Every serving test talks to a real `python -m serving` process over loopback, so
the pieces needed to start one live here:

    def test_something(tfs_testdata, tmp_path):
        base = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path / "hp2")
        with running_server([f"--model_name=half_plus_two", f"--model_base_path={base}"]) as srv:
            stub = PredictionServiceStub(grpc.insecure_channel(srv.grpc_target))
            ...

For a server shared by a whole module use a module-scoped fixture with
`tmp_path_factory` and `with running_server(...) as srv: yield srv`.

TF Serving's own test models are read from `<repo>/../shared/tfs_testdata`, or
from `$TEXTSERVE_TFS_TESTDATA`; tests that need them are skipped with a reason
when neither exists. They are copied into pytest's tmp dirs, never into the repo.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.process import DEFAULT_START_TIMEOUT_S, ServerProcess, free_port, server_env
from serving.server import READY_MESSAGE

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["READY_MESSAGE", "ServerProcess", "free_port", "server_env"]


def tfs_testdata_dir() -> Path | None:
    """Returns TF Serving's test-model folder, or None when it is not on this machine."""
    configured = os.environ.get("TEXTSERVE_TFS_TESTDATA")
    candidate = Path(configured) if configured else REPO_ROOT.parent / "shared" / "tfs_testdata"
    return candidate if (candidate / "saved_model_half_plus_two_cpu").is_dir() else None


@pytest.fixture(scope="session")
def tfs_testdata() -> Path:
    """TF Serving's own test models (read-only); skips the test when absent."""
    found = tfs_testdata_dir()
    if found is None:
        pytest.skip(
            "TF Serving's test models not found: put them at <repo>/../shared/tfs_testdata "
            "or set TEXTSERVE_TFS_TESTDATA to their folder"
        )
    return found


def copy_model(testdata: Path, model: str, dest: Path, versions: Sequence[str] | None = None) -> Path:
    """Copies a TF Serving test model (optionally only some version dirs) to `dest`.

    Args:
      testdata: the `tfs_testdata` folder.
      model: a model folder name there, e.g. "saved_model_half_plus_two_2_versions".
      dest: where the model's base path is created (must not exist yet).
      versions: version directory names to copy, e.g. ["00000123"]; all when None.

    Returns:
      `dest`, absolute, ready to pass as `--model_base_path` or `base_path`.
    """
    source = testdata / model
    dest.mkdir(parents=True)
    for child in sorted(source.iterdir()):
        if versions is None or child.name in versions:
            shutil.copytree(child, dest / child.name)
    return dest.resolve()


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    """Polls `condition()` every 0.1 s; True once it holds, False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def unused_port() -> int:
    """A free TCP port (function scope)."""
    return free_port()


def start_server(
    args: Sequence[str],
    *,
    rest: bool = True,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
) -> ServerProcess:
    """Starts `python -m serving ARGS` from the repository root and waits for READY_MESSAGE.

    `--port` and (when `rest`) `--rest_api_port` are added with free ports unless
    `args` sets them. Raises `RuntimeError` (a `ServerError`) with the server's
    output if it exits or is not ready in time. Prefer `running_server`.
    """
    return ServerProcess.start(args, rest=rest, cwd=REPO_ROOT, timeout_s=timeout_s)


@contextlib.contextmanager
def running_server(
    args: Sequence[str], *, rest: bool = True, timeout_s: float = DEFAULT_START_TIMEOUT_S
) -> Iterator[ServerProcess]:
    """Context manager: a ready server for the block, SIGTERMed (then killed) afterwards.

    Args:
      args: tensorflow_model_server flags, e.g. ["--model_name=m", "--model_base_path=/abs"].
      rest: also open a REST port (free port added unless args set --rest_api_port).
      timeout_s: how long to wait for the ready line.

    Yields:
      The `ServerProcess` (grpc_target, rest_url, stderr_text(), ...).
    """
    server = start_server(args, rest=rest, timeout_s=timeout_s)
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.terminate()


@dataclass
class ExternalServer:
    """A server this suite did not start: a real TF Serving, for the contract tests.

    Set both `TEXTSERVE_TFS_GRPC` (host:port) and `TEXTSERVE_TFS_REST`
    (http://host:port) and start it as tests/serving/external/README.md shows,
    so it serves the models under the names these tests use.
    """

    grpc_target: str
    rest_url: str

    @property
    def rest_port(self) -> int:
        return urllib.parse.urlsplit(self.rest_url).port or 80


def external_server() -> ExternalServer | None:
    """The external server named by the environment, or None to start our own."""
    grpc_target = os.environ.get("TEXTSERVE_TFS_GRPC")
    rest_url = os.environ.get("TEXTSERVE_TFS_REST")
    if grpc_target and rest_url:
        return ExternalServer(grpc_target, rest_url.rstrip("/"))
    return None


@contextlib.contextmanager
def contract_server(args: Sequence[str], *, rest: bool = True) -> Iterator[ServerProcess | ExternalServer]:
    """The server the TF Serving contract tests talk to.

    With TEXTSERVE_TFS_GRPC and TEXTSERVE_TFS_REST set, that is the external
    server (a real TF Serving) and `args` are not used; otherwise our own
    server is started with `args`, as `running_server` does.
    """
    external = external_server()
    if external is not None:
        yield external
        return
    with running_server(args, rest=rest) as server:
        yield server


def ours_only(server) -> None:
    """Skips a test that inspects our own process (its log, its flags) when the server is external."""
    if isinstance(server, ExternalServer):
        pytest.skip("inspects textserve's own server process; not applicable to an external TF Serving")


def run_server_to_exit(args: Sequence[str], timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Runs `python -m serving ARGS` expecting it to exit by itself (usage, startup errors).

    Returns the CompletedProcess with stdout and stderr as text.
    """
    return subprocess.run(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO_ROOT,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
    )
