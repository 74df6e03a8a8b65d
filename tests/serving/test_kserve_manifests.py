"""Checks that serving/k8s/kserve runs our model under KServe's TF Serving runtime.

The InferenceService is rendered with `kubectl kustomize` where kubectl is
installed (assembled from its files otherwise) and checked against what
KServe's `kserve-tensorflow-serving` runtime does with it (its container
flags and where it mounts `storageUri`, from KServe's
config/runtimes/kserve-tensorflow-serving.yaml and storage initializer), the
image pin the runtime check proves, the production overlay's pods, and the
configs TF Serving parses.

    python -m pytest tests/serving/test_kserve_manifests.py -q
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest
from tensorflow_serving.config import model_server_config_pb2

from serving.compat.image_runtimes import read_pin
from tests.serving.manifests import (
    CONFIG_FLAGS,
    DOCKERFILE,
    K8S,
    KNOWN_SERVER_FLAGS,
    REPO,
    BatchingParameters,
    Dockerfile,
    MonitoringConfig,
    assemble,
    cpus,
    memory_bytes,
    one,
    parse_config,
    read_config,
    render,
    server_flags,
)

KSERVE = K8S / "kserve"

# What KServe's TF Serving runtime fixes: its container's flags (appended
# InferenceService args come after them) and the model mount.
RUNTIME = "kserve-tensorflow-serving"
RUNTIME_ARGS = ["--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models"]
RUNTIME_REST_PORT = 8080
MODEL_MOUNT = "/mnt/models"


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return render("kserve") or assemble(KSERVE)


@pytest.fixture(scope="module")
def predictor(rendered) -> dict:
    return one(rendered, "InferenceService")["spec"]["predictor"]


@pytest.fixture(scope="module")
def model(predictor) -> dict:
    return predictor["model"]


@pytest.fixture(scope="module")
def configs(rendered, predictor, model) -> dict[str, str]:
    """The ConfigMap files as the predictor container sees them: mount path/file → text."""
    volumes = {v["name"]: v["configMap"]["name"] for v in predictor["volumes"] if "configMap" in v}
    files = {}
    for mount in model["volumeMounts"]:
        if mount["name"] in volumes:
            maps = [
                d
                for d in rendered
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volumes[mount["name"]]
            ]
            assert len(maps) == 1, (
                f"volume {mount['name']} names ConfigMap {volumes[mount['name']]}, not rendered"
            )
            files.update({f"{mount['mountPath']}/{name}": text for name, text in maps[0]["data"].items()})
    return files


@pytest.fixture(scope="module")
def flags(model) -> dict[str, str]:
    """The flags tensorflow_model_server gets: the runtime's, then the InferenceService's."""
    ours = server_flags(model.get("args", []))
    overridden = sorted(set(ours) & set(server_flags(RUNTIME_ARGS)))
    assert not overridden, f"the args repeat the runtime's {overridden}; TF Serving would take the last"
    return {**server_flags(RUNTIME_ARGS), **ours}


def _model_config(flags, configs):
    path = flags["model_config_file"]
    assert path in configs, f"--model_config_file={path} is not a file of the mounted ConfigMap"
    return parse_config(configs[path], model_server_config_pb2.ModelServerConfig, path)


def test_predictor_uses_the_tf_serving_runtime_at_the_pinned_release(model):
    assert model["modelFormat"]["name"] == "tensorflow"
    assert model["modelFormat"].get("version") in (None, "2"), "a TF2 SavedModel"
    assert model["runtime"] == RUNTIME
    # KServe sets the runtime image's tag to runtimeVersion; it must be the release
    # serving/compat/check_runtime.py proves against our export.
    assert str(model["runtimeVersion"]) == read_pin(DOCKERFILE)
    assert "image" not in model and "command" not in model, "keep the runtime's image and binary"


def test_server_flags_are_known_and_read_the_mounted_configs(flags, configs):
    unknown = sorted(set(flags) - KNOWN_SERVER_FLAGS)
    assert not unknown, f"tensorflow_model_server has no flag(s) {unknown}"
    assert flags["enable_batching"] == "true"
    for flag, file_name in CONFIG_FLAGS.items():
        assert PurePosixPath(flags[flag]).name == file_name
        assert flags[flag] in configs, f"--{flag}={flags[flag]} is not mounted from the ConfigMap"


def test_model_config_serves_the_image_model_from_the_storage_mount(flags, configs):
    (config,) = _model_config(flags, configs).model_config_list.config
    image = Dockerfile(DOCKERFILE)
    assert config.name == image.args["MODEL_NAME"], "the name clients use with the image, here too"
    assert config.model_platform == "tensorflow"
    # KServe mounts storageUri at /mnt/models: the version directories are its children.
    assert config.base_path == MODEL_MOUNT
    assert config.model_version_policy.WhichOneof("policy_choice") in (None, "latest")


def test_storage_uri_is_the_push_base_path_on_the_shared_volume(rendered, model):
    match = re.fullmatch(r"pvc://([a-z0-9-]+)/(.+)", model["storageUri"])
    assert match, f"storageUri {model['storageUri']!r}: expected pvc://<claim>/<model base path>"
    claim, directory = match.groups()
    claims = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "PersistentVolumeClaim"}
    assert claim in claims, f"storageUri names claim {claim}, which is not rendered ({sorted(claims)})"
    # `textserve push` writes while every replica reads.
    assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
    assert directory == Dockerfile(DOCKERFILE).args["MODEL_NAME"], "one model base path per model"


def test_probe_and_metrics_use_the_runtime_rest_port(predictor, model, flags, configs):
    assert flags["rest_api_port"] == str(RUNTIME_REST_PORT)
    (config,) = _model_config(flags, configs).model_config_list.config
    probe = model["readinessProbe"]["httpGet"]
    assert probe["path"] == f"/v1/models/{config.name}"
    assert probe["port"] == RUNTIME_REST_PORT
    monitoring = parse_config(configs[flags["monitoring_config_file"]], MonitoringConfig)
    assert monitoring.prometheus_config.enable
    annotations = predictor["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(RUNTIME_REST_PORT)
    assert annotations["prometheus.kserve.io/path"] == monitoring.prometheus_config.path


def test_resources_and_threads_match_the_production_pods(model, flags, configs):
    production = render("overlays/production")
    if production is None:
        pytest.skip("kubectl is not installed; the production overlay needs kustomize to render")
    (container,) = one(production, "Deployment")["spec"]["template"]["spec"]["containers"]
    ours, theirs = model["resources"], container["resources"]
    for kind in ("requests", "limits"):
        assert cpus(ours[kind]["cpu"]) == cpus(theirs[kind]["cpu"])
        assert memory_bytes(ours[kind]["memory"]) == memory_bytes(theirs[kind]["memory"])
    assert memory_bytes(ours["limits"]["memory"]) <= 2 * 2**30, "the production pods are sized for 2 GiB"
    assert ours["requests"] == ours["limits"], "Guaranteed QoS, as in production"
    limit = cpus(ours["limits"]["cpu"])
    batching = parse_config(configs[flags["batching_parameters_file"]], BatchingParameters)
    assert batching.num_batch_threads.value == limit, "one batch thread per CPU of the limit"
    assert int(flags["tensorflow_intra_op_parallelism"]) == limit
    assert int(flags["tensorflow_inter_op_parallelism"]) == limit


def test_batching_matches_the_production_overlay(flags, configs):
    ours = parse_config(configs[flags["batching_parameters_file"]], BatchingParameters)
    production = read_config(K8S / "overlays/production/batching.config", BatchingParameters)
    assert ours == production, "serving/k8s/kserve/configs/batching.config should set what production sets"
    assert 0 < ours.max_execution_batch_size.value <= ours.max_batch_size.value


def test_replicas_and_autoscaling(predictor):
    assert 2 <= predictor["minReplicas"] <= predictor["maxReplicas"], "at least two replicas stay up"
    assert predictor["scaleMetric"] == "cpu"
    assert 0 < predictor["scaleTarget"] <= 100


def test_docs_show_the_kserve_flow():
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "kubectl apply -k serving/k8s/kserve" in text
    assert "textserve push" in text and "/mnt/models" in text
    assert RUNTIME in text
