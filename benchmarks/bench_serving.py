"""Serving benchmark (issue 8): textserve and its peers against the same SavedModel in-process.

For each export (the BBC BiLSTM and TF-IDF, trained with `textserve train` when
no `--model` is given), one run measures, side by side:

* the model in-process (`tf.saved_model.load` + `serving_default`, in a child
  process) at batch = concurrency (1, 8, 64) and at its best batch: docs/s, its
  own CPU per document, the single-document p50;
* textserve (`python -m serving`) with the shipped
  `serving/configs/batching.config` and no thread flags: REST from `wrk`, gRPC
  from `h2load` at concurrency 1, 8 and 64, plus the Python client
  (`serving.client`) at concurrency 1; server CPU per request from /proc; RSS
  after warmup and after `--soak-seconds` (60) of REST c=64;
* the peers (KServe ModelServer, LitServe, BentoML) serving the same SavedModel
  with their own batching, from a throw-away venv (`benchmarks/serving/peers.py`),
  at concurrency 8 and 64 over REST.

Contenders alternate over `--rounds` rounds and each keeps its best round, so
load from other jobs skews them less. One document per request. Writes
WORKDIR/serving-ARCH.json and .md (issue 8's table and targets).

    python benchmarks/bench_serving.py                                   # trains both exports first
    python benchmarks/bench_serving.py --model RUN/export --peers none   # one export, no peers
    python benchmarks/bench_serving.py --seconds 3 --rounds 1 --soak-seconds 5 --peers litserve  # smoke
    python benchmarks/bench_serving.py --render WORKDIR/serving-bilstm.json

Needs `wrk` and `h2load` (apt-get install -y wrk nghttp2-client). Exit code 0
when it ran (targets met or not: see the table), 1 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.serving import common, load, peers, report  # noqa: E402
from benchmarks.serving.inprocess import InProcessModel  # noqa: E402
from serving.process import free_port  # noqa: E402

CONCURRENCY = (1, 8, 64)
SWEEP_BATCH_SIZES = (1, 8, 16, 32, 64, 128, 256)
PEER_CONCURRENCY = (8, 64)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, action="append", help="an export dir (repeatable); trains when absent"
    )
    parser.add_argument(
        "--arch", nargs="+", default=["bilstm", "tfidf"], help="what to train without --model"
    )
    parser.add_argument("--data", type=Path, default=common.DEFAULT_DATA, help="the BBC News folder")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/textserve_bench_serving"))
    parser.add_argument("--batching-config", type=Path, default=common.SHIPPED_BATCHING_CONFIG)
    parser.add_argument(
        "--candidate",
        action="append",
        type=_candidate,
        default=[],
        metavar="NAME=FLAGS",
        help="another textserve to measure in the same rounds, started with these extra flags after the "
        "shipped ones (a later flag wins), e.g. 1thread=--batching_parameters_file=F or "
        "'gil5ms=--python_switch_interval_micros=5000'; its rows are `textserve[NAME]`, and the "
        "targets judge the shipped server (repeatable)",
    )
    parser.add_argument(
        "--server-flag", action="append", default=[], help="extra textserve flag (repeatable)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per cell")
    parser.add_argument("--rounds", type=int, default=3, help="alternate all contenders this many times")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument(
        "--in-process-seconds", type=float, default=4.0, help="time per in-process batch size"
    )
    parser.add_argument("--python-samples", type=int, default=300, help="Python-client calls at c=1")
    parser.add_argument("--soak-seconds", type=float, default=60.0, help="REST c=64 load before the last RSS")
    parser.add_argument(
        "--peers", nargs="+", default=list(peers.PEERS), choices=[*peers.PEERS, "none"], help="peer servers"
    )
    parser.add_argument(
        "--peers-venv", type=Path, help="the peers' throw-away venv (default WORKDIR/peers-venv)"
    )
    parser.add_argument("--render", type=Path, help="print the table of a saved result and exit")
    return parser.parse_args(argv)


def _request_counts(rest_port: int) -> dict[str, int]:
    """textserve's own request counts by status, and its session runs ("runs"), from its Prometheus page."""
    url = f"http://127.0.0.1:{rest_port}{common.PROMETHEUS_PATH}"
    with urllib.request.urlopen(url, timeout=30) as reply:
        text = reply.read().decode()
    counts: dict[str, int] = {}
    for status, value in re.findall(r':tensorflow:serving:request_count\{[^}]*status="(\w+)"\} (\d+)', text):
        counts[status] = counts.get(status, 0) + int(value)
    runs = re.search(r":tensorflow:serving:batching_session:wrapped_run_count\{\} (\d+)", text)
    counts["runs"] = int(runs.group(1)) if runs else 0
    return counts


