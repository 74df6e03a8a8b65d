"""Serving benchmark: the model server against the in-process SavedModel ceiling.

One run measures, on the BBC BiLSTM export:

1. the ceiling: `tf.saved_model.load` + `serving_default` in a child process,
   docs/s at its best batch size, and the single-document latency (p50); for
   reference also the same model through `serving.servable` (the server's own
   Session path, without network or batching);
2. the server (`python -m serving --enable_batching ...`) as a subprocess:
   start-up time (spawn → ready line, and → first answered Predict) and
   resident memory (VmRSS / VmHWM from /proc/<pid>/status);
3. gRPC and REST throughput and p50/p99 latency at concurrency 1, 8 and 64,
   one real BBC article per request, in closed loop (each caller sends its
   next request when the previous one is answered).

The ceiling and the cells alternate for `--rounds` rounds and each keeps its
best round, so load from other jobs on a shared machine skews them less; every
ratio is against the ceiling of the same run. The load runs in separate client
processes (`--client-processes`, default 2) so the client's GIL does not cap
the server; they share the machine's cores with the server. gRPC callers are
grpc.aio coroutines on one channel per process (`--grpc-client threads` uses
blocking stubs in threads instead); REST callers are threads with one
keep-alive `http.client` connection each. Load only targets 127.0.0.1 and is
bounded in time (`--seconds` per cell) and in requests (`--max-requests`).

    python benchmarks/bench_serving.py                      # trains the BBC BiLSTM first (~90 s)
    python benchmarks/bench_serving.py --model RUN/export   # takes an existing export
    python benchmarks/bench_serving.py --render RESULT.json # prints a saved result's table

Exit code: 0 when it ran (targets met or not; see the table), 1 on an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "bbc"
# The shipped config, as a user would run it (issue 8 measures out of the box).
DEFAULT_BATCHING_CONFIG = REPO_ROOT / "serving" / "configs" / "batching.config"
MODEL_NAME = "bbc_news"
INPUT_KEY = "text"
READY_MESSAGE = "textserve model server is ready"  # serving/server.py READY_MESSAGE
CEILING_BATCH_SIZES = (1, 8, 32, 64, 128, 256)
CONCURRENCY = (1, 8, 64)
REQUEST_TIMEOUT_S = 30.0
# No thread flags: requests wait for their batch on the event loop without holding a
# thread, so --grpc_max_threads / --rest_api_num_threads no longer cap the batch size.
DEFAULT_SERVER_FLAGS: tuple[str, ...] = ()

# Targets from issue 3 ("Performance"), with batching on.
TARGET_C64_RATIO = {"grpc": 0.70, "rest": 0.50}
TARGET_C1_EXTRA_MS = {"grpc": 0.5, "rest": 1.0}


# --------------------------------------------------------------------------- data


def load_articles(data_dir: Path, limit: int, seed: int) -> list[str]:
    """Reads BBC articles (utf-8, latin-1 fallback, as the pipeline does), shuffled."""
    from pipeline.data import read_folder

    texts = [record.text for record in read_folder(data_dir, "latin-1") if record.text]
    if not texts:
        raise SystemExit(f"no articles under {data_dir}; pass --data DIR (the BBC News folder)")
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def train_model(data_dir: Path, out_dir: Path) -> Path:
    """Trains the default (BiLSTM) model with the project CLI; returns its export dir."""
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "train",
        "--data",
        str(data_dir),
        "--out",
        str(out_dir),
        "--quiet",
    ]
    print(f"training: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=REPO_ROOT, env=_quiet_env(), check=True)
    return out_dir / "export"


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _version_dir(export_dir: Path) -> Path:
    if (export_dir / "saved_model.pb").is_file():
        return export_dir
    versions = sorted(
        (int(p.name), p)
        for p in export_dir.iterdir()
        if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if not versions:
        raise SystemExit(f"{export_dir}: no <version>/saved_model.pb; pass --model RUN/export")
    return versions[-1][1]


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --------------------------------------------------------------------------- ceiling (child process)


def _ceiling_child(version_dir: str, texts: list[str], conn) -> None:
    """Holds the model in-process and measures it on command (see `Ceiling`).

    The ceiling is `tf.saved_model.load` + `serving_default` (what a Python
    program embedding the model gets). On request the same numbers are also
    taken through `serving.servable.Servable` (the server's own Session path,
    no network, no batching), to tell the model's cost from the server's.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the text ops of the graph

    from serving.servable import Servable

    loaded = tf.saved_model.load(version_dir)
    signature = loaded.signatures["serving_default"]
    servable = Servable(MODEL_NAME, 0, version_dir, ["serve"])
    definition: Any = servable.signature_defs["serving_default"]
    feed = definition.inputs[INPUT_KEY].name
    fetches = [definition.outputs[key].name for key in sorted(definition.outputs)]

    def in_process(batch):
        return signature(**{INPUT_KEY: tf.constant(batch)})

    def session(batch):
        array = np.empty(len(batch), dtype=object)
        array[:] = [text.encode("utf-8") for text in batch]
        return servable.run({feed: array}, fetches)

    labels = [label.decode() for label in in_process(texts[:8])["label"].numpy()]
    conn.send({"labels": labels, "vm_hwm_mb": _proc_status_mb(os.getpid()).get("VmHWM")})
    while (command := conn.recv()) is not None:
        engine, batch_sizes, seconds, latency_samples = command
        conn.send(
            _measure(
                session if engine == "session" else in_process, texts, batch_sizes, seconds, latency_samples
            )
        )
    conn.close()


