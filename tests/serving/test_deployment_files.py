"""Checks that Dockerfile.serving, the TF Serving configs and serving/k8s agree.

No Docker engine runs here, so the image is checked by reading the Dockerfile:
a pinned tensorflow/serving base, the ports, a numeric non-root user, server
flags that name the config files the image copies, and a HEALTHCHECK that is
run for real (it is a bash one-liner) against a loopback HTTP server. The
configs are parsed as the protos TF Serving parses them with. The Kubernetes
manifests are rendered with `kubectl kustomize` where kubectl is installed
(the base is assembled from its files otherwise) and checked for the same
ports, paths and thread counts.

    python -m pytest tests/serving/test_deployment_files.py -q
"""

from __future__ import annotations

import dataclasses
import fnmatch
import http.server
import json
import re
import socket
import subprocess
import threading
import typing
from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.serving.manifests import (
    CONFIG_DIR,
    CONFIG_FLAGS,
    DOCKERFILE,
    GRPC_PORT,
    K8S,
    KNOWN_SERVER_FLAGS,
    REPO,
    REST_PORT,
    BatchingParameters,
    Dockerfile,
    MonitoringConfig,
    assemble,
    cpus,
    one,
    read_config,
    read_model_server_config,
    render,
)

KUSTOMIZATIONS = ("base", "overlays/production")


# --- Dockerfile ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def model_name(dockerfile) -> str:
    return dockerfile.args["MODEL_NAME"]


def test_base_image_is_a_pinned_tensorflow_serving_release(dockerfile):
    assert len(dockerfile.from_) == 1, f"expected one stage, found FROM {dockerfile.from_}"
    image = dockerfile.from_[0]
    # A release tag (X.Y.Z), optionally with its digest; never latest, nightly,
    # devel or gpu variants.
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), (
        f"Dockerfile.serving must build FROM tensorflow/serving:<X.Y.Z>, found FROM {image}"
    )


def test_exposes_the_ports_the_server_listens_on(dockerfile):
    flags = dockerfile.server_flags()
    assert sorted(dockerfile.exposed) == [GRPC_PORT, REST_PORT]
    assert flags["port"] == str(GRPC_PORT)
    assert flags["rest_api_port"] == str(REST_PORT)


def test_runs_as_a_numeric_non_root_user(dockerfile):
    assert dockerfile.users, "Dockerfile.serving has no USER: the server would run as root"
    user, _, group = dockerfile.users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit() and int(user) != 0, f"USER must be a numeric non-zero uid, found {user!r}"
    assert not group or (group.isdigit() and int(group) != 0)
    last_user = max(i for i, (k, _) in enumerate(dockerfile.instructions) if k == "USER")
    later_runs = [r for k, r in dockerfile.instructions[last_user:] if k == "RUN"]
    assert not later_runs, "RUN after USER would need root; set USER last"


def test_server_flags_are_known_and_point_at_the_copied_configs(dockerfile):
    assert dockerfile.entrypoint[0].endswith("/tensorflow_model_server")
    flags = dockerfile.server_flags()
    unknown = sorted(set(flags) - KNOWN_SERVER_FLAGS)
    assert not unknown, f"tensorflow_model_server has no flag(s) {unknown}"
    for name, value in flags.items():
        if value in ("True", "False", "1", "0", "yes", "no"):
            pytest.fail(f"--{name}={value}: TF's flag parser takes only true/false for booleans")
    assert flags["enable_batching"] == "true", "--batching_parameters_file needs --enable_batching"
    assert "model_base_path" not in flags, "with --model_config_file, --model_base_path is ignored"
    placed = dockerfile.copy_destinations()
    config_dir = dockerfile.args["CONFIG_DIR"]
    for flag, file_name in CONFIG_FLAGS.items():
        source = f"{config_dir}/{file_name}"
        assert (REPO / source).is_file(), f"{source} is missing"
        assert placed.get(source) == flags[flag], (
            f"--{flag}={flags[flag]} but Dockerfile.serving copies {source} to {placed.get(source)}"
        )