class Textserve:
    """The textserve server under test, with its monitoring page on (for its own error counts)."""

    def __init__(self, export: Path, args: argparse.Namespace, workdir: Path, extra_flags: list[str]):
        from serving.process import ServerProcess

        monitoring = workdir / "monitoring.config"
        monitoring.write_text(f'prometheus_config {{ enable: true path: "{common.PROMETHEUS_PATH}" }}\n')
        flags = [
            f"--model_name={common.MODEL_NAME}",
            f"--model_base_path={export.resolve()}",
            "--enable_batching",
            f"--batching_parameters_file={args.batching_config.resolve()}",
            f"--monitoring_config_file={monitoring}",
            *args.server_flag,
            *extra_flags,
        ]
        self.process = ServerProcess.start(flags, cwd=REPO_ROOT, env=common.quiet_env(), timeout_s=600)
        self.pid = self.process.pid
        self.grpc_target = self.process.grpc_target
        self.rest_url = f"{self.process.rest_url}/v1/models/{common.MODEL_NAME}:predict"

    def since(self, before: dict[str, int]) -> tuple[int, float | None]:
        """(failed requests, mean rows per session run) since `before` (`_request_counts`).

        CANCELLED is not a failure: h2load ends a run with its last calls in flight.
        """
        after = _request_counts(self.process.rest_port)
        failed = sum(after[k] - before.get(k, 0) for k in after if k not in ("OK", "CANCELLED", "runs"))
        runs = after["runs"] - before.get("runs", 0)
        done = after.get("OK", 0) - before.get("OK", 0)
        return failed, (done / runs if runs else None)


def _measured(
    cell: load.Cell, server: str, transport: str, concurrency: int, cpu_s: float | None, **extra
) -> dict:
    return {
        "server": server,
        "transport": transport,
        "concurrency": concurrency,
        "rate": cell.rate,
        "requests": cell.requests,
        "p50_ms": cell.p50_ms,
        "p99_ms": cell.p99_ms,
        "errors": cell.errors,
        "server_cpu_ms_per_request": cpu_s / cell.requests * 1e3
        if cpu_s is not None and cell.requests
        else None,
        **extra,
    }


def _keep_best(best: dict[str, dict], key: str, cell: dict) -> None:
    cell.setdefault("rounds", [])
    previous = best.get(key)
    rounds = (previous["rounds"] if previous else []) + [round(cell["rate"], 1)]
    # c=1 cells are about latency: the best round is the lowest p50; the others, the highest rate.
    better = cell["p50_ms"] < previous["p50_ms"] if previous and cell["concurrency"] == 1 else None
    if previous is None or (better if better is not None else cell["rate"] > previous["rate"]):
        best[key] = cell
    best[key]["rounds"] = rounds


