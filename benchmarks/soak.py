"""Soak benchmark: mixed good and bad traffic against a real server, resources over time.

Starts `python -m serving` on loopback with TF Serving's half_plus_two test
model (or `--model-base-path`), then for `--seconds` (default 5 minutes):

* `--clients` threads send a mix of requests over gRPC and REST: good ones
  (Predict / :predict that must answer OK) and bad ones (a tiny tensor declaring
  a huge shape, wrong dtypes, tensor_content of the wrong length, unknown
  models and signatures, bytes that are no protobuf, malformed or deeply nested
  JSON, bad base64, a gzip header on a plain body) that must get a client error
  — never INTERNAL/UNKNOWN or a 5xx;
* every `--swap-every` seconds a new version is copied in and the oldest
  removed, so loads, warm-ups and unloads run under the traffic;
* every `--sample-every` seconds the server's RSS, open file descriptors and
  threads are read from /proc, with the requests answered so far.

It reports the samples as a table, the growth from the first sample after
warm-up to the last, the server's CPU time per request, and every unexpected
answer. Load only targets 127.0.0.1; a busy machine slows it down but does not
change what is counted.

    python benchmarks/soak.py                      # 5 minutes
    python benchmarks/soak.py --seconds 60 --json /tmp/soak.json

Exit code: 0 when every answer was as expected, 1 otherwise (or on an error).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from serving import tensor_codec  # noqa: E402  (after the sys.path line above)

DEFAULT_MODEL = REPO_ROOT.parent / "shared" / "tfs_testdata" / "saved_model_half_plus_two_cpu"
MODEL_NAME = "soak"
READY_MESSAGE = "textserve model server is ready"  # serving/server.py READY_MESSAGE
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


# --------------------------------------------------------------------------- requests


def _tensor(dtype: int, dims: list[int], **fields) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype, **fields)
    for size in dims:
        tensor.tensor_shape.dim.add().size = size
    return tensor


def _predict(tensor: tensor_pb2.TensorProto, model: str = MODEL_NAME, signature: str = "") -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tensor)
    return request.SerializeToString()


GOOD_TENSOR = tensor_codec.from_numpy(np.array([1.0, 2.0, 5.0], np.float32))
# (name, serialized PredictRequest or raw bytes, good?)
GRPC_REQUESTS = [
    ("grpc good", _predict(GOOD_TENSOR), True),
    ("grpc huge shape", _predict(_tensor(types_pb2.DT_FLOAT, [1 << 40, 1 << 10], float_val=[1.0])), False),
    ("grpc huge string shape", _predict(_tensor(types_pb2.DT_STRING, [1 << 33], string_val=[b"x"])), False),
    ("grpc wrong dtype", _predict(_tensor(types_pb2.DT_STRING, [2], string_val=[b"a", b"b"])), False),
    ("grpc short content", _predict(_tensor(types_pb2.DT_FLOAT, [4], tensor_content=b"\0" * 7)), False),
    ("grpc unknown model", _predict(GOOD_TENSOR, model="nope"), False),
    ("grpc unknown signature", _predict(GOOD_TENSOR, signature="nope"), False),
    ("grpc negative dim", _predict(_tensor(types_pb2.DT_FLOAT, [-1], float_val=[1.0])), False),
]
REST_REQUESTS = [
    ("rest good", f"/v1/models/{MODEL_NAME}:predict", b'{"instances": [1.0, 2.0, 5.0]}', {}, True),
    ("rest bad json", f"/v1/models/{MODEL_NAME}:predict", b'{"instances": [1.0,', {}, False),
    ("rest wrong type", f"/v1/models/{MODEL_NAME}:predict", b'{"instances": ["a"]}', {}, False),
    ("rest unknown model", "/v1/models/nope:predict", b'{"instances": [1.0]}', {}, False),
    ("rest deep nesting", f"/v1/models/{MODEL_NAME}:predict", b"[" * 20000 + b"]" * 20000, {}, False),
    ("rest bad b64", f"/v1/models/{MODEL_NAME}:classify", b'{"examples": [{"x": {"b64": "!"}}]}', {}, False),
    (
        "rest gzip lie",
        f"/v1/models/{MODEL_NAME}:predict",
        b'{"instances": [1.0]}',
        {"Content-Encoding": "gzip"},
        False,
    ),
]


class Tally:
    """Answers by kind, and the unexpected ones (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answers: collections.Counter = collections.Counter()
        self.unexpected: collections.Counter = collections.Counter()
        self.total = 0

    def add(self, kind: str, outcome: str, expected: bool) -> None:
        with self._lock:
            self.total += 1
            self.answers[f"{kind}: {outcome}"] += 1
            if not expected:
                self.unexpected[f"{kind}: {outcome}"] += 1


def _grpc_client(target: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(target) as channel:
        predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        while not stop.is_set():
            if rng.random() < 0.1:
                kind, payload, good = "grpc garbage bytes", rng.randbytes(rng.randint(1, 200)), False
            else:
                kind, payload, good = rng.choice(GRPC_REQUESTS)
            try:
                predict(payload, timeout=60)
                tally.add(kind, "OK", expected=good)
            except grpc.RpcError as e:
                code = e.code()
                # Bytes that do not parse get grpc's own INTERNAL deserialization answer.
                framework = code == grpc.StatusCode.INTERNAL and "deserializ" in (e.details() or "").lower()
                tally.add(kind, code.name, expected=not good and (code in CLIENT_ERRORS or framework))


def _rest_client(port: int, stop: threading.Event, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        kind, path, body, headers, good = rng.choice(REST_REQUESTS)
        try:
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            tally.add(kind, type(e).__name__, expected=False)
            continue
        tally.add(kind, str(status), expected=(status == 200) if good else (400 <= status < 500))
    connection.close()


# --------------------------------------------------------------------------- server and /proc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_sample(pid: int) -> dict[str, float]:
    """RSS (MiB), open fds, threads and CPU seconds of a process, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "rss_mib": int(fields["VmRSS"][0]) / 1024,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"][0]),
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
    }


def start_server(
    base_path: Path, extra_flags: list[str], log_path: Path
) -> tuple[subprocess.Popen, int, int]:
    grpc_port, rest_port = _free_port(), _free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            f"--model_name={MODEL_NAME}",
            f"--model_base_path={base_path}",
            *extra_flags,
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while READY_MESSAGE not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    return proc, grpc_port, rest_port


def swap_version(base_path: Path, source: Path, counter: list[int]) -> None:
    """Copies a new version in (staging dir + rename) and removes the oldest but one."""
    counter[0] += 1
    staging = base_path.parent / f".staging-{counter[0]}"
    shutil.copytree(source, staging)
    os.rename(staging, base_path / str(counter[0]))
    versions = sorted(int(p.name) for p in base_path.iterdir() if p.name.isdigit())
    for old in versions[:-2]:
        shutil.rmtree(base_path / str(old), ignore_errors=True)


# --------------------------------------------------------------------------- run and report


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    source_versions = sorted(p for p in args.model_base_path.iterdir() if p.name.isdigit())
    if not source_versions:
        raise SystemExit(f"{args.model_base_path} has no numbered version directory")
    source = source_versions[-1]
    base_path = workdir / "model"
    base_path.mkdir()
    shutil.copytree(source, base_path / "1")
    proc, grpc_port, rest_port = start_server(base_path, args.server_flag, workdir / "server.log")
    tally, stop = Tally(), threading.Event()
    clients = [
        threading.Thread(
            target=_grpc_client if i % 2 == 0 else _rest_client,
            args=(f"127.0.0.1:{grpc_port}" if i % 2 == 0 else rest_port, stop, tally, i),
            daemon=True,
        )
        for i in range(args.clients)
    ]
    samples = []
    started = time.monotonic()
    swaps = [1]
    try:
        for client in clients:
            client.start()
        next_sample = next_swap = started
        while (now := time.monotonic()) - started < args.seconds:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}")
            if args.swap_every > 0 and now >= next_swap + args.swap_every:
                swap_version(base_path, source, swaps)
                next_swap = now
            if now >= next_sample:
                samples.append(
                    {"t_s": round(now - started, 1), "requests": tally.total, **proc_sample(proc.pid)}
                )
                next_sample = now + args.sample_every
            time.sleep(0.2)
        samples.append(
            {"t_s": round(time.monotonic() - started, 1), "requests": tally.total, **proc_sample(proc.pid)}
        )
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=70)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    # Growth is measured from the first sample after warm-up (a tenth of the run).
    warm = next((s for s in samples if s["t_s"] >= args.seconds / 10), samples[0])
    last = samples[-1]
    served = max(1, last["requests"] - warm["requests"])
    return {
        "seconds": args.seconds,
        "clients": args.clients,
        "swaps": swaps[0] - 1,
        "requests": tally.total,
        "answers": dict(tally.answers.most_common()),
        "unexpected": dict(tally.unexpected),
        "samples": samples,
        "growth_after_warmup": {k: round(last[k] - warm[k], 1) for k in ("rss_mib", "fds", "threads")},
        "cpu_ms_per_request": round(1000 * (last["cpu_s"] - warm["cpu_s"]) / served, 2),
    }


def format_report(result: dict) -> str:
    lines = ["    t (s)   requests   RSS (MiB)   fds   threads   server CPU (s)"]
    for s in result["samples"]:
        lines.append(
            f"{s['t_s']:>9} {s['requests']:>10} {s['rss_mib']:>11.1f} {s['fds']:>5} {s['threads']:>9} "
            f"{s['cpu_s']:>16.1f}"
        )
    growth = result["growth_after_warmup"]
    lines += [
        "",
        f"{result['requests']} requests from {result['clients']} clients in {result['seconds']:.0f} s, "
        f"{result['swaps']} version swaps",
        f"growth after warm-up: RSS {growth['rss_mib']:+.1f} MiB, fds {growth['fds']:+.0f}, "
        f"threads {growth['threads']:+.0f}",
        f"server CPU per request: {result['cpu_ms_per_request']} ms",
        "answers: " + ", ".join(f"{k} ×{v}" for k, v in result["answers"].items()),
        "unexpected: " + (", ".join(f"{k} ×{v}" for k, v in result["unexpected"].items()) or "none"),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to run the traffic")
    parser.add_argument("--clients", type=int, default=4, help="client threads (half gRPC, half REST)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between /proc samples")
    parser.add_argument(
        "--swap-every", type=float, default=30.0, help="seconds between version swaps (0: none)"
    )
    parser.add_argument(
        "--model-base-path",
        type=Path,
        default=DEFAULT_MODEL,
        help="a model base path with numbered versions taking a float input x (half_plus_two)",
    )
    parser.add_argument(
        "--server-flag",
        action="append",
        default=[],
        help="an extra server flag, e.g. --server-flag=--enable_batching",
    )
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except (RuntimeError, OSError) as e:
        print(f"soak: {e}", file=sys.stderr)
        return 1
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if not result["unexpected"] else 1


if __name__ == "__main__":
    sys.exit(main())
