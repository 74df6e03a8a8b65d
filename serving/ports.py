"""Is a TCP port free, and if not, which process holds it (read from /proc on Linux).

Used before a server binds its ports, so that "address already in use" can be
reported as the port and the process holding it rather than as a bind error
deep in gRPC or aiohttp. gRPC servers set SO_REUSEPORT, so a second server on
the same port would otherwise start silently and share it (tensorflow/serving
issue 1288); the probe below binds without SO_REUSEPORT and therefore sees any
listener.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

_TCP_LISTEN = "0A"  # the `st` column of /proc/net/tcp for LISTEN


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """True when nothing listens on `host:port` (a bind without SO_REUSEPORT succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR only skips sockets in TIME_WAIT; a listener still refuses the bind.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == _TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def port_holder(port: int) -> str | None:
    """`pid N (command line)` of a process listening on `port`, or None when /proc cannot tell.

    Only processes this user may inspect are found (others' /proc/PID/fd is closed).
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                if os.readlink(fd) in targets:
                    raw = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                    return f"pid {pid_dir.name} ({raw.decode('utf-8', 'replace')[:200]})"
    return None


def busy_port_message(port: int, what: str) -> str:
    """A one-line explanation for a port that is taken, naming the holder when /proc tells."""
    holder = port_holder(port)
    held_by = f"it is held by {holder}" if holder else "another process is listening on it"
    return f"{what} port {port} is already in use: {held_by}. Stop that process or choose another port."
