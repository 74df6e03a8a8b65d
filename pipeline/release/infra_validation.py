"""Infra validation: does the candidate load in the serving binary and answer like it does here?

Before a push, the candidate is served on loopback by the component that will
serve it in production: `tensorflow_model_server` when it is on PATH, else our
TF-Serving-compatible server (`python -m serving`), started with
`serving.process.ServerProcess` (free ports, output captured, killed if the
push dies). Then, through the generic `serving.client.ServingClient`:

1. wait until the model status reports version 1 AVAILABLE (the server has
   loaded it and replayed its warmup records);
2. send every warmup request from `assets.extra/tf_serving_warmup_requests`
   over gRPC, with its recorded inputs and signature;
3. send a sample of test documents over gRPC and over REST;
4. compare each answer with the in-process `serving_default`: the same labels,
   probabilities within the export's verify tolerance.

Any failure raises `InfraValidationError` with the reason and the end of the
server's log. The server runs from a temporary model base path holding only
the candidate as version 1, and is stopped afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from model.export import ExportedModel
from pipeline.errors import InfraValidationError
from preprocessing import names
from serving.client import ClientError, ServingClient
from serving.process import ServerProcess

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
        """One line for the push's output."""
        return (
            f"{self.warmup_requests} warmup requests (gRPC) and {self.documents} test documents "
            f"(gRPC and REST) answered as in-process, max |Δp| {self.max_abs_difference:.2e}, "
            f"{self.seconds:.1f}s, server: {self.server}"
        )


def find_model_server() -> tuple[str, ...]:
    """The serving command: `tensorflow_model_server` if on PATH, else our `python -m serving`."""
    binary = shutil.which("tensorflow_model_server")
    return (binary,) if binary else (sys.executable, "-m", "serving")


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


class _Validation:
    """One served candidate: the server, its clients, and failures that carry its log."""

    def __init__(self, server: ServerProcess, model_name: str):
        self.server = server
        self.model_name = model_name
        self.command = " ".join(server.args)

    def fail(self, reason: str) -> InfraValidationError:
        return InfraValidationError(
            f"infra validation failed: {reason}\nserver: {self.command}\n"
            f"--- server output (end) ---\n{self.server.output()[-_LOG_TAIL_CHARS:]}"
        )

    def client(self, transport: str) -> ServingClient:
        target = self.server.grpc_target if transport == "grpc" else self.server.rest_url
        return ServingClient(
            target, self.model_name, transport=transport, timeout=_REQUEST_TIMEOUT_S, retries=0
        )

    def wait_available(self, timeout_s: float) -> None:
        """Polls the model status (REST) until version 1 is AVAILABLE; fails on exit or a failed load."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        with self.client("rest") as client:
            while time.monotonic() < deadline:
                if self.server.returncode is not None:
                    raise self.fail(
                        f"the server exited with code {self.server.returncode} before the model loaded"
                    )
                try:
                    versions = client.status()
                except ClientError as error:
                    last = str(error)
                else:
                    if any(v.state == "AVAILABLE" for v in versions):
                        return
                    failed = [v for v in versions if v.state == "END"]
                    if failed:
                        raise self.fail(
                            f"the model did not load: {failed[0].error_code} {failed[0].error_message}"
                        )
                    last = ", ".join(f"version {v.version} {v.state}" for v in versions)
                time.sleep(_POLL_S)
        raise self.fail(f"version 1 was not AVAILABLE after {timeout_s:.0f}s (last status: {last})")

    def predict(
        self, client: ServingClient, inputs: dict, signature: str, where: str
    ) -> tuple[list[str], np.ndarray]:
        try:
            outputs = client.predict(inputs, signature_name=signature)
        except ClientError as error:
            raise self.fail(f"{where}: {error}") from None
        labels = [label.decode("utf-8") for label in np.asarray(outputs[names.PREDICTED_LABEL]).reshape(-1)]
        return labels, np.asarray(outputs[names.PROBABILITIES], dtype=np.float32)


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
    texts = list(texts)
    # No load retries: production retries a failed load for minutes, validation
    # should report it at once (TF Serving then exits at start-up).
    flags = [
        f"--model_name={model_name}",
        f"--model_base_path={base_path.resolve()}",
        "--max_num_load_retries=0",
    ]
    try:
        server = ServerProcess.start(
            flags, command=server_command, log_path=scratch_dir / "server.log", ready_text=None
        )
    except OSError as error:
        raise InfraValidationError(
            f"infra validation failed: cannot start {' '.join(server_command)}: {error}"
        ) from error
    check = _Validation(server, model_name)
    try:
        check.wait_available(timeout_s)
        difference = 0.0
        warmup = read_warmup_requests(version_dir)
        with check.client("grpc") as grpc_client:
            for i, request in enumerate(warmup):
                inputs = {alias: tf.make_ndarray(tensor) for alias, tensor in request.inputs.items()}
                sent = [t.decode("utf-8") for t in inputs[names.TEXT_KEY].reshape(-1)]
                where = f"gRPC warmup request {i}"
                labels, probabilities = check.predict(
                    grpc_client, inputs, request.model_spec.signature_name, where
                )
                difference = max(
                    difference, _compare(where, sent, labels, probabilities, model.predict(sent), tolerance)
                )
            expected = model.predict(texts)
            inputs = {names.TEXT_KEY: np.array(texts, dtype=object)}
            labels, probabilities = check.predict(
                grpc_client, inputs, names.PREDICT_SIGNATURE, f"gRPC Predict of {len(texts)} test documents"
            )
            difference = max(
                difference, _compare("gRPC Predict", texts, labels, probabilities, expected, tolerance)
            )
        with check.client("rest") as rest_client:
            labels, probabilities = check.predict(
                rest_client, inputs, names.PREDICT_SIGNATURE, "REST predict"
            )
        difference = max(
            difference, _compare("REST predict", texts, labels, probabilities, expected, tolerance)
        )
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.stop()
    return InfraValidationResult(
        " ".join(server_command), len(warmup), len(texts), difference, time.monotonic() - started
    )
