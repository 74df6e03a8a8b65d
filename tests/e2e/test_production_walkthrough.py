"""The README's Production block, run command by command as a new user would.

The block is read from README.md, so the README cannot drift from the code:
each command runs in bash in a fresh directory, with only the data path and
the two ports substituted, and each step's outcome is asserted (the versions
served, the gate's verdict, the canary label answering, the rollback taking
effect). Adding, removing or reordering a command in the block fails the test
until the expectations below say what it should do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e

_POLL_S = 0.5
_WAIT_S = 120.0


def readme_production_block() -> list[str]:
    """The commands of the first ```bash block under '## Production', continuation lines joined."""
    readme = (REPO_ROOT / "README.md").read_text("utf-8")
    section = readme.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1].rstrip() + " "
            continue
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _without_comment(command: str) -> str:
    # The block's comments follow two or more spaces and a '#'; no command in it quotes a '#'.
    return re.split(r"\s{2,}#", command, maxsplit=1)[0].strip()


def _status(rest: int, suffix: str) -> dict | None:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{rest}/v1/models/bbc_news{suffix}", timeout=10
        ) as reply:
            return json.loads(reply.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _available(status: dict | None) -> set[str]:
    return {v["version"] for v in (status or {}).get("model_version_status", []) if v["state"] == "AVAILABLE"}


def _retry(run, check, what: str) -> subprocess.CompletedProcess:
    """Runs `run()` until `check(stdout)` holds; fails with the last output after _WAIT_S."""
    deadline = time.monotonic() + _WAIT_S
    while True:
        result = run()
        try:
            if result.returncode == 0 and check(result.stdout):
                return result
        except (ValueError, KeyError, IndexError):
            pass  # not the JSON the README promises (yet)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not answered as documented: {result.stdout[-500:]} {result.stderr[-500:]}"
            )
        time.sleep(_POLL_S)


def _wait(condition, what: str) -> None:
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(_POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def walkthrough_env(bbc_path, tmp_path_factory):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed; the README's block calls it")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "textserve").exists():
        pytest.skip(f"the textserve entry point is not installed next to {sys.executable} (pip install -e .)")
    workdir = tmp_path_factory.mktemp("walkthrough")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return workdir, env


def _version_behind(grpc_port: int, label: str) -> int | None:
    """The version a gRPC Predict with `model_spec.version_label` is answered by (None on an error)."""
    import grpc as grpc_lib
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "bbc_news"
    request.model_spec.version_label = label
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(["The striker scored twice."], dtype=tf.string))
    with grpc_lib.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        try:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        except grpc_lib.RpcError:
            return None
    return reply.model_spec.version.value


# Training three BBC runs and pushing two of them takes minutes on a busy 2-core machine.
@pytest.mark.timeout(2400)
def test_readme_production_block_runs_as_written(walkthrough_env, bbc_path):
    workdir, env = walkthrough_env
    grpc, rest = _free_port(), _free_port()
    commands = readme_production_block()
    tracked_config = (REPO_ROOT / "serving" / "configs" / "models.config").read_text()

    def substituted(command: str) -> str:
        command = command.replace("../shared/data/bbc", str(bbc_path))
        command = command.replace("--port=8500", f"--port={grpc}").replace(
            "--rest_api_port=8501", f"--rest_api_port={rest}"
        )
        return command.replace("localhost:8501", f"127.0.0.1:{rest}")

    def run(command: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=900
        )
        with open(workdir / "transcript.log", "a", encoding="utf-8") as transcript:  # for a failing run
            transcript.write(f"$ {command}\n{result.stdout}{result.stderr}[exit {result.returncode}]\n")
        return result

    def versions_on_disk() -> list[str]:
        base = workdir / "models" / "bbc_news"
        return sorted(p.name for p in base.iterdir() if p.name.isdigit())

    server = None
    outcomes = []
    try:
        for index, raw in enumerate(commands):
            command = substituted(_without_comment(raw))
            words = command.split()
            step = f"step {index + 1}: {raw}"
            if words[:2] == ["textserve", "serve"]:
                assert command.endswith("&"), step
                server = subprocess.Popen(
                    ["bash", "-c", "exec " + command[:-1]],
                    cwd=workdir,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                _wait(lambda: "1" in _available(_status(rest, "")), "the server to serve version 1")
                assert _version_behind(grpc, "stable") == 1, step
                outcomes.append("serve")
                continue
            if words[0] == "curl":
                # A label applies after the server's next config poll: repeat until it does.
                _retry(lambda command=command: run(command), _curl_check(command), step)
                label = re.search(r"/labels/(\w+)", command).group(1)
                wanted = 2 if label == "canary" else 1  # the canary is 2; after the rollback stable is 1
                _wait(
                    lambda label=label, wanted=wanted: _version_behind(grpc, label) == wanted,
                    f"{label} -> {wanted}",
                )
                outcomes.append("curl")
                continue
            result = run(command)
            action = " ".join(words[1:3])
            if action.startswith("train"):
                assert result.returncode == 0, f"{step}\n{result.stderr[-3000:]}"
                out = words[words.index("--out") + 1]
                assert (workdir / out / "export" / "1" / "saved_model.pb").is_file(), step
            elif action.startswith("push"):
                run_dir = words[2]
                if run_dir == "runs/v3":  # 1 epoch, 50 words: still refused, without --force
                    assert result.returncode == 1, f"{step}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
                    assert "gate: FAIL" in result.stderr and versions_on_disk() == ["1", "2"], step
                else:
                    assert result.returncode == 0, f"{step}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                    expected = {"runs/v1": "1", "runs/v2": "2"}[run_dir]
                    assert f"as version {expected}" in result.stdout and "gate: PASS" in result.stdout, step
                    assert "--force" not in command
                    assert versions_on_disk()[-1] == expected, step
            elif action == "models list":
                assert result.returncode == 0, f"{step}\n{result.stderr[-2000:]}"
                rows = [line.split()[0] for line in result.stdout.splitlines()[2:] if line[:1].isdigit()]
                assert rows == ["2", "1"], result.stdout
            elif action == "models label":
                assert result.returncode == 0, f"{step}\n{result.stderr[-2000:]}"
                config = (workdir / "models" / "bbc_news.config").read_text()
                label, version = words[words.index("--label") + 1], words[words.index("--version") + 1]
                assert re.search(rf'key: "{label}"\s+value: {version}', config), config
                if label == "stable" and version == "2":  # promote: the canary is already up
                    _wait(lambda: _version_behind(grpc, "stable") == 2, "stable to name version 2")
            elif action == "models rollback":
                assert result.returncode == 0, f"{step}\n{result.stderr[-2000:]}"
                assert versions_on_disk() == ["1", "2"], step  # nothing copied
                _wait(lambda: _available(_status(rest, "")) == {"1"}, "version 2 to unload")
            else:
                raise AssertionError(f"{step}: no expectation for this command; add one to this test")
            outcomes.append(action.split()[0] if action.split()[0] != "models" else action)
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    assert outcomes == [
        "train",
        "push",
        "models label",
        "serve",
        "train",
        "push",
        "models list",
        "models label",
        "curl",
        "curl",
        "models label",
        "models rollback",
        "curl",
        "train",
        "push",
    ]
    assert (REPO_ROOT / "serving" / "configs" / "models.config").read_text() == tracked_config  # untouched


def _curl_check(command: str):
    """What the README promises each curl prints."""
    if ":predict" in command:
        return lambda out: json.loads(out)["predictions"][0]["label"] == "sport"
    # GetModelStatus ignores a label, as TF Serving's does: it lists every version.
    if command.rstrip().endswith("/labels/canary"):
        return lambda out: "2" in _available(json.loads(out))
    if command.rstrip().endswith("/labels/stable"):
        return lambda out: _available(json.loads(out)) == {"1"}
    raise AssertionError(f"no expectation for {command!r}; add one to this test")
