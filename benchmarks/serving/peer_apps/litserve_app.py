"""LitServe serving the SavedModel with its dynamic batching (`max_batch_size`, `batch_timeout`).

POST /predict with `{"instances": ["text"]}`; one worker process.

    python litserve_app.py --model VERSION_DIR --port 8000 --max-batch-size 64 --batch-timeout-ms 2
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _model
import litserve as ls


class TextClassifierAPI(ls.LitAPI):
    def __init__(self, version_dir: str, **batching):
        super().__init__(**batching)
        self.version_dir = version_dir

    def setup(self, device):
        self.predict_texts = _model.load(self.version_dir)

    def decode_request(self, request):
        return request["instances"][0]

    def batch(self, inputs):
        return list(inputs)

    def predict(self, x):
        return self.predict_texts(x if isinstance(x, list) else [x])

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        label = output[0] if isinstance(output, list) else output
        return {"predictions": [{"label": label}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    args = parser.parse_args()
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout_ms / 1000}
    # Batching moved from LitServer to LitAPI in LitServe 0.2.6: pass it where this version takes it.
    if "max_batch_size" in inspect.signature(ls.LitAPI.__init__).parameters:
        api, server_batching = TextClassifierAPI(args.model, **batching), {}
    else:
        api, server_batching = TextClassifierAPI(args.model), batching
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, **server_batching)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