def bench_export(export: Path, args: argparse.Namespace, document: str) -> dict:
    """One export: in-process model, textserve and the peers, over the rounds."""
    version = common.version_dir(export)
    arch = common.model_arch(version)
    workdir = args.workdir / arch
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"== {arch}: {version}", flush=True)
    model = InProcessModel(version, document)
    sweep = model.measure(list(SWEEP_BATCH_SIZES), args.in_process_seconds, 0)["by_batch"]
    best_batch = max(sweep, key=lambda size: sweep[size]["docs_per_s"])
    batches = sorted({*args.concurrency, best_batch})
    print(
        "  in-process sweep: "
        + ", ".join(f"{k}: {v['docs_per_s']:.0f}" for k, v in sweep.items())
        + " docs/s",
        flush=True,
    )

    server = Textserve(export, args, workdir, [])
    # Every textserve contender by its row label; the first is the one the targets judge.
    servers = {"textserve": server}
    for name, flags in args.candidate:
        servers[f"textserve[{name}]"] = Textserve(export, args, workdir, flags)
    running: dict[str, peers.PeerServer] = {}
    cells: dict[str, dict] = {}
    in_process_rounds: list[dict] = []
    memory: dict = {}
    try:
        body_rest, body_grpc = load.rest_body(document), load.grpc_predict_body(document)
        for _ in range(2):  # warm every path (callables per batch size, connections) off the clock
            for contender in servers.values():
                load.run_wrk(contender.rest_url, body_rest, 64, 2, workdir)
                load.run_h2load(contender.grpc_target, body_grpc, 64, 2, workdir)
        memory["rss_after_warmup_mib"] = common.rss_mib(server.pid)
        served = _served_label(server)
        if args.peers != ["none"]:
            python = peers.ensure_venv(args.peers_venv or args.workdir / "peers-venv")
            limits = _batching_limits(args.batching_config)
            for name in args.peers:
                port = free_port()
                print(f"  starting peer {name} ...", flush=True)
                running[name] = peers.PeerServer(
                    peers.PEERS[name], python, version, port, *limits, workdir / f"{name}.log"
                )
                load.run_wrk(running[name].url, body_rest, 64, 2, workdir)
        for index in range(args.rounds):
            measured = model.measure(batches, args.in_process_seconds, 200)
            in_process_rounds.append(measured)
            for concurrency in args.concurrency:
                for transport in ("rest", "grpc"):
                    for label, contender in servers.items():
                        body = body_rest if transport == "rest" else body_grpc
                        result = _measure_textserve(
                            contender, label, transport, body, concurrency, args, workdir
                        )
                        _keep_best(cells, f"{label}/{transport}/{concurrency}", result)
                        _print_cell(index, result)
            for transport in ("grpc", "rest"):
                target = server.grpc_target if transport == "grpc" else server.process.rest_url
                cpu0 = common.cpu_seconds(server.pid)
                cell = load.run_python_client(target, transport, document, args.python_samples)
                result = _measured(
                    cell, "textserve", transport, 1, common.cpu_seconds(server.pid) - cpu0, client="Python"
                )
                _keep_best(cells, f"textserve/{transport}-python/1", result)
                _print_cell(index, result)
            for name, peer in running.items():
                for concurrency in PEER_CONCURRENCY:
                    cpu0 = common.cpu_seconds(peer.proc.pid, tree=True)
                    cell = load.run_wrk(peer.url, body_rest, concurrency, args.seconds, workdir)
                    cpu = common.cpu_seconds(peer.proc.pid, tree=True) - cpu0
                    result = _measured(cell, name, "rest", concurrency, cpu)
                    _keep_best(cells, f"{name}/rest/{concurrency}", result)
                    _print_cell(index, result)
        if args.soak_seconds > 0:
            print(f"  soak: REST c=64 for {args.soak_seconds:.0f} s ...", flush=True)
            soak = load.run_wrk(server.rest_url, body_rest, 64, args.soak_seconds, workdir)
            memory.update(
                rss_after_soak_mib=common.rss_mib(server.pid),
                soak_seconds=args.soak_seconds,
                soak_requests=soak.requests,
            )
        peer_info = {
            name: {"batching": peer.spec.batching, "rss_mib": common.rss_mib(peer.proc.pid, tree=True)}
            for name, peer in running.items()
        }
    finally:
        for peer in running.values():
            peer.stop()
        for contender in servers.values():
            contender.process.stop()
        model.close()
    by_batch = {
        str(size): max((r["by_batch"][size] for r in in_process_rounds), key=lambda row: row["docs_per_s"])
        for size in batches
    }
    result = {
        "command": " ".join(["python", "benchmarks/bench_serving.py", *sys.argv[1:]]),
        "arch": arch,
        "model": str(version),
        "document_chars": len(document),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "batching_parameters": args.batching_config.read_text(),
        "candidates": dict(args.candidate),
        "server_command": server.process.args,
        "labels": {"in_process": model.label, "textserve": served},
        "in_process": {
            "sweep": {str(k): v for k, v in sweep.items()},
            "by_batch": by_batch,
            "best": {"batch": best_batch, **by_batch[str(best_batch)]},
            "single_doc_p50_ms": min(r["single_doc_p50_ms"] for r in in_process_rounds),
            "rounds": in_process_rounds,
        },
        "cells": cells,
        "memory": memory,
        "peers": peer_info,
    }
    report.annotate(result)
    result["targets"] = report.targets(result)
    return result


