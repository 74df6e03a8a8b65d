"""The model repository: config checks, version discovery, policies, resolve, status, labels.

Real SavedModels (TF Serving's test models, copied to tmp dirs) are loaded into
real Sessions by an in-process manager; test_server_process covers the front ends.
"""

from __future__ import annotations

import grpc
import pytest
from tensorflow_serving.config import model_server_config_pb2

from serving import model_manager, model_repository
from serving.errors import ServingError
from serving.flags import options_for_tests
from serving.model_repository import AVAILABLE
from tests.serving.conftest import copy_model
from tests.serving.manager_helpers import (
    TWO_VERSIONS,
    make_config,
    manager_factory,
    one_model,
    predict_y,
    states,
)


@pytest.fixture
def managers():
    with manager_factory() as build:
        yield build


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
        model_repository.validate_config(make_config(text))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == message


def test_other_platforms_and_custom_configs_are_rejected():
    with pytest.raises(ServingError, match="unsupported platform tflite"):
        model_repository.validate_config(
            make_config('model_config_list { config { name: "a" base_path: "/x" model_platform: "tflite" } }')
        )
    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.type_url = "x"
    with pytest.raises(ServingError) as raised:
        model_repository.validate_config(custom)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_single_model_flags_build_one_tensorflow_model():
    config = model_manager.initial_config(options_for_tests(model_name="bbc", model_base_path="/srv/bbc"))
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("bbc", "/srv/bbc", "tensorflow")


def test_config_file_parse_error_uses_tf_servings_phrase(tfs_testdata):
    from serving.config_protos import TextProtoError

    bad = tfs_testdata / "reference" / "bad_model_config.txt"
    with pytest.raises(TextProtoError) as raised:
        model_repository.read_config_file(str(bad))
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in raised.value.log_line


def test_version_discovery(tmp_path):
    for name in ["00000123", "7", "12x", "-3", "tmp", "99999999999999999999", "8"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    (tmp_path / "8" / "saved_model.pb").unlink()  # still being written
    (tmp_path / "5").write_text("a file, not a directory")
    found = model_repository.discover_versions(str(tmp_path))
    assert found == {123: str(tmp_path / "00000123"), 7: str(tmp_path / "7")}
    assert model_repository.discover_versions(str(tmp_path / "missing")) == {}


def test_scanning_tells_missing_and_unlistable_base_paths_apart(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "9").mkdir()  # no saved_model.pb yet: still being written
    assert model_repository.scan_base_path(str(tmp_path)) == {7: str(tmp_path / "7")}
    assert model_repository.scan_base_path(str(tmp_path), complete_only=False) == {
        7: str(tmp_path / "7"),
        9: str(tmp_path / "9"),
    }
    with pytest.raises(FileNotFoundError):
        model_repository.scan_base_path(str(tmp_path / "missing"))
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(NotADirectoryError):
        model_repository.scan_base_path(str(tmp_path / "file"))
    assert model_repository.discover_versions(str(tmp_path / "file")) == {}


def test_printable_escapes_control_characters_and_cuts_long_names():
    assert model_repository.printable("half_plus_two") == "half_plus_two"
    assert model_repository.printable("é model") == "é model"
    forged = "m\nERROR fake line\r\x1b[31m\u2028"
    assert model_repository.printable(forged) == r"m\nERROR fake line\r\x1b[31m\u2028"
    long = model_repository.printable("x" * 10_000)
    assert len(long) < 300 and long.endswith("(10000 chars)")


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
    assert sorted(model_repository.aspired_versions(model, found), reverse=True) == expected


# ---- resolving, status, labels ------------------------------------------------------------


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
