"""The push lock: `PATH/.push.lock`, held while a push picks its version number and publishes.

Locally the lock file is created with O_EXCL, so exactly one process holds it.
Object stores lack an exclusive create, so there the lock is written and read
back: it keeps pushes a few seconds apart from colliding, not two started in
the same instant (run pushes to a bucket from one CI job at a time).

A lock whose holder is dead (same host, no such pid) or older than 15 minutes
is broken, and a version it left without saved_model.pb is removed.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable

import tensorflow as tf

from pipeline.errors import EXIT_REFUSED, ReleaseError
from pipeline.release.store import LOCK_FILE, is_remote, join, remove_tree
from pipeline.release.versions import is_complete

# A lock older than this is taken to belong to a dead push. The locked section
# (pick a number, rename, append one line) takes well under a second locally;
# on an object store it includes the upload.
_STALE_LOCK_S = 15 * 60
_LOCK_POLL_S = 0.2
_REMOTE_LOCK_SETTLE_S = 1.0


def pid_alive(pid: int) -> bool:
    """True when a process with this id runs on this host (or exists but is not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PushLock:
    """Serialises the short section of a push that picks a number and publishes it.

    Args:
      base_path: the model base path.
      timeout_s: how long to wait for another push before giving up.
      log: where messages about waiting and stale locks go.
    """

    def __init__(self, base_path: str, timeout_s: float, log: Callable[[str], None]):
        self.path = join(base_path, LOCK_FILE)
        self.base_path = base_path
        self.timeout_s = timeout_s
        self.log = log
        self.token = secrets.token_hex(8)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token}

    def __enter__(self) -> PushLock:
        deadline = time.monotonic() + self.timeout_s
        announced = False
        while not self._try_acquire():
            holder = self._read_holder()
            if holder is not None and self._is_stale(holder):
                self._break(holder)
                continue
            if time.monotonic() > deadline:
                raise ReleaseError(
                    f"another push holds {self.path} ({holder}); waited {self.timeout_s:.0f}s. "
                    f"Retry when it has finished; if no push is running, delete the file.",
                    exit_code=EXIT_REFUSED,
                )
            if not announced:
                self.log(f"waiting for another push to {self.base_path} ({holder}) ...")
                announced = True
            time.sleep(_LOCK_POLL_S)
        return self

    def __exit__(self, *exc) -> None:
        holder = self._read_holder()
        if holder is not None and holder.get("token") == self.token:
            if tf.io.gfile.exists(self.path + ".version"):
                tf.io.gfile.remove(self.path + ".version")
            tf.io.gfile.remove(self.path)

    def note_version(self, version: int) -> None:
        """Records the version being written, so a stale lock can have its partial version removed.

        A file of its own: rewriting the lock file would leave a window in which
        it is gone (and TF's ram:// filesystem appends on rewrite).
        """
        with tf.io.gfile.GFile(self.path + ".version", "wb") as handle:
            handle.write(json.dumps({"token": self.token, "version": version}).encode("utf-8"))

    def _try_acquire(self) -> bool:
        payload = {**self.owner, "time": time.time()}
        if not tf.io.gfile.exists(self.path):
            try:
                self._write(payload)
            except FileExistsError:
                return False
            holder = self._read_holder()
            return holder is not None and holder.get("token") == self.token
        return False

    def _write(self, payload: dict) -> None:
        content = json.dumps(payload).encode("utf-8")
        if not is_remote(self.path):
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            return
        with tf.io.gfile.GFile(self.path, "wb") as handle:
            handle.write(content)
        # Give a concurrent writer's object time to land before `_try_acquire` reads back.
        time.sleep(_REMOTE_LOCK_SETTLE_S)

    def _read_holder(self) -> dict | None:
        try:
            with tf.io.gfile.GFile(self.path, "rb") as handle:
                return json.loads(handle.read() or b"{}")
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return None

    def _is_stale(self, holder: dict) -> bool:
        on_this_host = holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int)
        if on_this_host and not pid_alive(holder["pid"]):
            return True
        return time.time() - float(holder.get("time", 0)) > _STALE_LOCK_S

    def _break(self, holder: dict) -> None:
        # Only one breaker wins the rename; the others find the lock gone and retry.
        aside = f"{self.path}.stale-{self.token}"
        try:
            tf.io.gfile.rename(self.path, aside)
        except tf.errors.OpError:
            return
        tf.io.gfile.remove(aside)
        self.log(f"removed the stale lock of a push that is no longer running ({holder})")
        try:
            with tf.io.gfile.GFile(self.path + ".version", "rb") as handle:
                writing = json.loads(handle.read())
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return
        tf.io.gfile.remove(self.path + ".version")
        version = writing.get("version") if writing.get("token") == holder.get("token") else None
        if isinstance(version, int):
            partial = join(self.base_path, str(version))
            if tf.io.gfile.isdir(partial) and not is_complete(partial):
                remove_tree(partial)
                self.log(f"removed {partial}: that push died before writing its saved_model.pb")
