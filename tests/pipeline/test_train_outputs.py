"""What a training run leaves for people: TensorBoard logs, the model card, plots and timings."""

import json

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from preprocessing import names

LABELS = ["cooking", "football", "markets", "space"]


def _events(directory):
    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return accumulator


def test_tensorboard_logs_hold_curves_confusion_image_and_hparams(tiny_run):
    logs = tiny_run.run_dir / "logs"
    history = json.loads((tiny_run.run_dir / "history.json").read_text())
    for split, key in (("train", "loss"), ("validation", "val_loss")):
        curve = _events(logs / split).Tensors("epoch_loss")
        assert [event.step for event in curve] == list(range(len(history[key])))
        np.testing.assert_allclose(
            [float(tf.make_ndarray(event.tensor_proto)) for event in curve], history[key], rtol=1e-5
        )
    root = _events(logs)
    tags = root.Tags()["tensors"]
    assert "confusion_matrix" in tags and "_hparams_/session_start_info" in tags
    image = tf.make_ndarray(root.Tensors("confusion_matrix")[0].tensor_proto)
    assert image[2].startswith(b"\x89PNG")  # [width, height, encoded PNG]
    test_accuracy = float(tf.make_ndarray(root.Tensors("test/accuracy")[0].tensor_proto))
    assert test_accuracy == pytest.approx(tiny_run.metrics["test"]["accuracy"], abs=1e-6)

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = root.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["model.arch"].string_value == "bilstm"
    assert hparams["train.epochs"].number_value == 2


def test_model_card_follows_the_model_cards_sections(tiny_run):
    card = json.loads((tiny_run.version_dir / names.ASSETS_EXTRA / names.MODEL_CARD_FILE).read_text())
    for section in (
        "model_details",
        "intended_use",
        "training_data",
        "evaluation_data",
        "quantitative_analysis",
        "limitations",
        "how_to_call",
    ):
        assert card[section], section
    test = card["quantitative_analysis"]["test"]
    low, high = test["confidence_intervals_95"]["accuracy"]
    assert 0.0 <= low <= test["accuracy"] <= high <= 1.0 and high - low > 0.05  # 8 test documents
    assert test["documents"] == tiny_run.metrics["test"]["count"]
    assert "Not recorded" in card["training_data"]["licence"]  # not the BBC data: no licence to claim
    assert any("4 classes" in text for text in card["limitations"])
    assert "tiny:predict" in card["how_to_call"]["rest"]

    markdown = (tiny_run.run_dir / "MODEL_CARD.md").read_text()
    for heading in (
        "## Intended use",
        "## Training data",
        "## Evaluation data",
        "## Limitations",
        "## How to call it",
    ):
        assert heading in markdown
    assert f"95% CI {low:.4f}–{high:.4f}" in markdown


def test_confusion_plot_has_counts_and_normalised_panels(tiny_run):
    import matplotlib.image

    picture = matplotlib.image.imread(tiny_run.run_dir / "confusion_matrix.png")
    height, width = picture.shape[:2]
    assert width > 1.8 * height  # two square panels side by side


def test_metrics_record_wall_and_cpu_time_per_step(tiny_run):
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    for timings in (metrics["timings"], metrics["cpu_seconds"]):
        steps = {"adapt", "features", "fit", "export", "verify", "evaluate", "artifacts", "total"}
        assert steps <= set(timings)
        assert sum(v for k, v in timings.items() if k != "total") <= timings["total"] + 1e-2
    assert tiny_run.timings == metrics["timings"]
    assert metrics["test"]["intervals"]["macro_f1"][0] <= metrics["test"]["macro_f1"]


def test_a_finished_repeat_is_reused_only_for_the_same_config(tiny_run):
    from pipeline.config import load_config
    from pipeline.train import _finished_repeat
    from tests.conftest import TINY_OVERRIDES

    config = load_config(tiny_run.run_dir / "config.toml")
    reused = _finished_repeat(tiny_run.run_dir, config)
    assert (
        reused is not None
        and reused["test"] == json.loads((tiny_run.run_dir / "metrics.json").read_text())["test"]
    )
    other = load_config(None, [*TINY_OVERRIDES, "train.epochs=3"])
    with pytest.raises(FileExistsError, match="another config"):
        _finished_repeat(tiny_run.run_dir, other)
