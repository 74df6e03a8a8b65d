"""The version watcher in-process: loads, failures, polling, reloads, config-file re-reads, warmup.

Real SavedModels (TF Serving's test models, copied to tmp dirs) are loaded into
real Sessions; only the gRPC/REST front ends are left out (test_server_process
covers them; test_lifecycle_faults covers file-system faults and retries).
"""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import model_manager, warmup
from serving.dataplane import DataPlane
from serving.errors import ServingError
from serving.model_repository import AVAILABLE, END
from tests.serving.conftest import copy_model
from tests.serving.manager_helpers import (
    TWO_VERSIONS,
    add_version,
    break_version,
    make_config,
    manager_factory,
    one_model,
    predict_y,
    states,
    wait_for,
)


@pytest.fixture
def managers():
    with manager_factory() as build:
        yield build


# ---- loading and reloading ---------------------------------------------------------------


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
