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
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# The line `serving.server` writes to stderr once every port answers (kept in
# sync with serving/server.py READY_MESSAGE; test_server_process checks it).
READY_MESSAGE = "textserve model server is ready"

# Loading the half_plus_two models takes ~2 s; a loaded 2-core CI box is slower.
DEFAULT_START_TIMEOUT_S = 120.0


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


def free_port() -> int:
    """Returns a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A free TCP port (function scope)."""
    return free_port()


def server_env() -> dict[str, str]:
    """Environment for a server subprocess: quiet TF logs, unbuffered stderr."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    """A running `python -m serving` process and where it listens.

    Attributes:
      proc: the subprocess.
      grpc_port: TCP gRPC port (0 when started with --port=0).
      rest_port: HTTP port (0 when REST is off).
    """

    proc: subprocess.Popen
    grpc_port: int
    rest_port: int
    _lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr (and stdout) so far."""
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, text: str, timeout_s: float = 30.0) -> bool:
        """Waits until `text` appears in the server's output; False on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.stderr_text():
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader thread drain the pipe
                return text in self.stderr_text()
            time.sleep(0.05)
        return False

    def terminate(self, timeout_s: float = 30.0) -> int:
        """Sends SIGTERM and returns the exit code (kills after `timeout_s`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with self._lock:
                self._lines.append(line)


def _flag_given(args: Sequence[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def start_server(
    args: Sequence[str],
    *,
    rest: bool = True,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
) -> ServerProcess:
    """Starts `python -m serving ARGS` and waits until it prints READY_MESSAGE.

    `--port` and (when `rest`) `--rest_api_port` are added with free ports unless
    `args` sets them. Stops the process and raises if it exits or is not ready
    in time, with its output in the message. Prefer `running_server`.
    """
    args = list(args)
    grpc_port = rest_port = 0
    if not _flag_given(args, "port"):
        grpc_port = free_port()
        args.append(f"--port={grpc_port}")
    else:
        value = next(a for a in args if a.startswith("--port="))
        grpc_port = int(value.split("=", 1)[1])
    if _flag_given(args, "rest_api_port"):
        value = next(a for a in args if a.startswith("--rest_api_port="))
        rest_port = int(value.split("=", 1)[1])
    elif rest:
        rest_port = free_port()
        args.append(f"--rest_api_port={rest_port}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", *args],
        cwd=REPO_ROOT,
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    server = ServerProcess(proc=proc, grpc_port=grpc_port, rest_port=rest_port)
    threading.Thread(target=server._read, daemon=True).start()
    if not server.wait_for_output(READY_MESSAGE, timeout_s):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise RuntimeError(
            f"server {args} did not become ready (exit code {proc.returncode}):\n"
            + server.stderr_text()[-5000:]
        )
    return server


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
