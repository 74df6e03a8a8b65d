"""The README's main job: train on BBC News, serve the export, and call it both ways.

    textserve demo --data ../shared/data/bbc        # or no --data: fetch the archive first

Steps: train (or reuse `--out`'s export) → start the TF-Serving-compatible
server on the export → one REST and one gRPC prediction, printed with the
curl command to repeat them → keep serving until Ctrl-C (`--exit` stops after
the two calls, for scripts and tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.commands import _add_config_args, _fail

_SAMPLE = (
    "Shares in the carmaker rose sharply after it reported record quarterly profits and raised "
    "its dividend, as investors welcomed the bank's decision to hold interest rates."
)
_READY = "textserve model server is ready"


def register(subparsers) -> None:
    """Adds `textserve demo`."""
    demo = subparsers.add_parser(
        "demo", help="train on BBC News, serve the model, and show a REST and a gRPC prediction",
        description="The whole path in one command: train (or reuse an existing export), start the "
        "server on it, call it over REST and gRPC, then keep serving until Ctrl-C.",
    )
    demo.add_argument("--data", metavar="PATH", help="BBC folder; fetched into the cache when omitted")
    demo.add_argument("--out", default="runs/bbc", metavar="RUN_DIR", help="run directory (default: runs/bbc)")
    demo.add_argument("--model_name", default="bbc_news", help="served model name (default: bbc_news)")
    demo.add_argument("--port", type=int, default=8500, help="gRPC port (default: 8500)")
    demo.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default: 8501)")
    demo.add_argument("--exit", action="store_true", help="stop the server after the two calls")
    _add_config_args(demo)
    demo.set_defaults(run=_run_demo)


def _predict_rest(port: int, model_name: str, text: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models/{model_name}:predict",
        data=json.dumps({"instances": [text]}).encode(), headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _predict_grpc(port: int, model_name: str, text: str) -> tuple[str, float]:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([text], dtype=tf.string))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return reply.outputs["label"].string_val[0].decode(), reply.outputs["score"].float_val[0]


def _start_server(args, export_dir: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "serving", f"--port={args.port}", f"--rest_api_port={args.rest_api_port}",
        f"--model_name={args.model_name}", f"--model_base_path={export_dir.resolve()}",
    ]
    print("$ textserve serve " + " ".join(command[3:]), flush=True)
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in server.stderr:
        if _READY in line:
            print(line.strip(), flush=True)
            return server
    server.wait()
    raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")


def _run_demo(args) -> int:
    from model.export import resolve_version_dir
    from pipeline.config import load_config
    from pipeline.data import DataError
    from pipeline.fetch import FetchError, fetch_bbc
    from pipeline.train import train

    run_dir = Path(args.out)
    export_dir = run_dir / "export"
    try:
        version_dir = resolve_version_dir(export_dir)
        print(f"reusing the export at {version_dir} (delete {run_dir} to retrain)")
    except FileNotFoundError:
        try:
            config = load_config(args.config, args.overrides)
            data = args.data or fetch_bbc(Path.home() / ".cache" / "textserve")
            result = train(config, data, run_dir, verbose=1 if sys.stdout.isatty() else 2)
        except (ValueError, DataError, FetchError, FileExistsError) as error:
            return _fail(str(error))
        test = result.metrics["test"]
        print(f"trained in {result.seconds:.0f}s: test accuracy {test['accuracy']:.4f}, "
              f"macro-F1 {test['macro_f1']:.4f}")

    server = _start_server(args, export_dir)
    try:
        reply = _predict_rest(args.rest_api_port, args.model_name, _SAMPLE)
        prediction = reply["predictions"][0]
        print(f"\nREST  POST /v1/models/{args.model_name}:predict → label={prediction['label']} "
              f"score={prediction['score']:.4f}")
        label, score = _predict_grpc(args.port, args.model_name, _SAMPLE)
        print(f"gRPC  PredictionService/Predict → label={label} score={score:.4f}\n")
        print(f"try:  curl -d '{{\"instances\": [\"The striker scored twice in the cup final\"]}}' "
              f"localhost:{args.rest_api_port}/v1/models/{args.model_name}:predict")
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
