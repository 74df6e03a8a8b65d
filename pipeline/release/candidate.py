"""The candidate of a push: a run's highest exported version, loaded, and the run's test split.

The test split is rebuilt from the data named in the model card (or `--data`
when it moved), checked against the card's fingerprint, and cut by the run's
`splits.json`, so the gate scores the candidate on documents it never trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow.core.protobuf import saved_model_pb2

from model.export import ExportedModel, resolve_version_dir
from pipeline.config import PipelineConfig
from pipeline.data import Dataset, ingest
from pipeline.errors import DataError, ReleaseError
from preprocessing import names


@dataclass
class Candidate:
    """A run's exported version, loaded, with the context the gate needs.

    Attributes:
      run_dir: the run directory.
      version_dir: `RUN/export/<version>`.
      model: the loaded SavedModel.
      card: its `assets.extra/model_card.json`.
    """

    run_dir: Path
    version_dir: Path
    model: ExportedModel
    card: dict


def load_model(version_dir: Path, what: str) -> ExportedModel:
    """Loads a SavedModel version for evaluation.

    Args:
      version_dir: the version directory.
      what: how to name it in errors ("candidate", "served version 2").

    Returns:
      The loaded model.

    Raises:
      ReleaseError: `saved_model.pb` is unreadable or the model does not load.
    """
    pb_path = version_dir / "saved_model.pb"
    try:
        saved_model_pb2.SavedModel.FromString(pb_path.read_bytes())
    except (OSError, protobuf_message.DecodeError) as error:
        raise ReleaseError(
            f"{what}: {pb_path} is not a readable SavedModel ({error}). "
            f"Re-export it (textserve train) instead of pushing it."
        ) from error
    try:
        return ExportedModel(version_dir)
    except (tf.errors.OpError, ValueError, OSError, KeyError) as error:
        message = getattr(error, "message", None) or str(error)
        raise ReleaseError(
            f"{what}: {version_dir} does not load as a SavedModel: {message.splitlines()[0]}. "
            f"Re-export it (textserve train) instead of pushing it."
        ) from error


def load_candidate(run_dir: str | Path) -> Candidate:
    """Loads the highest exported version of a run.

    Args:
      run_dir: a run directory written by `textserve train`.

    Returns:
      The candidate.

    Raises:
      ReleaseError: the run has no export, or the export does not load.
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ReleaseError(f"{run_dir}: no such run directory.")
    try:
        version_dir = resolve_version_dir(run_dir / "export")
    except FileNotFoundError:
        raise ReleaseError(
            f"{run_dir} has no export: expected {run_dir / 'export'}/<version>/saved_model.pb. "
            f"Train first (textserve train --out {run_dir}), or pass the run directory that holds export/."
        ) from None
    model = load_model(version_dir, "candidate")
    if not model.card:
        raise ReleaseError(
            f"{version_dir}/{names.ASSETS_EXTRA}/{names.MODEL_CARD_FILE} is missing: "
            f"without it the push has no lineage. Export with textserve train."
        )
    return Candidate(run_dir, version_dir, model, model.card)


def data_source(candidate: Candidate, data_path: str | Path | None = None) -> Path:
    """Where the run's data is: `data_path` if given, else the card's `data.source`.

    Training records an absolute `data.source`; a relative one (older cards)
    is taken relative to the current directory, as those runs were.
    """
    if data_path:
        return Path(data_path).resolve()
    return Path(candidate.card.get("data", {}).get("source", "")).resolve()


def read_run_data(
    candidate: Candidate, config: PipelineConfig, data_path: str | Path | None = None
) -> Dataset:
    """Re-reads the data the run was trained on and checks its fingerprint.

    Args:
      candidate: the loaded candidate (its model card names the data).
      config: the run's config (its `data` section says how to read the data).
      data_path: where the data is now, when it has moved since training.

    Returns:
      The deduplicated dataset, as training saw it.

    Raises:
      ReleaseError: the data is missing or changed (fingerprint).
    """
    source = data_source(candidate, data_path)
    if not source.exists():
        raise ReleaseError(
            f"the run's data {source} (model card data.source) is not there; pass --data PATH to where it is now."
        )
    try:
        dataset = ingest(source, config.data)
    except DataError as error:
        raise ReleaseError(f"cannot re-read the run's data: {error}") from error
    expected = candidate.card.get("data", {}).get("fingerprint")
    if expected and dataset.report["fingerprint"] != expected:
        raise ReleaseError(
            f"the data at {source} changed since training (fingerprint {dataset.report['fingerprint'][:12]} "
            f"!= {expected[:12]} in the model card), so the run's test split cannot be rebuilt; "
            f"pass --data PATH with the data the run was trained on."
        )
    return dataset


def load_test_split(
    candidate: Candidate, config: PipelineConfig, data_path: str | Path | None = None
) -> Dataset:
    """Re-reads the run's data and cuts the test documents listed in its splits.json.

    Args:
      candidate: the loaded candidate (its model card names the data).
      config: the run's config (its `data` section says how to read the data).
      data_path: where the data is now, when it has moved since training.

    Returns:
      The run's test documents.

    Raises:
      ReleaseError: the data is missing or changed (fingerprint), or the split names unknown ids.
    """
    splits_file = candidate.run_dir / "splits.json"
    if not splits_file.is_file():
        raise ReleaseError(f"{splits_file} is missing: the gate needs the run's test split.")
    dataset = read_run_data(candidate, config, data_path)
    test_ids = json.loads(splits_file.read_text("utf-8"))["test"]
    try:
        return dataset.subset(test_ids)
    except KeyError as error:
        raise ReleaseError(
            f"{splits_file}: test id {error} is not in {data_source(candidate, data_path)}."
        ) from None