def _measure(predict, texts: list[str], batch_sizes, seconds: float, latency_samples: int) -> dict:
    """docs/s of `predict(list_of_texts)` per batch size, and its single-document latency."""
    n = len(texts)
    throughput = {}
    for batch_size in batch_sizes:
        batches = [texts[start : start + batch_size] for start in range(0, n - batch_size + 1, batch_size)]
        batches = batches or [texts[:batch_size]]
        predict(batches[0])  # first call of a shape allocates; keep it off the clock
        docs = i = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            predict(batches[i % len(batches)])
            docs += len(batches[i % len(batches)])
            i += 1
        throughput[batch_size] = docs / (time.perf_counter() - start)
    latencies = []
    for i in range(latency_samples):
        start = time.perf_counter()
        predict([texts[i % n]])
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    best = max(throughput, key=lambda size: throughput[size])
    return {
        "docs_per_s_by_batch": {str(k): v for k, v in throughput.items()},
        "best_batch_size": best,
        "docs_per_s": throughput[best],
        "single_doc_p50_ms": _percentile(latencies, 50) * 1e3,
        "single_doc_p99_ms": _percentile(latencies, 99) * 1e3,
    }


class Ceiling:
    """The model loaded in a child process (not in this one, which stays light)."""

    def __init__(self, version_dir: Path, texts: list[str]):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_ceiling_child, args=(str(version_dir), texts, child), daemon=True)
        self.proc.start()
        child.close()
        self.info = self._receive(300)

    def _receive(self, timeout_s: float) -> dict:
        if not self.conn.poll(timeout_s):
            self.proc.kill()
            raise SystemExit("the in-process model did not answer in time")
        return self.conn.recv()

    def measure(self, engine: str, batch_sizes, seconds: float, latency_samples: int) -> dict:
        """docs/s per batch size and single-doc latency; engine 'saved_model' or 'session'."""
        self.conn.send((engine, tuple(batch_sizes), seconds, latency_samples))
        return self._receive(120 + len(batch_sizes) * (seconds + 30))

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------- server


def _proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM of a process in MiB (from /proc/<pid>/status)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    grpc_port: int
    rest_port: int
    command: list[str]
    ready_s: float = 0.0
    first_answer_s: float = 0.0
    probe_label: str = ""
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)


