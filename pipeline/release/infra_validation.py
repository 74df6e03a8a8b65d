"""Infra validation: does the candidate load in the serving binary and answer like it does here?

Before a push, the candidate is served on loopback by the component that will
serve it in production: `tensorflow_model_server` when it is on PATH, else our
TF-Serving-compatible server (`python -m serving`). Then:

1. wait until REST `GET /v1/models/NAME` reports version 1 AVAILABLE (the
   server has loaded it and replayed its warmup records);
2. send every warmup request from `assets.extra/tf_serving_warmup_requests`
   over gRPC, as recorded;
3. send a sample of test documents over gRPC (one PredictRequest) and over
   REST (`{"instances": [...]}`);
4. compare each answer with the in-process `serving_default`: the same labels,
   probabilities within the export's verify tolerance.

Any failure raises `InfraValidationError` with the reason and the end of the
server's log. The server runs from a temporary model base path holding only
the candidate as version 1, and is stopped afterwards. A server started by a
push that is killed dies with it (Linux parent-death signal).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from model.export import ExportedModel
from pipeline.errors import InfraValidationError
from preprocessing import names

_POLL_S = 0.25
_REQUEST_TIMEOUT_S = 60.0
_LOG_TAIL_CHARS = 3000


@dataclass(frozen=True)
class InfraValidationResult:
    """What infra validation checked.

    Attributes:
      server: the command line that served the candidate.
      warmup_requests: warmup records replayed over gRPC.
      documents: test documents sent over gRPC and again over REST.
      max_abs_difference: largest |served − in-process| probability.
      seconds: wall time, server start included.
    """

    server: str
    warmup_requests: int
    documents: int
    max_abs_difference: float
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.warmup_requests} warmup requests (gRPC) and {self.documents} test documents "
            f"(gRPC and REST) answered as in-process, max |Δp| {self.max_abs_difference:.2e}, "
            f"{self.seconds:.1f}s, server: {self.server}"
        )


def find_model_server() -> tuple[str, ...]:
    """The serving command: `tensorflow_model_server` if on PATH, else our `python -m serving`."""
    binary = shutil.which("tensorflow_model_server")
    return (binary,) if binary else (sys.executable, "-m", "serving")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _parent_death_signal():
    """A pre-exec hook that makes the server die with the push (Linux), or None elsewhere.

    libc is loaded here, in the parent: loading a library between fork and exec
    can deadlock in a process with threads.
    """
    if sys.platform != "linux":
        return None  # the server is still stopped on every normal exit path
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


class _Server:
    """A serving process on loopback ports, with its output in a log file."""

    def __init__(self, command: Sequence[str], model_name: str, base_path: Path, log_path: Path):
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        # No load retries: production retries a failed load for minutes, validation
        # should report it at once (TF Serving then exits at start-up).
        self.command = [
            *command,
            f"--port={self.grpc_port}",
            f"--rest_api_port={self.rest_port}",
            f"--model_name={model_name}",
            f"--model_base_path={base_path}",
            "--max_num_load_retries=0",
        ]
        self.model_name = model_name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_parent_death_signal(),
        )

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text("utf-8", errors="replace")[-_LOG_TAIL_CHARS:]

    def fail(self, reason: str) -> InfraValidationError:
        return InfraValidationError(
            f"infra validation failed: {reason}\nserver: {' '.join(self.command)}\n"
            f"--- server output (end) ---\n{self.log_tail()}"
        )

    def wait_available(self, timeout_s: float) -> None:
        """Polls the REST model-status URL until version 1 is AVAILABLE."""
        url = f"http://127.0.0.1:{self.rest_port}/v1/models/{self.model_name}"
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"the server exited with code {self.proc.returncode} before the model loaded")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    status = json.loads(response.read())
            except (urllib.error.URLError, OSError, json.JSONDecodeError) as error:
                last = str(error)
            else:
                versions = status.get("model_version_status", [])
                if any(v.get("state") == "AVAILABLE" for v in versions):
                    return
                failed = [v for v in versions if v.get("state") == "END"]
                if failed:
                    raise self.fail(f"the model did not load: {failed[0].get('status')}")
                last = json.dumps(status)
            time.sleep(_POLL_S)
        raise self.fail(f"version 1 was not AVAILABLE after {timeout_s:.0f}s (last status: {last})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def read_warmup_requests(version_dir: Path) -> list[predict_pb2.PredictRequest]:
    """The PredictRequests recorded in a version's warmup file ([] when it has none)."""
    path = version_dir / names.ASSETS_EXTRA / names.WARMUP_FILE
    if not path.is_file():
        return []
    requests = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(raw)
        if log.WhichOneof("log_type") == "predict_log":
            requests.append(log.predict_log.request)
    return requests


