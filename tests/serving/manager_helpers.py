"""Helpers shared by the model-store tests: configs, in-process managers, version dirs.

Real SavedModels (TF Serving's test models, copied to tmp dirs) are loaded into
real Sessions; only the gRPC/REST front ends are left out.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator

import numpy as np
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.flags import options_for_tests
from serving.model_manager import ModelManager
from serving.servable import Servable
from tests.serving.conftest import wait_for as wait_for_condition

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"

# The manager is polled in-process, so a shorter bound than the server tests' suffices.
wait_for = functools.partial(wait_for_condition, timeout_s=20.0)


def make_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def one_model(
    base_path, policy: str = "", labels: str = "", name: str = "m"
) -> model_server_config_pb2.ModelServerConfig:
    return make_config(f"""
        model_config_list {{ config {{
          name: "{name}" base_path: "{base_path}" model_platform: "tensorflow"
          {policy} {labels}
        }} }}""")


@contextlib.contextmanager
def manager_factory() -> Iterator:
    """Yields `build(**flag_overrides)`: managers with fast polling and no retries, stopped afterwards."""
    made: list[ModelManager] = []

    def build(**overrides) -> ModelManager:
        settings = {
            "file_system_poll_wait_seconds": 1,
            "max_num_load_retries": 0,
            "load_retry_interval_micros": 0,
        }
        settings.update(overrides)
        manager = ModelManager(options_for_tests(**settings))
        made.append(manager)
        return manager

    try:
        yield build
    finally:
        for manager in made:
            manager.stop()


def predict_y(servable: Servable, values) -> list[float]:
    signature = servable.signature_defs["serving_default"]
    (out,) = servable.run(
        {signature.inputs["x"].name: np.array(values, np.float32)}, [signature.outputs["y"].name]
    )
    return out.tolist()


def states(manager: ModelManager, name: str = "m") -> dict[int, tuple[int, int]]:
    response = manager.model_status(name)
    return {s.version: (s.state, s.status.error_code) for s in response.model_version_status}


def add_version(testdata, base, version: str, source_version: str = "00000123") -> None:
    """Copies a version in atomically (staging dir + rename), as a careful exporter does."""
    staging = base.parent / f".staging-{version}"
    shutil.copytree(testdata / TWO_VERSIONS / source_version, staging)
    os.rename(staging, base / version)


def break_version(base, version: str) -> None:
    """A version dir whose saved_model.pb is garbage: the load fails."""
    (base / version / "variables").mkdir(parents=True)
    (base / version / "saved_model.pb").write_bytes(b"this is not a SavedModel")
