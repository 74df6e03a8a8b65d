"""The model store in-process: config checks, versions, policies, labels, polling, warmup.

Real SavedModels (TF Serving's test models, copied to tmp dirs) are loaded into
real Sessions; only the gRPC/REST front ends are left out (test_server_process
covers them).
"""

from __future__ import annotations

import functools
import os
import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import model_manager, warmup
from serving.dataplane import DataPlane
from serving.errors import ServingError
from serving.flags import options_for_tests
from serving.model_manager import AVAILABLE, END, ModelManager
from serving.servable import Servable
from tests.serving.conftest import copy_model
from tests.serving.conftest import wait_for as wait_for_condition

TWO_VERSIONS = "saved_model_half_plus_two_2_versions"


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


@pytest.fixture
def managers():
    """Builds managers with fast polling and no retries; stops them afterwards."""
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

    yield build
    for manager in made:
        manager.stop()


def predict_y(servable: Servable, values) -> list[float]:
    signature = servable.signature_defs["serving_default"]
    (out,) = servable.run(
        {signature.inputs["x"].name: np.array(values, np.float32)}, [signature.outputs["y"].name]
    )
    return out.tolist()


# The manager is polled in-process, so a shorter bound than the server tests' suffices.
wait_for = functools.partial(wait_for_condition, timeout_s=20.0)


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


# ---- config checks and discovery (no TensorFlow loads) ----------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'model_config_list { config { name: "a" base_path: "/x" model_platform: "tensorflow" } '
            'config { name: "a" base_path: "/y" model_platform: "tensorflow" } }',
            "Illegal to list model a multiple times in config list",
        ),
        (
            'model_config_list { config { name: "a" base_path: "models/a" model_platform: "tensorflow" } }',
            "Expected model a to have an absolute path or URI; got base_path()=models/a",
        ),
        (
            'model_config_list { config { name: "a" base_path: "/x" } }',
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform.",
        ),
    ],
)
def test_invalid_configs_are_rejected_with_tf_servings_message(text, message):
    with pytest.raises(ServingError) as raised:
        model_manager.validate_config(make_config(text))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == message


def test_other_platforms_and_custom_configs_are_rejected():
    with pytest.raises(ServingError, match="unsupported platform tflite"):
        model_manager.validate_config(
            make_config('model_config_list { config { name: "a" base_path: "/x" model_platform: "tflite" } }')
        )
    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.type_url = "x"
    with pytest.raises(ServingError) as raised:
        model_manager.validate_config(custom)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_single_model_flags_build_one_tensorflow_model():
    config = model_manager.initial_config(options_for_tests(model_name="bbc", model_base_path="/srv/bbc"))
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("bbc", "/srv/bbc", "tensorflow")


def test_config_file_parse_error_uses_tf_servings_phrase(tfs_testdata):
    from serving.config_protos import TextProtoError

    bad = tfs_testdata / "reference" / "bad_model_config.txt"
    with pytest.raises(TextProtoError) as raised:
        model_manager.read_config_file(str(bad))
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in raised.value.log_line


def test_version_discovery(tmp_path):
    for name in ["00000123", "7", "12x", "-3", "tmp", "99999999999999999999", "8"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "8" / "saved_model.pb").unlink()  # still being written
    (tmp_path / "5").write_text("a file, not a directory")
    found = model_manager.discover_versions(str(tmp_path))
    assert found == {123: str(tmp_path / "00000123"), 7: str(tmp_path / "7")}
    assert model_manager.discover_versions(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("", [9]),
        ("model_version_policy { latest { } }", [9]),
        ("model_version_policy { latest { num_versions: 2 } }", [9, 5]),
        ("model_version_policy { all { } }", [9, 5, 1]),
        ("model_version_policy { specific { versions: 1 versions: 42 } }", [1]),
    ],
)
def test_version_policies(policy, expected):
    (model,) = one_model("/x", policy).model_config_list.config
    found = {1: "/x/1", 5: "/x/5", 9: "/x/9"}
    assert sorted(model_manager.aspired_versions(model, found), reverse=True) == expected


# ---- loading, resolving, status ------------------------------------------------------------