def start_server(
    export_dir: Path, batching_config: Path, extra_flags: list[str], probe_text: str, timeout_s: float
) -> Server:
    """Spawns the model server with batching on; returns once it answered a REST Predict."""
    grpc_port, rest_port = _free_port(), _free_port()
    command = [
        sys.executable,
        "-m",
        "serving",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_name={MODEL_NAME}",
        f"--model_base_path={export_dir.resolve()}",
        "--enable_batching",
        f"--batching_parameters_file={batching_config.resolve()}",
        *extra_flags,
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=_quiet_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    server = Server(proc, grpc_port, rest_port, command)
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            server.lines.append(line)
            if READY_MESSAGE in line:
                server.ready_s = time.perf_counter() - started
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(server)
            raise SystemExit("the server did not become ready:\n" + server.output()[-4000:])
    # "Ready to answer": poll a real Predict until it succeeds (normally the first try).
    body = json.dumps({"instances": [probe_text]}).encode()
    url = f"http://127.0.0.1:{rest_port}/v1/models/{MODEL_NAME}:predict"
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as reply:
                server.probe_label = json.loads(reply.read())["predictions"][0]["label"]
            break
        except (OSError, urllib.error.HTTPError) as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_server(server)
                raise SystemExit(
                    f"the server never answered a Predict ({e}):\n" + server.output()[-4000:]
                ) from e
            time.sleep(0.05)
    server.first_answer_s = time.perf_counter() - started
    return server


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(60)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


# --------------------------------------------------------------------------- load clients (child processes)


def _predict_requests(texts: list[str]) -> list:
    """One `PredictRequest` per text, built before the clock starts (as a client batch job would)."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    requests = []
    for text in texts:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = "serving_default"
        request.inputs[INPUT_KEY].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                string_val=[text.encode("utf-8")],
                tensor_shape=tensor_shape_pb2.TensorShapeProto(
                    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
                ),
            )
        )
        requests.append(request)
    return requests


def _grpc_caller(target: str, texts: list[str]):
    """A per-process gRPC client: one channel shared by the threads (as a real client would)."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    requests = _predict_requests(texts)

    def make_call():
        def call(i: int) -> str:
            response = stub.Predict(requests[i % len(requests)], timeout=REQUEST_TIMEOUT_S)
            return response.outputs["label"].string_val[0].decode()

        return call

    return make_call, channel.close


def _grpc_aio_cell(
    target: str, requests: list, callers: int, go_at: float, seconds: float, max_requests: int, offset: int
) -> dict:
    """One cell with grpc.aio: `callers` coroutines on one channel and one event loop."""
    import asyncio

    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    latencies: list[float] = []
    errors: list[str] = []
    labels: list[str] = []
    budget = [max_requests]
    end_at = go_at + seconds

    async def caller(stub, k: int) -> None:
        i = offset + k * 7919
        for _ in range(2):  # warm the channel outside the clock
            response = await stub.Predict(requests[i % len(requests)], timeout=REQUEST_TIMEOUT_S)
            labels.append(response.outputs["label"].string_val[0].decode())
            i += 1
        await asyncio.sleep(max(0.0, go_at - time.monotonic()))
        while budget[0] > 0 and time.monotonic() < end_at:
            budget[0] -= 1
            start = time.perf_counter()
            try:
                await stub.Predict(requests[i % len(requests)], timeout=REQUEST_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                errors.append(f"{e.code().name}: {e.details()[:300]}")
            else:
                latencies.append(time.perf_counter() - start)
            i += 1

    async def cell() -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            await asyncio.gather(*(caller(stub, k) for k in range(callers)))

    cpu0 = time.process_time()
    asyncio.run(cell())
    return {
        "latencies": latencies,
        "errors": errors[:5],
        "error_count": len(errors),
        "finished": time.monotonic(),
        "cpu_s": time.process_time() - cpu0,
        "labels": labels[:4],
    }


def _rest_caller(port: int, texts: list[str]):
    """A per-thread keep-alive HTTP/1.1 connection (http.client), JSON via orjson."""
    import http.client

    import orjson

    bodies = [orjson.dumps({"instances": [text]}) for text in texts]
    path = f"/v1/models/{MODEL_NAME}:predict"
    headers = {"Content-Type": "application/json"}
    connections = []

    def make_call():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
        connections.append(connection)

        def call(i: int) -> str:
            connection.request("POST", path, body=bodies[i % len(bodies)], headers=headers)
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")
            return orjson.loads(payload)["predictions"][0]["label"]

        return call

    def close():
        for connection in connections:
            connection.close()

    return make_call, close


def _client_process(transport: str, address, texts: list[str], conn) -> None:
    """A load-client process: runs cells on command until told to stop."""
    if transport == "grpc-aio":
        requests = _predict_requests(texts)
        conn.send("ready")
        while (command := conn.recv()) is not None:
            threads, go_at, seconds, max_requests, offset = command
            conn.send(_grpc_aio_cell(address, requests, threads, go_at, seconds, max_requests, offset))
        return
    if transport == "grpc":
        make_call, close = _grpc_caller(address, texts)
    else:
        make_call, close = _rest_caller(address, texts)
    conn.send("ready")
    while True:
        command = conn.recv()
        if command is None:
            break
        threads, go_at, seconds, max_requests, offset = command
        callers = [make_call() for _ in range(threads)]
        latencies: list[list[float]] = [[] for _ in range(threads)]
        errors: list[str] = []
        labels: list[str] = []
        end_at = go_at + seconds
        budget = [max_requests]
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def work(k: int) -> None:
            call, mine = callers[k], latencies[k]
            i = offset + k * 7919
            try:
                for _ in range(2):  # warm the connection outside the clock
                    labels.append(call(i))
                    i += 1
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
                return
            barrier.wait()
            while time.monotonic() < go_at:
                time.sleep(0.001)
            while True:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                start = time.perf_counter()
                if time.monotonic() >= end_at:
                    break
                try:
                    call(i)
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {str(e)[:300]}")
                else:
                    mine.append(time.perf_counter() - start)
                i += 1

        cpu0 = time.process_time()
        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        finished = time.monotonic()
        conn.send(
            {
                "latencies": [x for part in latencies for x in part],
                "errors": errors[:5],
                "error_count": len(errors),
                "finished": finished,
                "cpu_s": time.process_time() - cpu0,
                "labels": labels[:4],
            }
        )
    close()


class ClientPool:
    """`processes` persistent load-client processes for one transport."""

    def __init__(self, transport: str, address, texts: list[str], processes: int):
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_process, args=(transport, address, texts, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            if not conn.poll(120) or conn.recv() != "ready":
                raise SystemExit(f"{transport} load client did not start")

    def run(self, concurrency: int, seconds: float, max_requests: int) -> dict:
        """One cell: `concurrency` closed-loop callers for `seconds`; returns the stats."""
        used = self.conns[: min(concurrency, len(self.conns))]
        shares = [
            concurrency // len(used) + (1 if i < concurrency % len(used) else 0) for i in range(len(used))
        ]
        go_at = time.monotonic() + 3.0 + 0.05 * concurrency  # room for the warm-up calls
        for i, (conn, threads) in enumerate(zip(used, shares)):
            conn.send((threads, go_at, seconds, max(1, max_requests // len(used)), i * 104729))
        results = []
        for conn in used:
            if not conn.poll(seconds + 120):
                raise SystemExit("a load client did not report back in time")
            results.append(conn.recv())
        latencies = sorted(x for r in results for x in r["latencies"])
        elapsed = max(r["finished"] for r in results) - go_at
        errors = [e for r in results for e in r["errors"]]
        return {
            "requests": len(latencies),
            "elapsed_s": elapsed,
            "docs_per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
            "p50_ms": _percentile(latencies, 50) * 1e3,
            "p99_ms": _percentile(latencies, 99) * 1e3,
            "mean_ms": statistics.fmean(latencies) * 1e3 if latencies else float("nan"),
            "error_count": sum(r["error_count"] for r in results),
            "errors": errors[:5],
            "client_cpu_s": sum(r["cpu_s"] for r in results),
            "labels": [label for r in results for label in r["labels"]],
        }

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --------------------------------------------------------------------------- report


def evaluate_targets(ceiling: dict, cells: dict) -> list[dict]:
    rows = []
    for transport in ("grpc", "rest"):
        c64 = cells.get(f"{transport}/64")
        if c64:
            ratio = c64["docs_per_s"] / ceiling["docs_per_s"]
            rows.append(
                {
                    "target": f"{transport} c64 throughput >= {TARGET_C64_RATIO[transport]:.0%} of ceiling",
                    "measured": f"{ratio:.0%}",
                    "met": ratio >= TARGET_C64_RATIO[transport],
                }
            )
        c1 = cells.get(f"{transport}/1")
        if c1:
            limit = ceiling["single_doc_p50_ms"] + TARGET_C1_EXTRA_MS[transport]
            rows.append(
                {
                    "target": f"{transport} c1 p50 <= in-process {ceiling['single_doc_p50_ms']:.2f} ms"
                    f" + {TARGET_C1_EXTRA_MS[transport]} ms",
                    "measured": f"{c1['p50_ms']:.2f} ms",
                    "met": c1["p50_ms"] <= limit,
                }
            )
    return rows


def format_table(result: dict) -> str:
    ceiling = result["ceiling"]
    lines = [
        f"ceiling (in-process tf.saved_model.load, batch {ceiling['best_batch_size']}): "
        f"{ceiling['docs_per_s']:.0f} docs/s; single-doc p50 {ceiling['single_doc_p50_ms']:.2f} ms "
        f"(best of {len(ceiling['rounds'])} rounds: "
        f"{', '.join(format(c['docs_per_s'], '.0f') for c in ceiling['rounds'])} docs/s)",
        "in-process docs/s by batch size: "
        + ", ".join(
            f"{size}: {value:.0f}" for size, value in ceiling["sweep"]["docs_per_s_by_batch"].items()
        ),
        f"same model through the server's Session (serving.servable, no network, no batching): "
        f"{ceiling['session']['docs_per_s']:.0f} docs/s at batch {ceiling['best_batch_size']}; "
        f"single-doc p50 {ceiling['session']['single_doc_p50_ms']:.2f} ms",
        "",
        "| transport | concurrency | docs/s | vs ceiling | vs in-process at batch = concurrency "
        "| p50 ms | p99 ms | server CPU ms/req | client CPU ms/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_batch = ceiling["sweep"]["docs_per_s_by_batch"]
    for key, cell in result["cells"].items():
        transport, concurrency = key.split("/")
        # One document per request: a batch never holds more documents than there are callers.
        same_batch = by_batch.get(concurrency)
        same_text = f"{cell['docs_per_s'] / same_batch:.0%}" if same_batch else "-"
        lines.append(
            f"| {transport} | {concurrency} | {cell['docs_per_s']:.0f} | "
            f"{cell['docs_per_s'] / ceiling['docs_per_s']:.0%} | {same_text} | {cell['p50_ms']:.2f} | "
            f"{cell['p99_ms']:.2f} | {cell['server_cpu_ms_per_request']:.2f} | "
            f"{cell['client_cpu_ms_per_request']:.2f} | {cell['error_count']} |"
        )
    server = result["server"]
    lines += [
        "",
        f"server start-up: ready line {server['ready_s']:.1f} s, first answer {server['first_answer_s']:.1f} s; "
        f"memory after load VmRSS {server['memory_after_load_mb'].get('VmRSS', 0):.0f} MiB, "
        f"after the run VmRSS {server['memory_after_run_mb'].get('VmRSS', 0):.0f} MiB / "
        f"VmHWM {server['memory_after_run_mb'].get('VmHWM', 0):.0f} MiB",
        "",
        "| target | measured | met |",
        "|---|---:|:---:|",
    ]
    for row in result["targets"]:
        lines.append(f"| {row['target']} | {row['measured']} | {'yes' if row['met'] else 'NO'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an export dir (RUN/export); trains one when absent")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the BBC News folder")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/textserve_bench_serving"),
        help="where a trained model goes",
    )
    parser.add_argument("--json", type=Path, help="result file (default WORKDIR/serving.json)")
    parser.add_argument("--batching-config", type=Path, default=DEFAULT_BATCHING_CONFIG)
    parser.add_argument(
        "--server-flag",
        action="append",
        default=None,
        help="tensorflow_model_server flag (repeatable; replaces the defaults "
        f"{' '.join(DEFAULT_SERVER_FLAGS)} when given)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per cell")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternate ceiling and cells this many times; the best round counts",
    )
    parser.add_argument("--max-requests", type=int, default=100_000, help="request cap per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--transports", nargs="+", default=["grpc", "rest"], choices=["grpc", "rest"])
    parser.add_argument(
        "--grpc-client",
        choices=["aio", "threads"],
        default="aio",
        help="grpc.aio coroutines on one channel per process, or threads on the blocking stub",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=2,
        help="load-client processes per transport (threads are split across them)",
    )
    parser.add_argument("--ceiling-batch-sizes", type=int, nargs="+", default=list(CEILING_BATCH_SIZES))
    parser.add_argument("--ceiling-seconds", type=float, default=4.0, help="time per ceiling batch size")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--articles", type=int, default=2000, help="distinct articles cycled through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", type=Path, help="print the table of a saved result file and exit")
    return parser.parse_args(argv)


def _run_cell(pool: ClientPool, pid: int, concurrency: int, args) -> dict:
    cpu0 = _proc_cpu_s(pid)
    cell = pool.run(concurrency, args.seconds, args.max_requests)
    n = max(cell["requests"], 1)
    cell["server_cpu_ms_per_request"] = (_proc_cpu_s(pid) - cpu0) / n * 1e3
    cell["client_cpu_ms_per_request"] = cell["client_cpu_s"] / n * 1e3
    cell.pop("labels")
    return cell


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(format_table(json.loads(args.render.read_text())))
        return 0
    texts = load_articles(args.data, args.articles, args.seed)
    export_dir = args.model or train_model(args.data, args.workdir / "train")
    version_dir = _version_dir(export_dir)
    print(
        f"model: {version_dir}; {len(texts)} articles, mean {statistics.fmean(map(len, texts)):.0f} chars",
        flush=True,
    )
    load_before = os.getloadavg()

    print("loading the model in-process ...", flush=True)
    model = Ceiling(version_dir, texts)
    server = None
    pools: dict[str, ClientPool] = {}
    try:
        sweep = model.measure(
            "saved_model", args.ceiling_batch_sizes, args.ceiling_seconds, args.latency_samples
        )
        best_batch = sweep["best_batch_size"]
        session = model.measure("session", [best_batch], args.ceiling_seconds, args.latency_samples)
        print(
            f"  ceiling {sweep['docs_per_s']:.0f} docs/s at batch {best_batch} "
            f"({', '.join(f'{k}: {v:.0f}' for k, v in sweep['docs_per_s_by_batch'].items())}); "
            f"single doc p50 {sweep['single_doc_p50_ms']:.2f} ms; through the server's Session "
            f"{session['docs_per_s']:.0f} docs/s, single doc p50 "
            f"{session['single_doc_p50_ms']:.2f} ms",
            flush=True,
        )

        print("starting the server ...", flush=True)
        server_flags = (
            list(DEFAULT_SERVER_FLAGS)
            if args.server_flag is None
            else [flag for flag in args.server_flag if flag]
        )
        server = start_server(export_dir, args.batching_config, server_flags, texts[0], timeout_s=300)
        pid = server.proc.pid
        memory_after_load = _proc_status_mb(pid)
        print(
            f"  ready line after {server.ready_s:.1f} s, first Predict answered after "
            f"{server.first_answer_s:.1f} s, VmRSS {memory_after_load.get('VmRSS', 0):.0f} MiB",
            flush=True,
        )
        answers = {"in_process": model.info["labels"][:2], "rest_first_answer": [server.probe_label]}
        for transport in args.transports:
            address = f"127.0.0.1:{server.grpc_port}" if transport == "grpc" else server.rest_port
            kind = "grpc-aio" if transport == "grpc" and args.grpc_client == "aio" else transport
            pools[transport] = ClientPool(kind, address, texts, args.client_processes)
            # The warm-up calls of a 1-caller cell send texts[0] and texts[1] first.
            answers[transport] = pools[transport].run(1, 0.1, 1)["labels"][:2]
        answers_match = all(v == answers["in_process"][: len(v)] for v in answers.values())
        if not answers_match:
            print(f"WARNING: served labels differ from the in-process ones: {answers}", flush=True)

        # Other work on a shared machine comes and goes: alternate the ceiling and the
        # cells for --rounds rounds and keep each one's best round.
        ceilings = [sweep]
        rounds: dict[str, list[dict]] = {}
        for round_index in range(args.rounds):
            if round_index:
                ceilings.append(
                    model.measure("saved_model", [best_batch], args.ceiling_seconds, args.latency_samples)
                )
                print(
                    f"  round {round_index + 1}: ceiling {ceilings[-1]['docs_per_s']:.0f} docs/s, "
                    f"single doc p50 {ceilings[-1]['single_doc_p50_ms']:.2f} ms",
                    flush=True,
                )
            for transport in args.transports:
                for concurrency in args.concurrency:
                    cell = _run_cell(pools[transport], pid, concurrency, args)
                    rounds.setdefault(f"{transport}/{concurrency}", []).append(cell)
                    print(
                        f"  round {round_index + 1}: {transport:4s} c{concurrency:<3d} "
                        f"{cell['docs_per_s']:7.0f} docs/s  p50 {cell['p50_ms']:6.2f} ms  "
                        f"p99 {cell['p99_ms']:7.2f} ms  errors {cell['error_count']}",
                        flush=True,
                    )
                    if cell["errors"]:
                        print(f"    first errors: {cell['errors']}", flush=True)
        memory_after_run = _proc_status_mb(pid)
    finally:
        for pool in pools.values():
            pool.close()
        if server is not None:
            stop_server(server)
        model.close()

    ceiling = {
        "docs_per_s": max(c["docs_per_s"] for c in ceilings),
        "best_batch_size": best_batch,
        "single_doc_p50_ms": min(c["single_doc_p50_ms"] for c in ceilings),
        "sweep": sweep,
        "rounds": ceilings,
        "session": session,
        "in_process_vm_hwm_mb": model.info["vm_hwm_mb"],
    }
    cells = {}
    for key, measured in rounds.items():
        best = dict(max(measured, key=lambda cell: cell["docs_per_s"]))
        best["vs_ceiling"] = best["docs_per_s"] / ceiling["docs_per_s"]
        best["rounds_docs_per_s"] = [cell["docs_per_s"] for cell in measured]
        cells[key] = best
    result = {
        "command": " ".join(
            ["python", "benchmarks/bench_serving.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "model": str(version_dir),
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "settings": {
            "seconds_per_cell": args.seconds,
            "rounds": args.rounds,
            "grpc_client": args.grpc_client,
            "client_processes": args.client_processes,
            "batching_parameters": args.batching_config.read_text(),
            "server_command": server.command[1:],
        },
        "ceiling": ceiling,
        "server": {
            "ready_s": server.ready_s,
            "first_answer_s": server.first_answer_s,
            "memory_after_load_mb": memory_after_load,
            "memory_after_run_mb": memory_after_run,
        },
        "cells": cells,
        "rounds": rounds,
        "answers": answers,
        "answers_match_in_process": answers_match,
    }
    result["targets"] = evaluate_targets(ceiling, cells)
    print()
    print(format_table(result))
    out = args.json or args.workdir / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
