"""Load generators: `wrk` for HTTP, `h2load` for gRPC, the Python client for concurrency 1.

The C programs cost the machine little CPU per request, so on 2 shared cores
the server gets nearly all of it. Both run closed loops: `c` connections (wrk)
or `c` concurrent streams on one HTTP/2 connection (h2load: what one gRPC
channel does), each sending its next request when the last one is answered.
Only 127.0.0.1 is targeted, and every run is bounded in time.

h2load speaks gRPC with a prebuilt body: a gRPC message is a 1-byte
"compressed" flag, a 4-byte big-endian length and the serialized
`PredictRequest`; the headers `content-type: application/grpc` and
`te: trailers` make it a gRPC call. h2load only sees HTTP statuses (a gRPC
error is HTTP 200 with a grpc-status trailer), so each cell also reads the
server's own request counts by status.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.serving.common import INPUT_KEY, MODEL_NAME, percentile

REQUEST_TIMEOUT_S = 30


@dataclass
class Cell:
    """One measured load: what was sent, what came back, and how fast."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def require_tools() -> None:
    """Stops with what to install when wrk or h2load is missing."""
    missing = [tool for tool in ("wrk", "h2load") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"{' and '.join(missing)} not found: apt-get install -y wrk nghttp2-client "
            "(the load generators of the serving benchmark)"
        )


# --------------------------------------------------------------------------- HTTP (wrk)


def rest_body(document: str) -> bytes:
    """TF Serving's REST Predict body for one document (row format)."""
    return json.dumps({"instances": [document]}).encode()


def _lua_string(data: bytes) -> str:
    """A Lua string literal holding `data` exactly (decimal escapes for every unsafe byte)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b}" for b in data) + '"'


def _wrk_duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, body: bytes, concurrency: int, seconds: float, workdir: Path) -> Cell:
    """POSTs `body` to `url` from `concurrency` keep-alive connections for `seconds`.

    Raises:
      SystemExit: wrk failed or printed no summary.
    """
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {_lua_string(body)}\n"
    )
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    text = out.stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", text)
    if out.returncode != 0 or done is None:
        raise SystemExit(f"wrk failed ({' '.join(command)}):\n{text}\n{out.stderr}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.MULTILINE))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return Cell(
        requests=int(done.group(1)),
        seconds=_wrk_duration_ms(done.group(2) + done.group(3)) / 1e3,
        p50_ms=_wrk_duration_ms(latency["50"]) if "50" in latency else float("nan"),
        p99_ms=_wrk_duration_ms(latency["99"]) if "99" in latency else float("nan"),
        errors=errors,
    )


# --------------------------------------------------------------------------- gRPC (h2load)


def grpc_predict_body(document: str) -> bytes:
    """One gRPC message (length-prefixed, uncompressed) holding a one-document PredictRequest."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs[INPUT_KEY].CopyFrom(
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[document.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
            ),
        )
    )
    payload = request.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def run_h2load(target: str, body: bytes, concurrency: int, seconds: float, workdir: Path) -> Cell:
    """Sends gRPC Predict calls to `host:port` as `concurrency` streams of one connection.

    Raises:
      SystemExit: h2load failed or printed no summary.
    """
    body_file = workdir / "predict.grpc"
    body_file.write_bytes(body)
    with tempfile.NamedTemporaryFile("r", dir=workdir, suffix=".log") as log:
        command = [
            "h2load",
            "-c1",
            f"-m{concurrency}",
            f"-D{max(1, round(seconds))}",
            "--warm-up-time=1",
            "-d",
            str(body_file),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            f"--log-file={log.name}",
            f"http://{target}/tensorflow.serving.PredictionService/Predict",
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        done = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out.stdout)
        counts = re.search(
            r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out.stdout
        )
        if out.returncode != 0 or done is None or counts is None:
            raise SystemExit(f"h2load failed ({' '.join(command)}):\n{out.stdout}\n{out.stderr}")
        # Log lines: start time (µs), HTTP status, duration (µs).
        durations = sorted(int(line.split("\t")[2]) / 1e3 for line in log if line.count("\t") >= 2)
    seconds_measured = _wrk_duration_ms(done.group(1) + done.group(2)) / 1e3
    return Cell(
        requests=int(counts.group(2)),
        seconds=seconds_measured,
        p50_ms=percentile(durations, 50),
        p99_ms=percentile(durations, 99),
        errors=int(counts.group(3)),
    )


# --------------------------------------------------------------------------- the Python client, c=1


def run_python_client(target: str, transport: str, document: str, samples: int) -> Cell:
    """`samples` sequential Predict calls through `serving.client.ServingClient` (p50, p99)."""
    from serving.client import ClientError, ServingClient

    client = ServingClient(target, MODEL_NAME, transport=transport, timeout=REQUEST_TIMEOUT_S, retries=0)
    inputs: dict[str, Any] = {INPUT_KEY: [document]}
    for _ in range(5):
        client.predict(inputs)  # connection and metadata set-up off the clock
    latencies, errors = [], 0
    started = time.perf_counter()
    for _ in range(samples):
        start = time.perf_counter()
        try:
            client.predict(inputs)
        except ClientError:
            errors += 1
            continue
        latencies.append((time.perf_counter() - start) * 1e3)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Cell(len(latencies), elapsed, percentile(latencies, 50), percentile(latencies, 99), errors)
