"""KServe's Python ModelServer serving the SavedModel on the v1 protocol (`/v1/models/M:predict`).

KServe batches in its Go agent sidecar (`batcher`), which a pip install does not
ship; the Python ModelServer runs one `predict` per request, so this peer runs
without a batcher. One worker process, as the other contenders.

    python kserve_app.py --model VERSION_DIR --port 8080
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _model
import kserve


class TextClassifier(kserve.Model):
    def __init__(self, name: str, version_dir: str):
        super().__init__(name)
        self.version_dir = version_dir
        self.predict_texts = None

    def load(self) -> bool:
        self.predict_texts = _model.load(self.version_dir)
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None, response_headers=None):
        return {"predictions": [{"label": label} for label in self.predict_texts(payload["instances"])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="bbc_news")
    args = parser.parse_args()
    model = TextClassifier(args.name, args.model)
    model.load()
    kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1, enable_latency_logging=False).start(
        [model]
    )


if __name__ == "__main__":
    main()
