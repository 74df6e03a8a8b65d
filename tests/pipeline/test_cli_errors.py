"""Expected failures of `textserve` commands: one clear line, the right exit code, no traceback."""

import os
import socket
import subprocess
import sys

import pytest

from serving.ports import port_holder, port_is_free
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e  # runs `textserve` as a process


def _textserve(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.fixture
def held_port():
    """A port this test process listens on, as another server would."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_port_probe_names_this_process(held_port):
    assert not port_is_free(held_port)
    holder = port_holder(held_port)
    assert holder is not None and holder.startswith(f"pid {os.getpid()} ")


def test_demo_on_a_busy_port_names_the_port_and_its_holder(held_port, tiny_corpus, tmp_path):
    result = _textserve(
        "demo", "--data", str(tiny_corpus), "--out", str(tmp_path / "run"), "--port", str(held_port), "--exit"
    )
    assert result.returncode == 2
    assert f"the gRPC port {held_port} is already in use" in result.stderr
    assert f"pid {os.getpid()} " in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before training