def test_model_is_copied_where_models_config_serves_it_from(dockerfile, model_name):
    config = read_model_server_config(CONFIG_DIR / "models.config")
    (model,) = config.model_config_list.config
    assert model.name == model_name
    placed = dockerfile.copy_destinations()
    model_source = dockerfile.args["MODEL_DIR"]
    assert placed.get(model_source) == model.base_path, (
        f"the export is copied to {placed.get(model_source)} but models.config serves {model.base_path}"
    )


def test_version_labels_are_allowed_at_startup(dockerfile):
    # Real TF Serving refuses a start-up config whose labels point at versions
    # that have not loaded yet, unless this flag is set (contract §2). The canary
    # flow writes labels into models.config, and a restarted container must
    # still start with them.
    labelled = [
        str(p)
        for p in all_config_files("models.config")
        if any(m.version_labels for m in read_model_server_config(p).model_config_list.config)
    ]
    assert dockerfile.server_flags().get("allow_version_labels_for_unavailable_models") == "true", (
        f"pass --allow_version_labels_for_unavailable_models=true (labelled configs now: {labelled})"
    )


# --- HEALTHCHECK, run for real -------------------------------------------------


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET with the (status, body) the test sets, and records the path asked for."""

    answer: tuple[int, bytes] = (200, b"")
    paths: typing.ClassVar[list[str]] = []

    def do_GET(self):
        type(self).paths.append(self.path)
        status, body = type(self).answer
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def status_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthcheck_command(dockerfile) -> list[str]:
    (healthcheck,) = dockerfile.healthchecks
    _, _, command = healthcheck.partition("CMD ")
    return json.loads(command)


def _run_healthcheck(command: list[str], port: int, model_name: str) -> int:
    target = f"/dev/tcp/127.0.0.1/{REST_PORT}"
    assert target in command[-1], f"the HEALTHCHECK must connect to {target}"
    command = [*command[:-1], command[-1].replace(target, f"/dev/tcp/127.0.0.1/{port}")]
    env = {"MODEL_NAME": model_name, "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, env=env, capture_output=True, timeout=10).returncode


def test_healthcheck_asks_for_the_model_status_url(dockerfile, model_name, status_server):
    command = _healthcheck_command(dockerfile)
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed here; the image has it")
    assert "/v1/models/%s" in command[-1] and '"$MODEL_NAME"' in command[-1]
    _StatusHandler.paths.clear()
    # TF Serving's answer for a loaded model (GetModelStatus as JSON).
    body = {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    _StatusHandler.answer = (200, json.dumps(body, indent=1).encode())
    assert _run_healthcheck(command, status_server.server_port, model_name) == 0
    assert _StatusHandler.paths == [f"/v1/models/{model_name}"]


@pytest.mark.parametrize(
    "status, body",
    [
        (404, b'{ "error": "Servable not found for request: Latest(bbc_news)" }'),
        (
            200,
            b'{"model_version_status": [{"version": "1", "state": "END",'
            b' "status": {"error_code": "UNKNOWN"}}]}',
        ),
    ],
    ids=["unknown-model", "version-failed"],
)
def test_healthcheck_fails_unless_a_version_is_available(dockerfile, model_name, status_server, status, body):
    command = _healthcheck_command(dockerfile)
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed here; the image has it")
    _StatusHandler.answer = (status, body)
    assert _run_healthcheck(command, status_server.server_port, model_name) != 0


def test_healthcheck_fails_while_the_rest_port_is_closed(dockerfile, model_name):
    command = _healthcheck_command(dockerfile)
    if not Path(command[0]).exists():
        pytest.skip(f"{command[0]} is not installed here; the image has it")
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert _run_healthcheck(command, port, model_name) != 0


# --- .dockerignore -------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""

    def matches(pattern: str, candidate: str) -> bool:
        parts, names = pattern.strip("/").split("/"), candidate.split("/")

        def match(i: int, j: int) -> bool:
            if i == len(parts):
                return j == len(names)
            if parts[i] == "**":
                return any(match(i + 1, k) for k in range(j, len(names) + 1))
            return j < len(names) and fnmatch.fnmatchcase(names[j], parts[i]) and match(i + 1, j + 1)

        return match(0, 0)

    names = path.split("/")
    prefixes = ["/".join(names[: n + 1]) for n in range(len(names))]
    ignored = False
    for pattern in patterns:
        exclude = not pattern.startswith("!")
        if any(matches(pattern.lstrip("!"), prefix) for prefix in prefixes):
            ignored = exclude
    return ignored


def test_dockerignore_keeps_what_the_build_copies(dockerfile):
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    needed = [f"{dockerfile.args['CONFIG_DIR']}/{name}" for name in CONFIG_FLAGS.values()]
    needed.append(f"{dockerfile.args['MODEL_DIR']}/1/saved_model.pb")
    needed.append(f"{dockerfile.args['MODEL_DIR']}/1/assets.extra/tf_serving_warmup_requests")
    for path in needed:
        assert not _ignored(path, patterns), f".dockerignore drops {path}, which the build copies"
    for path in (".git/config", "runs/bbc/checkpoints/ckpt-1.index", "tests/serving/x.py"):
        assert _ignored(path, patterns), f".dockerignore should keep {path} out of the build context"


# --- Config files as TF Serving reads them -------------------------------------


def all_config_files(file_name: str) -> list[Path]:
    """Every copy of a config: the image's, and each kustomization's of the Deployment."""
    return [
        CONFIG_DIR / file_name,
        *(p for k in KUSTOMIZATIONS for p in sorted((K8S / k).glob(f"**/{file_name}"))),
    ]


@pytest.mark.parametrize("path", all_config_files("models.config"), ids=str)
def test_models_config_serves_the_image_model(path, model_name):
    config = read_model_server_config(path)
    assert config.WhichOneof("config") == "model_config_list"
    (model,) = config.model_config_list.config
    assert model.name == model_name
    assert model.model_platform == "tensorflow", "TF Serving refuses a model without model_platform"
    assert model.base_path == f"/models/{model_name}", "the path Dockerfile.serving copies the export to"
    for label, version in model.version_labels.items():
        assert re.fullmatch(r"[a-zA-Z0-9_]+", label), f"label {label!r}: TF Serving allows [a-zA-Z0-9_]+"
        policy = model.model_version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            assert version in policy.specific.versions, f"label {label} -> {version}, a version not served"


@pytest.mark.parametrize("path", all_config_files("batching.config"), ids=str)
def test_batching_config_is_valid_for_tf_serving(path):
    params = read_config(path, BatchingParameters)
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(field), f"{path}: set {field} rather than rely on TF's default"
    assert params.num_batch_threads.value >= 1
    assert 0 < params.batch_timeout_micros.value <= 10_000, "a CPU model should wait milliseconds, not more"
    if params.enable_large_batch_splitting.value:
        assert 0 < params.max_execution_batch_size.value <= params.max_batch_size.value
    if params.allowed_batch_sizes:
        sizes = list(params.allowed_batch_sizes)
        assert sizes == sorted(set(sizes))
        largest = (
            params.max_execution_batch_size.value
            if params.enable_large_batch_splitting.value
            else params.max_batch_size.value
        )
        assert sizes[-1] == largest, "the last allowed batch size must equal the largest batch"


@pytest.mark.parametrize("path", all_config_files("monitoring.config"), ids=str)
def test_monitoring_config_enables_prometheus(path):
    config = read_config(path, MonitoringConfig)
    assert config.prometheus_config.enable
    assert config.prometheus_config.path.startswith("/")


# --- Kubernetes ----------------------------------------------------------------


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> list[dict]:
    """The manifests of one kustomization, as `kubectl apply -k` would send them."""
    docs = render(request.param)
    if docs is None:
        if request.param != "base":
            pytest.skip("kubectl is not installed, and only the base can be assembled without kustomize")
        return assemble(K8S / "base")
    return docs


def _container(docs):
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _config_map_data(docs) -> dict[str, str]:
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    names = {v["configMap"]["name"] for v in volumes if "configMap" in v}
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in names]
    assert len(maps) == 1, f"the Deployment mounts ConfigMap(s) {names}; rendered {len(maps)} of them"
    return maps[0]["data"]


def test_configmap_is_mounted_where_the_server_flags_read(rendered, dockerfile):
    flags = dockerfile.server_flags()
    data = _config_map_data(rendered)
    assert sorted(data) == sorted(CONFIG_FLAGS.values())
    mounts = {m["name"]: m["mountPath"] for m in _container(rendered)["volumeMounts"]}
    volumes = one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (config_volume,) = [v["name"] for v in volumes if "configMap" in v]
    for flag, file_name in CONFIG_FLAGS.items():
        assert f"{mounts[config_volume]}/{file_name}" == flags[flag], (
            f"--{flag}={flags[flag]}, but the ConfigMap mounts {file_name} at {mounts[config_volume]}"
        )
    # Appended args may tune the server, never move its ports or config files.
    container_args = _container(rendered).get("args", [])
    pinned = {"port", "rest_api_port"} | set(CONFIG_FLAGS)
    overridden = {a[2:].partition("=")[0] for a in container_args} & pinned
    assert not overridden, f"the Deployment's args override {sorted(overridden)}"
    assert "command" not in _container(rendered), "keep the image's ENTRYPOINT (its flags are checked above)"


def test_rendered_configs_parse_and_serve_the_model(rendered, model_name):
    data = _config_map_data(rendered)
    models = text_format.Parse(data["models.config"], model_server_config_pb2.ModelServerConfig())
    assert [m.name for m in models.model_config_list.config] == [model_name]
    text_format.Parse(data["batching.config"], BatchingParameters())
    text_format.Parse(data["monitoring.config"], MonitoringConfig())


def test_ports_and_service_agree_with_the_image(rendered):
    ports = {p["name"]: p["containerPort"] for p in _container(rendered)["ports"]}
    assert ports == {"grpc": GRPC_PORT, "http": REST_PORT}
    service = one(rendered, "Service")
    service_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert service_ports == {GRPC_PORT: "grpc", REST_PORT: "http"}
    pod_labels = one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_probes_ask_for_the_model_status_url(rendered, model_name):
    container = _container(rendered)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == f"/v1/models/{model_name}", f"{probe} asks for {get['path']}"
        assert get["port"] in ("http", REST_PORT), f"{probe} must use the REST port"


def test_prometheus_annotations_match_the_monitoring_config(rendered):
    annotations = one(rendered, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    config = text_format.Parse(_config_map_data(rendered)["monitoring.config"], MonitoringConfig())
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(REST_PORT)
    assert annotations["prometheus.io/path"] == config.prometheus_config.path


def test_pod_runs_as_the_image_user_without_privileges(rendered, dockerfile):
    pod = one(rendered, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    uid = int(dockerfile.users[-1].partition(":")[0])
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid
    container = _container(rendered)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]


def test_thread_counts_follow_the_cpu_limit(rendered):
    container = _container(rendered)
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], (
            f"set {kind} requests and limits"
        )
    limit = cpus(resources["limits"]["cpu"])
    assert cpus(resources["requests"]["cpu"]) <= limit
    args = dict(a[2:].partition("=")[::2] for a in container.get("args", []))
    batching = text_format.Parse(_config_map_data(rendered)["batching.config"], BatchingParameters())
    assert batching.num_batch_threads.value == limit, "one batch thread per CPU of the limit"
    assert int(args["tensorflow_intra_op_parallelism"]) == limit
    assert int(args["tensorflow_inter_op_parallelism"]) == limit


def _pre_stop_sleep(container) -> tuple[str, float]:
    """The preStop hook's binary and how long it sleeps."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert len(command) == 2 and command[0].endswith("/sleep"), (
        f"preStop should be a plain sleep, found {command}"
    )
    return command[0], float(command[1])


