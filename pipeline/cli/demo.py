"""The README's main job: train on BBC News, serve the export, and call it both ways.

    textserve demo --data ../shared/data/bbc        # or no --data: fetch the archive first

Steps: train (or reuse `--out`'s export) → start the TF-Serving-compatible
server on the export → one REST and one gRPC prediction, printed with the
curl command to repeat them → keep serving until Ctrl-C (`--exit` stops after
the two calls, for scripts and tests).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.cli.common import add_config_args, default_cache_dir, fail

_SAMPLE = (
    "Shares in the carmaker rose sharply after it reported record quarterly profits and raised "
    "its dividend, as investors welcomed the bank's decision to hold interest rates."
)


def register(subparsers) -> None:
    """Adds `textserve demo`."""
    demo = subparsers.add_parser(
        "demo",
        help="train on BBC News, serve the model, and show a REST and a gRPC prediction",
        description="The whole path in one command: train (or reuse an existing export), start the "
        "server on it, call it over REST and gRPC, then keep serving until Ctrl-C.",
    )
    demo.add_argument("--data", metavar="PATH", help="BBC folder; fetched into the cache when omitted")
    demo.add_argument(
        "--out", default="runs/bbc", metavar="RUN_DIR", help="run directory (default: runs/bbc)"
    )
    demo.add_argument("--model_name", default="bbc_news", help="served model name (default: bbc_news)")
    demo.add_argument("--port", type=int, default=8500, help="gRPC port (default: 8500)")
    demo.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default: 8501)")
    demo.add_argument("--exit", action="store_true", help="stop the server after the two calls")
    add_config_args(demo)
    demo.set_defaults(run=_run_demo)


def _start_server(args, export_dir: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "serving",
        f"--port={args.port}",
        f"--rest_api_port={args.rest_api_port}",
        f"--model_name={args.model_name}",
        f"--model_base_path={export_dir.resolve()}",
    ]
    print("$ textserve serve " + " ".join(command[3:]), flush=True)
    server = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    from serving.server import READY_MESSAGE

    assert server.stderr is not None  # stderr=PIPE
    for line in server.stderr:
        if READY_MESSAGE in line:
            print(line.strip(), flush=True)
            return server
    server.wait()
    raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")


def _run_demo(args) -> int:
    from model.export import resolve_version_dir
    from pipeline.config import load_config
    from pipeline.errors import DataError, FetchError
    from pipeline.fetch import fetch_bbc
    from pipeline.train import train
    from serving.ports import busy_port_message, port_is_free

    # Check the ports before training, not after a minute of it.
    for port, what in ((args.port, "the gRPC"), (args.rest_api_port, "the REST")):
        if not port_is_free(port):
            return fail(busy_port_message(port, what) + " (demo: --port / --rest_api_port)")
    run_dir = Path(args.out)
    export_dir = run_dir / "export"
    try:
        version_dir = resolve_version_dir(export_dir)
        print(f"reusing the export at {version_dir} (delete {run_dir} to retrain)")
    except FileNotFoundError:
        try:
            config = load_config(args.config, args.overrides)
            data = args.data or fetch_bbc(default_cache_dir())
            result = train(config, data, run_dir, verbose=1 if sys.stdout.isatty() else 2)
        except (ValueError, DataError, FetchError, FileExistsError) as error:
            return fail(str(error))
        test = result.metrics["test"]
        print(
            f"trained in {result.seconds:.0f}s: test accuracy {test['accuracy']:.4f}, "
            f"macro-F1 {test['macro_f1']:.4f}"
        )

    from pipeline.client import TextClassifierClient

    server = _start_server(args, export_dir)
    try:
        with TextClassifierClient(
            f"http://127.0.0.1:{args.rest_api_port}", args.model_name, transport="rest"
        ) as rest:
            (answer,) = rest.predict([_SAMPLE])
        print(
            f"\nREST  POST /v1/models/{args.model_name}:predict → label={answer.label} "
            f"score={answer.score:.4f}"
        )
        with TextClassifierClient(f"127.0.0.1:{args.port}", args.model_name, transport="grpc") as grpc_client:
            (answer,) = grpc_client.predict([_SAMPLE])
        print(f"gRPC  PredictionService/Predict → label={answer.label} score={answer.score:.4f}\n")
        print(
            f'try:  curl -d \'{{"instances": ["The striker scored twice in the cup final"]}}\' '
            f"localhost:{args.rest_api_port}/v1/models/{args.model_name}:predict"
        )
        if args.exit:
            return 0
        print("serving until Ctrl-C ...", flush=True)
        while server.poll() is None:
            time.sleep(0.5)
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
