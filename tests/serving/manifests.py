"""What the deployment-file tests share: Dockerfile.serving, TF Serving's configs, kustomize.

Used by test_deployment_files.py (the image and the kustomize Deployment) and
test_kserve_manifests.py (the KServe InferenceService). Nothing here is a
test; the helpers read the files as TF Serving, Docker and kustomize would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import config_protos

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.serving"
CONFIG_DIR = REPO / "serving" / "configs"
K8S = REPO / "serving" / "k8s"

GRPC_PORT, REST_PORT = 8500, 8501  # the image's ports (Dockerfile.serving's ENTRYPOINT)
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
        return server_flags(self.entrypoint[1:] + self.cmd)

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


# --- Config files as TF Serving reads them -------------------------------------

BatchingParameters = config_protos.BatchingParameters
MonitoringConfig = config_protos.MonitoringConfig


def parse_config(text: str, message, where: str = "config"):
    """Parses a text-format config as TF Serving does; the error names the file and line."""
    try:
        return text_format.Parse(text, message())
    except text_format.ParseError as e:
        raise AssertionError(f"{where}:{e}") from e


def read_config(path: Path, message):
    """Parses a config file (see `parse_config`)."""
    return parse_config(path.read_text(encoding="utf-8"), message, str(path.relative_to(REPO)))


def read_model_server_config(path: Path):
    return read_config(path, model_server_config_pb2.ModelServerConfig)


def server_flags(arguments: list[str]) -> dict[str, str]:
    """`--name=value` arguments as a dict (bare booleans as "true"); a repeated flag fails."""
    flags: dict[str, str] = {}
    for item in arguments:
        assert item.startswith("--"), f"argument {item!r} is not a --flag"
        name, _, value = item[2:].partition("=")
        assert name not in flags, f"flag --{name} is given twice"
        flags[name] = value or "true"
    return flags


def cpus(quantity: str | int) -> float:
    """A Kubernetes CPU quantity ("500m", "2") in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


_BINARY_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity ("2Gi", "512Mi", "1000000") in bytes."""
    text = str(quantity)
    for suffix, factor in _BINARY_SUFFIXES.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


# --- kustomize -----------------------------------------------------------------


def assemble(kustomization_dir: Path) -> list[dict]:
    """A kustomization without kustomize: its resources plus generated ConfigMaps (no hash).

    Only for kustomizations without patches, bases or transformers that change names.
    """
    kustomization = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text(encoding="utf-8"))
    assert "patches" not in kustomization, f"{kustomization_dir} has patches; render it with kubectl"
    docs = [
        doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((kustomization_dir / name).read_text(encoding="utf-8"))
        if doc
    ]
    for generator in kustomization.get("configMapGenerator", []):
        data = {Path(f).name: (kustomization_dir / f).read_text(encoding="utf-8") for f in generator["files"]}
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        )
    return docs


def render(kustomization: str) -> list[dict] | None:
    """`kubectl kustomize serving/k8s/<kustomization>` as documents; None without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize serving/k8s/{kustomization} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict], kind: str) -> dict:
    """The single document of that kind."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
