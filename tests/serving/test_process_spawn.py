"""`ServerProcess` spawning: safe while gRPC is busy in this process, and no child outlives it.

The children here are tiny Python programs standing in for a server (`command=`),
so that many spawns fit in seconds; what is under test is the spawning itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.process import ServerProcess

READY = [sys.executable, "-c", "print('up', flush=True)"]
# With the old pre-exec hook and four threads calling gRPC, a failure came within the first
# few dozen spawns here; 200 take ~10 s.
SPAWNS = 200

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")


def test_children_start_while_grpc_calls_run_on_other_threads():
    """A test hammering a server while it starts another (infra validation) must not kill the child.

    With a pre-exec hook, gRPC's fork handlers ran in the child and it aborted
    (SIGABRT, "epoll_wait error: Bad file descriptor") in 1–2% of spawns.
    """
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    calls = [0] * 4

    def hammer(index: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                calls[index] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    exit_codes = []
    try:
        for _ in range(SPAWNS):
            child = ServerProcess.start([], command=READY, rest=False, ready_text="up", timeout_s=30)
            exit_codes.append(child.proc.wait(timeout=30))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.stop(0)
    assert min(calls) > 0, "the gRPC calls did not run alongside the spawns"
    assert exit_codes == [0] * SPAWNS, f"children that failed: {[c for c in exit_codes if c]}"


def test_a_child_is_killed_when_its_parent_dies(tmp_path):
    parent_script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from serving.process import ServerProcess
        child = ServerProcess.start(
            [], command=[sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"],
            rest=False, ready_text="up",
        )
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_script], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid), "the child outlived its parent"


def test_a_missing_program_is_file_not_found_as_with_popen():
    with pytest.raises(FileNotFoundError):
        ServerProcess.start([], command=["no-such-model-server-binary"], rest=False)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone: it was killed and awaits its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