def _candidate(spec: str) -> tuple[str, list[str]]:
    """One `--candidate NAME=FLAGS` as (name, flags); argparse reports a malformed one."""
    name, sep, text = spec.partition("=")
    flags = shlex.split(text)
    if not sep or not name or not flags or not all(flag.startswith("--") for flag in flags):
        raise argparse.ArgumentTypeError(f"expected NAME=--flag[=value] ..., received {spec!r}")
    return name, flags


def _measure_textserve(
    server: Textserve,
    label: str,
    transport: str,
    body: bytes,
    concurrency: int,
    args: argparse.Namespace,
    workdir: Path,
) -> dict:
    """One cell of C programs' load on a textserve contender, with its CPU, errors and mean batch."""
    before, cpu0 = _request_counts(server.process.rest_port), common.cpu_seconds(server.pid)
    if transport == "rest":
        cell = load.run_wrk(server.rest_url, body, concurrency, args.seconds, workdir)
    else:
        cell = load.run_h2load(server.grpc_target, body, concurrency, args.seconds, workdir)
    cpu = common.cpu_seconds(server.pid) - cpu0
    failed, mean_batch = server.since(before)
    cell.errors += failed
    return _measured(cell, label, transport, concurrency, cpu, mean_batch=mean_batch)


def _served_label(server: Textserve) -> str:
    from serving.client import ServingClient

    client = ServingClient(server.grpc_target, common.MODEL_NAME, transport="grpc", retries=0)
    return client.predict({common.INPUT_KEY: ["The striker scored twice in the cup final"]})["label"][
        0
    ].decode()


def _batching_limits(config: Path) -> tuple[int, float]:
    """(max execution batch size, timeout in ms) of a batching config, for the peers' own batching."""
    from serving import config_protos
    from serving.batching_options import BatchingOptions

    options = BatchingOptions.from_proto(
        config_protos.parse_text_file(config_protos.BatchingParameters, str(config))
    )
    return options.execution_batch_size, options.batch_timeout_micros / 1000


def _print_cell(index: int, cell: dict) -> None:
    cpu = cell["server_cpu_ms_per_request"]
    print(
        f"  round {index + 1}: {cell['server']:9s} {cell['transport']:4s} {cell.get('client', ''):6s} "
        f"c={cell['concurrency']:<3d} {cell['rate']:8.0f} req/s  p50 {cell['p50_ms']:7.2f} ms  "
        f"CPU {cpu if cpu is not None else float('nan'):5.2f} ms/req  errors {cell['errors']}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(report.markdown(json.loads(args.render.read_text())))
        return 0
    load.require_tools()
    args.workdir.mkdir(parents=True, exist_ok=True)
    document = common.pick_document(args.data)
    exports = args.model or [common.train_model(args.data, args.workdir / "train" / a, a) for a in args.arch]
    for export in exports:
        started = time.monotonic()
        result = bench_export(export, args, document)
        result["wall_s"] = time.monotonic() - started
        table = report.markdown(result)
        out = args.workdir / f"serving-{result['arch']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
        print(f"\n{table}\n\nwrote {out} and {out.with_suffix('.md')}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
