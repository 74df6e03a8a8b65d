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

import fnmatch
import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import typing
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.serving"
CONFIG_DIR = REPO / "serving" / "configs"
K8S = REPO / "serving" / "k8s"
KUSTOMIZATIONS = ("base", "overlays/production")

GRPC_PORT, REST_PORT = 8500, 8501
CONFIG_FLAGS = {  # server flag -> file name, as in serving/configs/
    "model_config_file": "models.config",
    "batching_parameters_file": "batching.config",
    "monitoring_config_file": "monitoring.config",
}

# tensorflow_model_server's flags (model_servers/main.cc), so that a typo in the
# ENTRYPOINT fails here rather than as "unknown argument" in a container log.
KNOWN_SERVER_FLAGS = frozenset(
    [
        "port",
        "grpc_socket_path",
        "rest_api_port",
        "rest_api_num_threads",
        "rest_api_timeout_in_ms",
        "rest_api_enable_cors_support",
        "model_name",
        "model_base_path",
        "model_config_file",
        "model_config_file_poll_wait_seconds",
        "file_system_poll_wait_seconds",
        "enable_batching",
        "batching_parameters_file",
        "enable_per_model_batching_parameters",
        "allow_version_labels_for_unavailable_models",
        "monitoring_config_file",
        "enable_model_warmup",
        "num_request_iterations_for_warmup",
        "saved_model_tags",
        "num_load_threads",
        "num_unload_threads",
        "max_num_load_retries",
        "load_retry_interval_micros",
        "flush_filesystem_caches",
        "tensorflow_session_parallelism",
        "tensorflow_intra_op_parallelism",
        "tensorflow_inter_op_parallelism",
        "tensorflow_session_config_file",
        "per_process_gpu_memory_fraction",
        "platform_config_file",
        "grpc_channel_arguments",
        "grpc_max_threads",
        "use_alts_credentials",
        "ssl_config_file",
        "enable_signature_method_name_check",
        "enable_serialization_as_tensor_content",
        "remove_unused_fields_from_bundle_metagraph",
        "prefer_tflite_model",
        "num_tflite_pools",
        "num_tflite_interpreters_per_pool",
        "xla_cpu_compilation_enabled",
        "xla_gpu_compilation_enabled",
        "enable_profiler",
        "thread_pool_factory_config_file",
        "mixed_precision",
        "skip_initialize_tpu",
        "enable_grpc_healthcheck_service",
    ]
)


# --- Dockerfile ----------------------------------------------------------------


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """Returns (INSTRUCTION, arguments) pairs with continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker also drops comment lines inside a continued instruction.
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, rest = text.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


def _substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


class Dockerfile:
    """The parts of Dockerfile.serving the checks need, with ARG defaults substituted."""

    def __init__(self, path: Path):
        self.instructions = parse_dockerfile(path)
        self.args: dict[str, str] = {}
        for keyword, rest in self.instructions:
            if keyword == "ARG" and "=" in rest:
                name, _, default = rest.partition("=")
                self.args[name] = default.strip("\"'")
        self.from_ = [_substitute(r, self.args) for k, r in self.instructions if k == "FROM"]
        self.copies = [_substitute(r, self.args).split() for k, r in self.instructions if k == "COPY"]
        self.users = [_substitute(r, self.args) for k, r in self.instructions if k == "USER"]
        self.exposed = [
            int(port.split("/")[0]) for k, r in self.instructions if k == "EXPOSE" for port in r.split()
        ]
        self.healthchecks = [r for k, r in self.instructions if k == "HEALTHCHECK"]
        self.entrypoint = self._exec_form("ENTRYPOINT")
        self.cmd = self._exec_form("CMD")

    def _exec_form(self, keyword: str) -> list[str]:
        values = [r for k, r in self.instructions if k == keyword]
        assert len(values) == 1, f"Dockerfile.serving needs exactly one {keyword}, found {len(values)}"
        assert values[0].startswith("["), (
            f"{keyword} must use the exec (JSON) form so signals reach the server"
        )
        return json.loads(values[0])

    def server_flags(self) -> dict[str, str]:
        """The ENTRYPOINT's `--name=value` flags (bare booleans as "true")."""
        flags = {}
        for item in self.entrypoint[1:] + self.cmd:
            assert item.startswith("--"), f"ENTRYPOINT/CMD item {item!r} is not a --flag"
            name, _, value = item[2:].partition("=")
            assert name not in flags, f"flag --{name} is given twice in Dockerfile.serving"
            flags[name] = value or "true"
        return flags

    def copy_destinations(self) -> dict[str, str]:
        """Maps each COPY source (directories without their trailing slash) to its path in the image."""
        placed = {}
        for parts in self.copies:
            sources = [p for p in parts[:-1] if not p.startswith("--")]
            destination = parts[-1]
            for source in sources:
                if source.endswith("/"):  # a directory: its contents land in destination
                    placed[source.rstrip("/")] = destination.rstrip("/")
                elif destination.endswith("/"):
                    placed[source] = destination + Path(source).name
                else:
                    placed[source] = destination
        return placed


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


