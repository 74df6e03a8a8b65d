"""Run a model server as a child process: free ports, spawn, wait until ready, stop.

One helper for everything that starts a server to talk to it (tests, the
benchmark, the demo, infra validation):

    from serving.process import ServerProcess

    with ServerProcess.start(["--model_name=m", "--model_base_path=/abs/m"]) as server:
        client = ServingClient(server.grpc_target, "m")
        ...
    print(server.returncode, server.output()[-500:])

By default the command is this interpreter's `python -m serving`; pass
`command=("tensorflow_model_server",)` to run TF Serving's binary instead (it
prints no READY_MESSAGE, so readiness is then a connectable gRPC port, or
`ready_text=None` to return at once and poll on your own). `--port` and
`--rest_api_port` are added with free loopback ports unless the arguments set
them. The child's stdout and stderr are read by a thread into memory (and
appended to `log_path` when given), so a chatty server never blocks on a full
pipe. On Linux the child is killed if this process dies, so no server outlives
its test or push.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from serving.server import READY_MESSAGE

# Loading a model takes seconds; a loaded 2-core box is slower.
DEFAULT_START_TIMEOUT_S = 120.0
# Longer than the server's own drain grace, so a clean stop is never cut short.
DEFAULT_STOP_TIMEOUT_S = 30.0


def free_port(host: str = "127.0.0.1") -> int:
    """Returns a TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a server child: quiet TF C++ logs, unbuffered Python output."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _flag_value(args: Sequence[str], name: str) -> str | None:
    for arg in args:
        if arg == f"--{name}":
            return ""
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


# Run in the child, in place of a pre-exec hook: asks Linux to SIGKILL the child when this
# process dies (PR_SET_PDEATHSIG = 1, kept across execve), then execs the server. A pre-exec
# hook makes CPython run the at-fork handlers in the child, and gRPC's, with gRPC busy on other
# threads of the parent (a test hammering a server, say), start a poller whose epoll fd the
# child then closes before exec: the child aborts (SIGABRT) in 1–2% of spawns.
_EXEC_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent died before prctl: nobody will stop this server\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _launcher(program: str) -> list[str]:
    """What to put before the server's command line so it dies with this process (Linux).

    Raises:
      FileNotFoundError: `program` is not a file or on PATH (as Popen would).
    """
    if sys.platform != "linux":
        return []
    if shutil.which(program) is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
    return [sys.executable, "-S", "-c", _EXEC_WITH_PARENT, str(os.getpid())]


class ServerError(RuntimeError):
    """The server exited or did not become ready; the message ends with its output."""


class ServerProcess:
    """A running model server child process and where it listens.

    Create one with `ServerProcess.start(...)`.

    Attributes:
      proc: the `subprocess.Popen`.
      args: the full command line.
      grpc_port: the gRPC port (0 when started with --port=0).
      rest_port: the REST port (0 when REST is off).
    """

    def __init__(
        self, proc: subprocess.Popen, args: list[str], grpc_port: int, rest_port: int, log: IO | None
    ):
        self.proc = proc
        self.args = args
        self.grpc_port = grpc_port
        self.rest_port = rest_port
        self._log = log
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="server-output", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        args: Sequence[str],
        *,
        command: Sequence[str] | None = None,
        rest: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_path: str | Path | None = None,
        ready_text: str | None = READY_MESSAGE,
        timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> ServerProcess:
        """Spawns `COMMAND ARGS` and waits until it is ready.

        Args:
          args: tensorflow_model_server flags, e.g. ["--model_name=m", "--model_base_path=/abs"].
          command: the program; `python -m serving` of this interpreter by default.
          rest: add a free `--rest_api_port` unless `args` sets one.
          env: the child's environment (default: `server_env()`).
          cwd: the child's working directory.
          log_path: also append the child's output to this file.
          ready_text: wait until this text appears in the output; None returns at once.
            With a custom `command` and the default text, waits for the gRPC port instead.
          timeout_s: how long to wait for readiness.

        Returns:
          The ready `ServerProcess`.

        Raises:
          ServerError: the child exited or was not ready in time (it is then
            stopped); the message holds the command and the end of its output.
        """
        args = list(args)
        grpc_text = _flag_value(args, "port")
        if grpc_text is None:
            grpc_port = free_port()
            args.append(f"--port={grpc_port}")
        else:
            grpc_port = int(grpc_text or 0)
        rest_text = _flag_value(args, "rest_api_port")
        if rest_text is not None:
            rest_port = int(rest_text or 0)
        elif rest:
            rest_port = free_port()
            args.append(f"--rest_api_port={rest_port}")
        else:
            rest_port = 0
        program = list(command) if command else [sys.executable, "-m", "serving"]
        log = open(log_path, "a", encoding="utf-8") if log_path else None
        proc = subprocess.Popen(
            [*_launcher(program[0]), *program, *args],
            cwd=cwd,
            env=dict(env) if env is not None else server_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        server = cls(proc, [*program, *args], grpc_port, rest_port, log)
        if ready_text is None:
            return server
        if command and ready_text == READY_MESSAGE:
            ready = server.wait_for_port(grpc_port, timeout_s)
        else:
            ready = server.wait_for_output(ready_text, timeout_s)
        if not ready:
            server.kill()
            raise ServerError(
                f"server did not become ready (exit code {proc.returncode}): {' '.join(server.args)}\n"
                + server.output()[-5000:]
            )
        return server

    # --- where it listens ----------------------------------------------------

    @property
    def grpc_target(self) -> str:
        """host:port of the gRPC API."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        """http://host:port of the REST API."""
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while it runs."""
        return self.proc.poll()

    # --- its output ----------------------------------------------------------

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        with self._lock:
            return "".join(self._lines)

    def stderr_text(self) -> str:
        """Same as `output()` (stderr and stdout are one stream)."""
        return self.output()

    def wait_for_output(self, text: str, timeout_s: float = 30.0) -> bool:
        """Waits until `text` appears in the output; False on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                self._reader.join(timeout=2.0)  # let the reader drain the pipe
                return text in self.output()
            time.sleep(0.05)
        return False

    def wait_for_port(self, port: int, timeout_s: float = 30.0) -> bool:
        """Waits until 127.0.0.1:`port` accepts a connection; False on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def _read(self) -> None:
        assert self.proc.stdout is not None  # stdout=PIPE
        for line in self.proc.stdout:
            with self._lock:
                self._lines.append(line)
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
        if self._log is not None:
            self._log.close()

    # --- stopping ------------------------------------------------------------

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Sends a signal if the child still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """Sends SIGTERM, waits for the exit (kills after `timeout_s`) and returns the exit code.

        Raises:
          subprocess.TimeoutExpired: it did not exit in time (it was then killed).
        """
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(timeout=2.0)
        return code

    terminate = stop

    def kill(self) -> None:
        """Kills the child at once and reaps it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=2.0)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.stop()