def _compare(
    where: str,
    texts: Sequence[str],
    labels: Sequence[str],
    probabilities: np.ndarray,
    expected: dict[str, np.ndarray],
    tolerance: float,
) -> float:
    """Checks served answers against in-process ones; returns the largest probability difference."""
    want_labels = [label.decode("utf-8") for label in expected[names.PREDICTED_LABEL]]
    want = expected[names.PROBABILITIES]
    if probabilities.shape != want.shape:
        raise InfraValidationError(
            f"infra validation failed: {where} returned probabilities of shape {probabilities.shape}, "
            f"in-process {want.shape}"
        )
    difference = float(np.max(np.abs(probabilities - want))) if len(texts) else 0.0
    for i, (got, wanted) in enumerate(zip(labels, want_labels)):
        if got != wanted:
            raise InfraValidationError(
                f"infra validation failed: {where} labelled document {i} ({texts[i][:60]!r}) {got!r}, "
                f"in-process {wanted!r}"
            )
    if difference > tolerance:
        raise InfraValidationError(
            f"infra validation failed: {where} probabilities differ from in-process by {difference:.3g} "
            f"> tolerance {tolerance:g}"
        )
    return difference


def _grpc_predict(stub, request: predict_pb2.PredictRequest) -> tuple[list[str], np.ndarray]:
    reply = stub.Predict(request, timeout=_REQUEST_TIMEOUT_S)
    labels = [label.decode("utf-8") for label in tf.make_ndarray(reply.outputs[names.PREDICTED_LABEL])]
    return labels, tf.make_ndarray(reply.outputs[names.PROBABILITIES])


def _rest_predict(port: int, model_name: str, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/{model_name}:predict",
        data=json.dumps({"instances": list(texts)}).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT_S) as response:
        predictions = json.loads(response.read())["predictions"]
    labels = [row[names.PREDICTED_LABEL] for row in predictions]
    return labels, np.array([row[names.PROBABILITIES] for row in predictions], dtype=np.float32)


def validate(
    version_dir: Path,
    model: ExportedModel,
    texts: Sequence[str],
    model_name: str,
    *,
    server_command: Sequence[str],
    scratch_dir: Path,
    tolerance: float,
    timeout_s: float = 300.0,
) -> InfraValidationResult:
    """Serves the candidate on loopback and checks its gRPC and REST answers.

    Args:
      version_dir: the candidate SavedModel directory.
      model: the same SavedModel loaded in this process (the reference answers).
      texts: test documents to send (at least one).
      model_name: the name to serve it under (the warmup records use it).
      server_command: `find_model_server()` or another TF-Serving-compatible binary.
      scratch_dir: an empty local directory for the temporary base path and the server log.
      tolerance: largest allowed |Δp| between served and in-process probabilities.
      timeout_s: how long the server may take to load the model.

    Returns:
      What was checked.

    Raises:
      InfraValidationError: the server did not start or load the model, a
        request failed, or an answer differs; with the end of the server's log.
    """
    started = time.monotonic()
    if not texts:
        raise InfraValidationError("infra validation needs at least one test document.")
    base_path = scratch_dir / "model"
    shutil.copytree(version_dir, base_path / "1")
    server = _Server(server_command, model_name, base_path.resolve(), scratch_dir / "server.log")
    try:
        server.wait_available(timeout_s)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            difference = 0.0
            warmup = read_warmup_requests(version_dir)
            for i, request in enumerate(warmup):
                sent = [t.decode("utf-8") for t in tf.make_ndarray(request.inputs[names.TEXT_KEY])]
                try:
                    labels, probabilities = _grpc_predict(stub, request)
                except grpc.RpcError as error:
                    raise server.fail(
                        f"warmup request {i} over gRPC: {error.code().name} {error.details()}"
                    ) from None
                difference = max(
                    difference,
                    _compare(
                        f"gRPC warmup request {i}",
                        sent,
                        labels,
                        probabilities,
                        model.predict(sent),
                        tolerance,
                    ),
                )
            expected = model.predict(list(texts))
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = names.PREDICT_SIGNATURE
            request.inputs[names.TEXT_KEY].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
            try:
                labels, probabilities = _grpc_predict(stub, request)
            except grpc.RpcError as error:
                raise server.fail(
                    f"gRPC Predict of {len(texts)} test documents: {error.code().name} {error.details()}"
                ) from None
            difference = max(
                difference, _compare("gRPC Predict", texts, labels, probabilities, expected, tolerance)
            )
        try:
            labels, probabilities = _rest_predict(server.rest_port, model_name, texts)
        except urllib.error.HTTPError as error:
            raise server.fail(f"REST predict: HTTP {error.code} {error.read()[:500]!r}") from None
        except (urllib.error.URLError, OSError, KeyError, ValueError) as error:
            raise server.fail(f"REST predict: {error}") from None
        difference = max(
            difference, _compare("REST predict", texts, labels, probabilities, expected, tolerance)
        )
    finally:
        server.stop()
    return InfraValidationResult(
        " ".join(server_command), len(warmup), len(texts), difference, time.monotonic() - started
    )
