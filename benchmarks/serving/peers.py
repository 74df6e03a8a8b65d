"""The Python servers a user would otherwise pick, serving the same SavedModel side by side.

KServe's ModelServer, LitServe and BentoML are installed into a throw-away venv
that this module creates (`ensure_venv`), never into the project's
dependencies; the apps they run are ours (`peer_apps/`). Each gets one worker
process and, where it has one, its own dynamic batching with the same limits
as textserve's shipped config (max batch size, timeout).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.serving.common import quiet_env

APPS = Path(__file__).resolve().parent / "peer_apps"
PEER_PACKAGES = ("kserve", "litserve", "bentoml")
START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class PeerSpec:
    name: str
    path: str  # the predict URL path
    batching: str  # how it batches, for the table


PEERS = {
    "kserve": PeerSpec("kserve", "/v1/models/bbc_news:predict", "none (the batcher is KServe's Go sidecar)"),
    "litserve": PeerSpec("litserve", "/predict", "LitServe max_batch_size / batch_timeout"),
    "bentoml": PeerSpec("bentoml", "/predict", "BentoML adaptive batching"),
}


def ensure_venv(venv: Path) -> Path:
    """Creates `venv` with the peers and this project's TensorFlow versions; returns its python.

    Raises:
      SystemExit: the venv cannot be made (no network to the package index, a conflict).
    """
    python = venv / "bin" / "python"
    if (
        python.is_file()
        and subprocess.run([python, "-c", "import kserve, litserve, bentoml"]).returncode == 0
    ):
        return python
    from importlib import metadata

    pins = [f"{name}=={metadata.version(name)}" for name in ("tensorflow", "tensorflow-text")]
    print(f"creating the peers' venv at {venv} (kserve, litserve, bentoml; a few minutes) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "-q", *pins, *PEER_PACKAGES],
    ]
    for step in steps:
        if subprocess.run(step).returncode != 0:
            raise SystemExit(
                f"could not build the peers' venv: {' '.join(step)} failed; run with --peers none"
            )
    return python


class PeerServer:
    """One peer server process on a free port, ready to answer Predict.

    Args:
      spec: which peer.
      python: the peers' venv interpreter.
      version: the SavedModel version directory.
      port: where it listens (127.0.0.1).
      max_batch_size / batch_timeout_ms: its batching limits.
      log_path: where its output goes.

    Raises:
      SystemExit: it exited or did not answer within START_TIMEOUT_S.
    """

    def __init__(
        self,
        spec: PeerSpec,
        python: Path,
        version: Path,
        port: int,
        max_batch_size: int,
        batch_timeout_ms: float,
        log_path: Path,
    ):
        self.spec = spec
        self.port = port
        self.url = f"http://127.0.0.1:{port}{spec.path}"
        env = quiet_env()
        if spec.name == "bentoml":
            command = [
                str(python),
                "-m",
                "bentoml",
                "serve",
                "bentoml_app:TextClassifier",
                "--port",
                str(port),
            ]
            command += ["--host", "127.0.0.1"]
            env.update(
                BENCH_MODEL_DIR=str(version),
                BENCH_MAX_BATCH_SIZE=str(max_batch_size),
                BENCH_MAX_LATENCY_MS=str(max(1000, int(batch_timeout_ms * 10))),
            )
        else:
            command = [
                str(python),
                str(APPS / f"{spec.name}_app.py"),
                "--model",
                str(version),
                "--port",
                str(port),
            ]
            if spec.name == "litserve":
                command += [
                    "--max-batch-size",
                    str(max_batch_size),
                    "--batch-timeout-ms",
                    str(batch_timeout_ms),
                ]
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            command,
            cwd=APPS,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its worker processes stop with it
        )
        self._wait_ready(log_path)

    def _wait_ready(self, log_path: Path) -> None:
        body = json.dumps({"instances": ["The striker scored twice in the cup final"]}).encode()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            request = urllib.request.Request(
                self.url, data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as reply:
                    json.loads(reply.read())
                    return
            except (OSError, urllib.error.HTTPError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise SystemExit(f"peer {self.spec.name} did not start; its output:\n{log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stops the peer and its workers (its process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
