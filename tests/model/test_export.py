"""The exported SavedModel: signatures, self-containment, extras, and golden behaviour."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from model.export import ExportedModel, resolve_version_dir
from preprocessing import names


def _signature_defs(version_dir):
    saved_model = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    return saved_model.meta_graphs[0].signature_def


def test_signatures_are_what_tf_serving_needs(tiny_run):
    sigs = _signature_defs(tiny_run.version_dir)
    predict, classify = sigs[names.PREDICT_SIGNATURE], sigs[names.CLASSIFY_SIGNATURE]
    assert predict.method_name == "tensorflow/serving/predict"
    assert list(predict.inputs) == ["text"] and predict.inputs["text"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in predict.inputs["text"].tensor_shape.dim] == [-1]
    assert set(predict.outputs) == {"probabilities", "label", "class_id", "score"}
    assert predict.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in predict.outputs["probabilities"].tensor_shape.dim] == [-1, 4]
    assert predict.outputs["label"].dtype == tf.string.as_datatype_enum
    assert predict.outputs["class_id"].dtype == tf.int64.as_datatype_enum
    assert classify.method_name == "tensorflow/serving/classify"
    assert list(classify.inputs) == ["inputs"]
    assert set(classify.outputs) == {"classes", "scores"}


def test_export_is_self_contained(tiny_run, tmp_path):
    """Copy only the export, delete the run and the corpus stays irrelevant: it still predicts."""
    copy = tmp_path / "only_export" / "1"
    shutil.copytree(tiny_run.version_dir, copy)
    model = ExportedModel(copy.parent)
    outputs = model.predict(["The striker scored a penalty goal in the cup match", "Investors bought shares"])
    labels = [label.decode() for label in outputs["label"]]
    assert set(labels) <= {"cooking", "football", "markets", "space"}
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert outputs["class_id"].dtype == np.int64
    np.testing.assert_allclose(outputs["score"], outputs["probabilities"].max(axis=1))
    assert model.label_names == ["cooking", "football", "markets", "space"]


def test_classify_signature_reads_tf_examples(tiny_run):
    loaded = tf.saved_model.load(str(tiny_run.version_dir))
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))}
            )
        ).SerializeToString()
        for text in ("oven recipe flour", "rocket launch orbit")
    ]
    out = loaded.signatures["classify"](inputs=tf.constant(examples))
    assert out["classes"].shape == (2, 4) and out["scores"].shape == (2, 4)
    assert [c.decode() for c in out["classes"].numpy()[0]] == ["cooking", "football", "markets", "space"]
    predicted = loaded.signatures["serving_default"](
        text=tf.constant(["oven recipe flour", "rocket launch orbit"])
    )
    np.testing.assert_allclose(out["scores"].numpy(), predicted["probabilities"].numpy(), atol=1e-6)


def test_warmup_requests_and_model_card(tiny_run):
    extra = tiny_run.version_dir / names.ASSETS_EXTRA
    records = list(tf.data.TFRecordDataset(str(extra / names.WARMUP_FILE)).as_numpy_iterator())
    assert 1 <= len(records) <= 5
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    assert log.predict_log.request.model_spec.signature_name == "serving_default"
    assert log.predict_log.request.inputs["text"].string_val
    card = json.loads((extra / names.MODEL_CARD_FILE).read_text())
    assert card["labels"] == ["cooking", "football", "markets", "space"]
    assert card["metrics"]["test"]["accuracy"] == tiny_run.metrics["test"]["accuracy"]
    assert card["tensorflow_version"] == tf.__version__ and len(card["data"]["fingerprint"]) == 64
    assert (extra / names.CONFIG_FILE).read_text().startswith("[data]")


def test_run_directory_artifacts(tiny_run):
    run = tiny_run.run_dir
    for name in (
        "config.toml",
        "data_report.json",
        "splits.json",
        "metrics.json",
        "history.png",
        "confusion_matrix.png",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("validation", "test"):
        assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(metrics[split])
    assert metrics["verification"]["max_abs_difference"] <= 1e-5
    splits = json.loads((run / "splits.json").read_text())
    assert sum(len(splits[s]) for s in ("train", "validation", "test")) == 96


def test_saved_model_cli_shows_both_signatures(tiny_run):
    cli = shutil.which("saved_model_cli", path=str(__import__("pathlib").Path(sys.executable).parent))
    if cli is None:
        pytest.skip("saved_model_cli is not installed next to this Python")
    shown = subprocess.run(
        [cli, "show", "--dir", str(tiny_run.version_dir), "--all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "signature_def['serving_default']" in shown.stdout and "signature_def['classify']" in shown.stdout
    assert "tensorflow/serving/classify" in shown.stdout


def test_resolve_version_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel here"):
        resolve_version_dir(tmp_path)


def test_graph_loader_restores_every_variable(tiny_run):
    """TF Serving loads SavedModels into a graph session (C++ loader); ours must restore there too."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(tiny_run.version_dir))
        signature = meta_graph.signature_def["serving_default"]
        fetches = {key: info.name for key, info in signature.outputs.items()}
        texts = np.array([b"oven recipe flour", b"rocket orbit launch"], dtype=object)
        in_graph = session.run(fetches, {signature.inputs["text"].name: texts})
    eager = ExportedModel(tiny_run.version_dir).predict([t.decode() for t in texts])
    np.testing.assert_allclose(in_graph["probabilities"], eager["probabilities"], atol=1e-6)
    assert list(in_graph["label"]) == list(eager["label"])
