"""BentoML serving the SavedModel with adaptive batching (`batchable=True`).

POST /predict with `{"instances": ["text"]}`; one worker. `bentoml serve` imports
this module, so the model directory and batching limits come from the
environment the benchmark sets: BENCH_MODEL_DIR, BENCH_MAX_BATCH_SIZE,
BENCH_MAX_LATENCY_MS.

    BENCH_MODEL_DIR=VERSION_DIR bentoml serve bentoml_app:TextClassifier --port 3000
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _model
import bentoml


@bentoml.service(workers=1)
class TextClassifier:
    def __init__(self) -> None:
        self.predict_texts = _model.load(os.environ["BENCH_MODEL_DIR"])

    @bentoml.api(
        batchable=True,
        max_batch_size=int(os.environ.get("BENCH_MAX_BATCH_SIZE", "64")),
        max_latency_ms=int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000")),
    )
    def predict(self, instances: list[str]) -> list[dict]:
        return [{"label": label} for label in self.predict_texts(instances)]