def _local_config_messages():
    """BatchingParameters and MonitoringConfig as TF Serving defines them.

    tensorflow-serving-api ships neither message; serving/config_protos.py
    defines them for the server, and these are used only until it exists.
    """
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="textserve_tests/serving_configs.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    F = descriptor_pb2.FieldDescriptorProto

    def add(message, fields):
        proto = file.message_type.add(name=message)
        for name, number, kind, type_name, repeated in fields:
            proto.field.add(
                name=name,
                number=number,
                type=kind,
                type_name=type_name,
                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
            )

    int64, boolean = ".google.protobuf.Int64Value", ".google.protobuf.BoolValue"
    add(
        "BatchingParameters",
        [
            ("max_batch_size", 1, F.TYPE_MESSAGE, int64, False),
            ("batch_timeout_micros", 2, F.TYPE_MESSAGE, int64, False),
            ("max_enqueued_batches", 3, F.TYPE_MESSAGE, int64, False),
            ("num_batch_threads", 4, F.TYPE_MESSAGE, int64, False),
            ("thread_pool_name", 5, F.TYPE_MESSAGE, ".google.protobuf.StringValue", False),
            ("allowed_batch_sizes", 6, F.TYPE_INT64, None, True),
            ("pad_variable_length_inputs", 7, F.TYPE_BOOL, None, False),
            ("enable_large_batch_splitting", 8, F.TYPE_MESSAGE, boolean, False),
            ("max_execution_batch_size", 9, F.TYPE_MESSAGE, int64, False),
        ],
    )
    add(
        "PrometheusConfig",
        [
            ("enable", 1, F.TYPE_BOOL, None, False),
            ("path", 2, F.TYPE_STRING, None, False),
        ],
    )
    add(
        "MonitoringConfig",
        [
            ("prometheus_config", 1, F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", False),
        ],
    )
    pool.Add(file)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    )


def _config_messages():
    try:
        from serving import config_protos
    except ImportError:
        return _local_config_messages()
    return config_protos.BatchingParameters, config_protos.MonitoringConfig


BatchingParameters, MonitoringConfig = _config_messages()


def _parse(path: Path, message):
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), message())
    except text_format.ParseError as e:
        raise AssertionError(f"{path.relative_to(REPO)}:{e}") from e


def read_model_server_config(path: Path):
    return _parse(path, model_server_config_pb2.ModelServerConfig)


def all_config_files(file_name: str) -> list[Path]:
    """Every copy of a config: the image's, and each kustomization's."""
    return [CONFIG_DIR / file_name, *sorted(K8S.glob(f"**/{file_name}"))]


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
    params = _parse(path, BatchingParameters)
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
    config = _parse(path, MonitoringConfig)
    assert config.prometheus_config.enable
    assert config.prometheus_config.path.startswith("/")


# --- Kubernetes ----------------------------------------------------------------


def _assemble_base() -> list[dict]:
    """The base without kustomize: its resources plus the generated ConfigMap (no hash)."""
    base = K8S / "base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text(encoding="utf-8"))
    docs = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((base / name).read_text(encoding="utf-8"))
        if doc
    ]
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (base / f).read_text(encoding="utf-8") for f in generator["files"]}
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    return docs


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request) -> list[dict]:
    """The manifests of one kustomization, as `kubectl apply -k` would send them."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if request.param != "base":
            pytest.skip("kubectl is not installed, and only the base can be assembled without kustomize")
        return _assemble_base()
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / request.param)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize serving/k8s/{request.param} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _container(docs):
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _config_map_data(docs) -> dict[str, str]:
    volumes = _one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    names = {v["configMap"]["name"] for v in volumes if "configMap" in v}
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in names]
    assert len(maps) == 1, f"the Deployment mounts ConfigMap(s) {names}; rendered {len(maps)} of them"
    return maps[0]["data"]


def test_configmap_is_mounted_where_the_server_flags_read(rendered, dockerfile):
    flags = dockerfile.server_flags()
    data = _config_map_data(rendered)
    assert sorted(data) == sorted(CONFIG_FLAGS.values())
    mounts = {m["name"]: m["mountPath"] for m in _container(rendered)["volumeMounts"]}
    volumes = _one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"]
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
    service = _one(rendered, "Service")
    service_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert service_ports == {GRPC_PORT: "grpc", REST_PORT: "http"}
    pod_labels = _one(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_probes_ask_for_the_model_status_url(rendered, model_name):
    container = _container(rendered)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == f"/v1/models/{model_name}", f"{probe} asks for {get['path']}"
        assert get["port"] in ("http", REST_PORT), f"{probe} must use the REST port"


def test_prometheus_annotations_match_the_monitoring_config(rendered):
    annotations = _one(rendered, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    config = text_format.Parse(_config_map_data(rendered)["monitoring.config"], MonitoringConfig())
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(REST_PORT)
    assert annotations["prometheus.io/path"] == config.prometheus_config.path


def test_pod_runs_as_the_image_user_without_privileges(rendered, dockerfile):
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    uid = int(dockerfile.users[-1].partition(":")[0])
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == uid
    container = _container(rendered)["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]


def _cpus(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_thread_counts_follow_the_cpu_limit(rendered):
    container = _container(rendered)
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], (
            f"set {kind} requests and limits"
        )
    limit = _cpus(resources["limits"]["cpu"])
    assert _cpus(resources["requests"]["cpu"]) <= limit
    args = dict(a[2:].partition("=")[::2] for a in container.get("args", []))
    batching = text_format.Parse(_config_map_data(rendered)["batching.config"], BatchingParameters())
    assert batching.num_batch_threads.value == limit, "one batch thread per CPU of the limit"
    assert int(args["tensorflow_intra_op_parallelism"]) == limit
    assert int(args["tensorflow_inter_op_parallelism"]) == limit


def test_autoscaler_and_disruption_budget_fit_the_deployment(rendered):
    deployment = _one(rendered, "Deployment")
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = _one(rendered, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = _one(rendered, "PodDisruptionBudget")
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