def _server_drain_grace_s() -> float | None:
    """The default of the server's drain-grace flag in seconds (None while it has none)."""
    from serving.flags import ServerOptions

    (field, *others) = [f for f in dataclasses.fields(ServerOptions) if "grace" in f.name] or [None]
    if field is None:
        return None
    assert not others, f"more than one grace flag: {[field.name] + [f.name for f in others]}"
    scale = 1e-3 if field.name.endswith("_ms") else 1e-6 if field.name.endswith("_micros") else 1.0
    return float(field.default) * scale


def test_pre_stop_runs_a_binary_the_image_has(rendered, dockerfile):
    binary, seconds = _pre_stop_sleep(_container(rendered))
    # The stock image is Ubuntu with coreutils; the build checks the path the hook runs.
    build_checks = " ".join(rest for keyword, rest in dockerfile.instructions if keyword == "RUN")
    assert f"-x {binary}" in build_checks, (
        f"Dockerfile.serving should fail the build when {binary} is missing"
    )
    grace = one(rendered, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 30, "docs/deployment.md budgets shutdown against 30 s"
    assert 1 <= seconds < grace, "long enough for endpoint removal, and within the grace period"


def test_pre_stop_and_the_server_drain_fit_the_grace_period(rendered):
    # Kubernetes counts preStop against terminationGracePeriodSeconds, then sends
    # SIGTERM and kills the container when the period ends: the drain must end first.
    _, pre_stop = _pre_stop_sleep(_container(rendered))
    grace = one(rendered, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = _server_drain_grace_s()
    if drain is None:
        pytest.skip("serving/flags.py has no drain-grace flag yet (issue 15 item 4)")
    assert pre_stop + drain < grace, f"preStop {pre_stop} s + drain {drain} s must stay below {grace} s"


def test_autoscaler_and_disruption_budget_fit_the_deployment(rendered):
    deployment = one(rendered, "Deployment")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(rendered, "PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # A budget the autoscaler's minimum can always satisfy, so drains never hang.
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_base_configs_match_the_image_configs_where_they_should():
    # kustomize may not read serving/configs/, so the base keeps its own copies.
    # Batching and monitoring stay identical to the image's; models.config may
    # gain labels and policies (a canary) but serves the same model.
    for name in ("batching.config", "monitoring.config"):
        assert (K8S / "base/configs" / name).read_text() == (CONFIG_DIR / name).read_text(), (
            f"serving/k8s/base/configs/{name} differs from serving/configs/{name}; copy it over"
        )
    image = read_model_server_config(CONFIG_DIR / "models.config").model_config_list.config
    cluster = read_model_server_config(K8S / "base/configs/models.config").model_config_list.config
    assert [(m.name, m.base_path) for m in image] == [(m.name, m.base_path) for m in cluster]


def test_docs_commands_use_the_real_names(dockerfile, model_name):
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "docker build -f Dockerfile.serving" in text
    assert f"/v1/models/{model_name}:predict" in text
    for kustomization in KUSTOMIZATIONS:
        if f"kubectl apply -k serving/k8s/{kustomization}" in text:
            break
    else:
        pytest.fail("docs/deployment.md shows no `kubectl apply -k serving/k8s/...`")
    used = set(re.findall(r"--build-arg (\w+)=", text))
    assert used, "docs/deployment.md shows no --build-arg"
    undeclared = sorted(used - set(dockerfile.args))
    assert not undeclared, f"docs pass build args {undeclared} that Dockerfile.serving does not declare"