def test_latest_policy_serves_highest_and_resolves(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m")
    manager = managers()
    manager.start(one_model(base))
    servable = manager.resolve("m")
    assert servable.version == 124
    assert predict_y(servable, [1.0, 2.0, 5.0]) == [2.5, 3.0, 4.5]
    assert manager.resolve("m", version=124) is servable
    with pytest.raises(ServingError) as raised:
        manager.resolve("m", version=123)
    assert (raised.value.code, raised.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(m, 123)",
    )
    with pytest.raises(ServingError) as raised:
        manager.resolve("nope")
    assert raised.value.message == "Servable not found for request: Latest(nope)"
    with pytest.raises(ServingError) as raised:
        manager.resolve("m", label="stable")
    assert (raised.value.code, raised.value.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Unrecognized servable version label: stable",
    )
    assert states(manager) == {124: (AVAILABLE, 0)}
    assert manager.model_names() == ["m"]


def test_status_errors_name_model_and_version(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    manager = managers()
    manager.start(one_model(base))
    with pytest.raises(ServingError) as raised:
        manager.model_status("other")
    assert (raised.value.code, raised.value.message) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model other",
    )
    with pytest.raises(ServingError) as raised:
        manager.model_status("m", 7)
    assert raised.value.message == "Could not find version 7 of model m"
    (entry,) = manager.model_status("m", 123).model_version_status
    assert (entry.version, entry.state, entry.status.error_code) == (123, AVAILABLE, 0)


def test_startup_labels_need_the_allow_flag(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m")
    labelled = one_model(
        base, "model_version_policy { all { } }", 'version_labels { key: "stable" value: 123 }'
    )
    with pytest.raises(ServingError) as raised:
        managers().start(labelled)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.message == (
        "Request to assign label to version 123 of model m, which is not currently available for inference"
    )
    manager = managers(allow_version_labels_for_unavailable_models=True)
    manager.start(labelled)
    assert manager.resolve("m", label="stable").version == 123


def test_labels_by_reload(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m")
    manager = managers()
    manager.start(one_model(base, "model_version_policy { all { } }"))
    assert sorted(states(manager)) == [123, 124]
    manager.reload_config(
        one_model(
            base,
            "model_version_policy { all { } }",
            'version_labels { key: "stable" value: 123 } version_labels { key: "canary" value: 124 }',
        )
    )
    assert manager.resolve("m", label="stable").version == 123
    assert manager.resolve("m", label="canary").version == 124
    assert manager.resolve("m").version == 124
    # A label on a version that is not loaded is refused; the old labels stay.
    with pytest.raises(ServingError) as raised:
        manager.reload_config(
            one_model(base, "model_version_policy { all { } }", 'version_labels { key: "stable" value: 999 }')
        )
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert manager.resolve("m", label="stable").version == 123


def test_moving_a_label_to_an_unavailable_version_fails_even_with_the_flag(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m")
    manager = managers(allow_version_labels_for_unavailable_models=True)
    manager.start(
        one_model(base, "model_version_policy { all { } }", 'version_labels { key: "stable" value: 123 }')
    )
    with pytest.raises(ServingError) as raised:
        manager.reload_config(
            one_model(base, "model_version_policy { all { } }", 'version_labels { key: "stable" value: 500 }')
        )
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # A new label may point ahead of loading with the flag.
    manager.reload_config(
        one_model(
            base,
            "model_version_policy { all { } }",
            'version_labels { key: "stable" value: 123 } version_labels { key: "next" value: 500 }',
        )
    )
    with pytest.raises(ServingError, match=r"Specific\(m, 500\)"):
        manager.resolve("m", label="next")


def test_reload_adds_and_removes_models(tfs_testdata, tmp_path, managers):
    first = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "a", versions=["00000123"])
    second = copy_model(tfs_testdata, "saved_model_half_plus_three", tmp_path / "b")
    manager = managers()
    manager.start(one_model(first, name="a"))
    manager.reload_config(one_model(second, name="b"))
    assert manager.model_names() == ["b"]
    assert predict_y(manager.resolve("b"), [2.0]) == [4.0]  # half plus three
    with pytest.raises(ServingError, match=r"Latest\(a\)"):
        manager.resolve("a")
    # The removed model's version stays in the status monitor as END.
    assert states(manager, "a") == {123: (END, 0)}
    with pytest.raises(ServingError) as raised:
        manager.reload_config(
            make_config(f'model_config_list {{ config {{ name: "c" base_path: "{second}" }} }}')
        )
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert manager.model_names() == ["b"]


def test_startup_fails_when_a_model_cannot_load(tmp_path, managers):
    base = tmp_path / "broken"
    break_version(base, "1")
    with pytest.raises(ServingError) as raised:
        managers().start(one_model(base))
    assert raised.value.code == grpc.StatusCode.UNKNOWN
    assert raised.value.message.startswith(
        "1 servable(s) did not become available: {{{name: m version: 1} due to error: "
    )


def test_tags_select_the_metagraph(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    with pytest.raises(ServingError, match="did not become available"):
        managers(saved_model_tags="serve,gpu").start(one_model(base))


# ---- polling ------------------------------------------------------------------------------


def test_polling_swaps_in_new_version_and_ignores_half_written_and_broken_ones(
    tfs_testdata, tmp_path, managers
):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    manager = managers()
    manager.start(one_model(base))
    old = manager.resolve("m")
    assert old.version == 123

    add_version(tfs_testdata, base, "00000124", "00000124")
    assert wait_for(lambda: manager.resolve("m").version == 124)
    assert wait_for(lambda: states(manager) == {124: (AVAILABLE, 0), 123: (END, 0)})
    # A request that resolved the old version before the swap still runs.
    assert predict_y(old, [4.0]) == [4.0]

    # Being written: variables copied, saved_model.pb not yet. Never loaded.
    shutil.copytree(tfs_testdata / TWO_VERSIONS / "00000123" / "variables", base / "125" / "variables")
    # Complete but broken: fails, reported END with an error, 124 keeps serving.
    break_version(base, "126")
    assert wait_for(lambda: 126 in states(manager) and states(manager)[126][0] == END)
    _state, code = states(manager)[126]
    assert code != 0
    assert 125 not in states(manager)
    assert manager.resolve("m").version == 124
    assert predict_y(manager.resolve("m"), [2.0]) == [3.0]
    message = manager.model_status("m", 126).model_version_status[0].status.error_message
    assert message  # the load error is reported

    # Once fixed (its files change), the broken version is tried again and served.
    shutil.rmtree(base / "126")
    add_version(tfs_testdata, base, "126")
    assert wait_for(lambda: manager.resolve("m").version == 126)
    assert states(manager)[124] == (END, 0)


def test_removed_version_is_unloaded_by_polling(tfs_testdata, tmp_path, managers):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m")
    manager = managers()
    manager.start(one_model(base, "model_version_policy { all { } }"))
    shutil.rmtree(base / "00000124")
    assert wait_for(lambda: manager.available_versions("m") == [123])
    assert states(manager)[124] == (END, 0)


def test_config_file_is_re_read(tfs_testdata, tmp_path, managers):
    first = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "a", versions=["00000123"])
    second = copy_model(tfs_testdata, "saved_model_half_plus_three", tmp_path / "b")
    config_file = tmp_path / "models.config"
    config_file.write_text(text_format.MessageToString(one_model(first, name="a")))
    manager = managers(model_config_file=str(config_file), model_config_file_poll_wait_seconds=1)
    manager.start(model_manager.initial_config(manager._options))
    config_file.write_text("this does not parse")
    time.sleep(2.5)
    assert manager.model_names() == ["a"]  # bad file logged and ignored
    both = one_model(first, name="a")
    both.model_config_list.config.extend(one_model(second, name="b").model_config_list.config)
    config_file.write_text(text_format.MessageToString(both))
    assert wait_for(lambda: manager.model_names() == ["a", "b"] and manager.available_versions("b"))
    assert manager.resolve("a").version == 123


# ---- warmup ----------------------------------------------------------------------------------


def write_warmup(version_dir, records: list[bytes]) -> None:
    extra = version_dir / warmup.WARMUP_DIR
    extra.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / warmup.WARMUP_FILE)) as writer:
        for record in records:
            writer.write(record)


def predict_log(values, dtype=tf.float32) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "name in the log does not matter"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(request)
    return log.SerializeToString()


@pytest.fixture
def warm_manager(managers):
    """A manager whose loads replay warmup files through a real DataPlane."""

    def build(**overrides):
        manager = managers(**overrides)
        dataplane = DataPlane(manager, manager._options)
        replayed: list[int] = []

        def hook(servable):
            replayed.append(
                warmup.run_warmup(
                    servable,
                    dataplane.replay_warmup_record,
                    manager._options.num_request_iterations_for_warmup,
                )
            )

        return manager, hook, replayed

    return build


def test_warmup_replays_records_before_serving(tfs_testdata, tmp_path, warm_manager):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    write_warmup(base / "00000123", [predict_log([1.0, 2.0]), predict_log([3.0])])
    manager, hook, replayed = warm_manager(num_request_iterations_for_warmup=3)
    manager.start(one_model(base), warmup=hook)
    assert replayed == [2]
    assert manager.resolve("m").version == 123


@pytest.mark.parametrize(
    "records, code, phrase",
    [
        ([predict_log(["not a float"], tf.string)], grpc.StatusCode.INVALID_ARGUMENT, "to be float"),
        (
            [predict_log([1.0])] * (warmup.MAX_RECORDS + 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Number of warmup records exceeds the maximum (1000)",
        ),
        ([b"\x00not a prediction log"], grpc.StatusCode.INVALID_ARGUMENT, "PredictionLog"),
        (
            [
                prediction_log_pb2.PredictionLog(
                    session_run_log=prediction_log_pb2.SessionRunLog()
                ).SerializeToString()
            ],
            grpc.StatusCode.UNIMPLEMENTED,
            "session_run_log",
        ),
    ],
)
def test_bad_warmup_fails_the_versions_load(tfs_testdata, tmp_path, warm_manager, records, code, phrase):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    write_warmup(base / "00000123", records)
    manager, hook, _ = warm_manager()
    with pytest.raises(ServingError, match="did not become available"):
        manager.start(one_model(base), warmup=hook)
    (entry,) = manager.model_status("m").model_version_status
    assert entry.state == END
    assert entry.status.error_code == code.value[0]
    assert phrase in entry.status.error_message


def test_corrupt_warmup_file_is_data_loss(tfs_testdata, tmp_path):
    base = copy_model(tfs_testdata, TWO_VERSIONS, tmp_path / "m", versions=["00000123"])
    (base / "00000123" / warmup.WARMUP_DIR).mkdir()
    (base / "00000123" / warmup.WARMUP_DIR / warmup.WARMUP_FILE).write_bytes(b"not a tfrecord file at all")
    with pytest.raises(ServingError) as raised:
        warmup.read_warmup_records(warmup.warmup_path(str(base / "00000123")))
    assert raised.value.code == grpc.StatusCode.DATA_LOSS
    assert "verify your warmup data is in TFRecord format" in raised.value.message
