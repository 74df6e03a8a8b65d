"""Keeps the served versions current: polling, aspired versions, loads, retries, unloads.

The `VersionWatcher` follows TF Serving's AspiredVersionsManager fed by its
file-system source (TFS_CONTRACT.md §2):

* every `--file_system_poll_wait_seconds` each model's base path is listed and
  its version policy picks the aspired versions;
* a new version is loaded (and warmed up) before an old one is unloaded, and an
  old version stays served while no aspired version is AVAILABLE;
* a base path that vanishes, cannot be listed, or lists no versions keeps the
  loaded versions serving (TF Serving's `servable_versions_always_present`), and
  says so in one log line per poll — an `rm -rf` in flight or a remount never
  empties the routing table;
* a load that fails is retried `--max_num_load_retries` times,
  `--load_retry_interval_micros` apart, then stays `END` with its error and is
  tried again only when its files change.

Each model's loads run in their own thread, one at a time, highest aspired
version first. The watcher's lock only guards decisions; it is never held
while listing a directory, loading, warming up or draining, so a slow or broken
model never holds up another model, a poll or a ReloadConfig. A load's retries
are cancelled as soon as its version is no longer aspired (a newer one took its
place, the policy or the config changed, the model was removed) or a newer
aspired version is waiting to load.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from serving.errors import ServingError
from serving.flags import ServerOptions
from serving.model_repository import (
    END,
    LOADING,
    ModelRepository,
    VersionStatus,
    aspired_versions,
    printable,
    scan_base_path,
    version_fingerprint,
)
from serving.servable import Servable, session_config

log = logging.getLogger("serving.version_watcher")

# How long an unload waits for runs already inside the Session to finish.
_UNLOAD_DRAIN_S = 30.0
# How long `stop` waits for a load that is inside TensorFlow to return.
_STOP_JOIN_S = 60.0

WarmupHook = Callable[[Servable], None]


@dataclass
class _LoadTask:
    """One version being loaded (with retries) in its own thread."""

    name: str
    version: int
    path: str
    # Set to cut a wait between retries short; the task then re-checks whether to go on.
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


@dataclass
class _Model:
    """The watcher's view of one configured model."""

    config: object  # ModelConfig
    aspired: dict[int, str] = field(default_factory=dict)
    # Versions whose failed load has different files now (worth another try).
    changed_since_failure: set[int] = field(default_factory=set)
    load: _LoadTask | None = None


class VersionWatcher:
    """Keeps a `ModelRepository`'s versions current for the configs it is given.

    Args:
      repository: where statuses, labels and routes are written.
      options: the server options (tags, polling, retries, session threads, config file).
      metrics: a `serving.metrics.Metrics` to count load attempts in, or None.

    Raises:
      config_protos.TextProtoError: `--tensorflow_session_config_file` does not parse.
    """

    def __init__(self, repository: ModelRepository, options: ServerOptions, metrics=None):
        self._repository = repository
        self._options = options
        self._metrics = metrics
        self._session_config = session_config(
            options.tensorflow_intra_op_parallelism,
            options.tensorflow_inter_op_parallelism,
            options.tensorflow_session_parallelism,
            options.tensorflow_session_config_file,
        )
        self._warmup: WarmupHook | None = None
        # Guards `_models` and `_generation`; held only for decisions, never for I/O.
        self._lock = threading.Lock()
        # Notified whenever a load finishes, so waiters re-check their models.
        self._changed = threading.Condition(self._lock)
        self._models: dict[str, _Model] = {}
        self._generation = 0  # bumped by every applied config
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._logged_once: set[tuple] = set()

    # ---- used by the ModelManager ----------------------------------------------------

    def set_warmup(self, warmup: WarmupHook | None) -> None:
        """Sets the hook run on each freshly loaded servable before it is served."""
        self._warmup = warmup

    def apply(self, config) -> tuple[int, list[str]]:
        """Installs a validated config, lists every base path and starts the loads.

        Models absent from `config` are withdrawn and unloaded; their running
        loads are cancelled. Returns at once, with the config's generation and
        the names of the models it added.
        """
        new = {model.name: model for model in config.model_config_list.config}
        drains = []
        with self._lock:
            added = [name for name in new if name not in self._models]
            for name in [n for n in self._models if n not in new]:
                log.info("Model %s is no longer in the config; unloading all its versions", printable(name))
                removed = self._models.pop(name)
                if removed.load is not None:
                    removed.load.wake.set()
                for version in sorted(self._repository.serving(name)):
                    drains.append((name, version, self._repository.withdraw(name, version)))
            for name, model_config in new.items():
                if name in self._models:
                    self._models[name].config = model_config
                else:
                    self._models[name] = _Model(model_config)
            self._repository.set_configs(new)
            self._generation += 1
            generation = self._generation
            self._changed.notify_all()
        self._drain(drains)
        self._refresh(list(new))
        return generation, added

    def has_versions(self, name: str) -> bool:
        """Whether the model's last listing found versions its policy aspires to."""
        with self._lock:
            model = self._models.get(name)
            return bool(model and model.aspired)

    def wait_for(self, names: list[str], noun: str, generation: int | None, rescan: bool) -> None:
        """Waits until each model is AVAILABLE or has failed; raises if any failed.

        Args:
          names: the models to wait for.
          noun: `servable(s)` (startup) or `model(s)` (reload), as TF Serving words it.
          generation: the config generation to wait under; a newer config aborts the wait.
          rescan: list base paths of models with no versions yet on each round
            (at startup, before polling runs).

        Raises:
          ServingError: UNKNOWN `N <noun> did not become available: ...`; ABORTED
            when a newer config was applied meanwhile.
        """
        interval = max(1, self._options.file_system_poll_wait_seconds)
        while True:
            with self._changed:
                if generation is not None and generation != self._generation:
                    raise superseded()
                outcomes = {name: self._outcome_locked(name) for name in names}
                failed = [n for n in names if outcomes[n] == "failed"]
                if failed:
                    raise self._repository.not_available_error(failed, noun)
                pending = [n for n in names if outcomes[n] == "waiting"]
                if not pending or self._stop.is_set():
                    return
                self._changed.wait(interval)
                empty = [n for n in pending if n in self._models and not self._models[n].aspired]
            if rescan and empty:
                self._refresh(empty)

    def commit(self, generation: int | None, action: Callable[[], None]) -> None:
        """Runs `action` (e.g. replacing the labels) unless a newer config was applied.

        Raises:
          ServingError: ABORTED when `generation` is no longer current; whatever
            `action` raises.
        """
        with self._lock:
            if generation is not None and generation != self._generation:
                raise superseded()
            action()

    def start_polling(self) -> None:
        """Rescans every base path each `--file_system_poll_wait_seconds` (0: never)."""
        if self._options.file_system_poll_wait_seconds > 0 and not self._stop.is_set():
            self._poll_thread = threading.Thread(
                target=self._poll_loop, name="model-version-poll", daemon=True
            )
            self._poll_thread.start()

    def stop(self) -> None:
        """Stops polling and cancels pending load retries (loaded sessions go with the process)."""
        self._stop.set()
        with self._changed:
            tasks = [m.load for m in self._models.values() if m.load is not None]
            self._changed.notify_all()
        for task in tasks:
            task.wake.set()
        deadline = time.monotonic() + _STOP_JOIN_S
        threads = [self._poll_thread] + [t.thread for t in tasks]
        for thread in threads:
            if thread is not None:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _outcome_locked(self, name: str) -> str:
        """`available` once every aspired version is served or failed (at least one
        served), `failed` once all failed, else `waiting`."""
        model = self._models.get(name)
        if model is None:
            return "available"  # removed by a newer config: nothing left to wait for
        serving = self._repository.serving(name)
        records = {v: self._repository.status_of(name, v) for v in model.aspired}
        failed = {v for v, r in records.items() if r is not None and r.failed}
        if serving and all(v in serving or v in failed for v in model.aspired):
            return "available"
        if model.aspired and model.load is None and len(failed) == len(model.aspired):
            return "failed"
        return "waiting"

    # ---- polling ------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.wait(self._options.file_system_poll_wait_seconds):
            with self._lock:
                names = list(self._models)
            self._refresh(names)

    def _refresh(self, names: list[str]) -> None:
        """Lists each model's base path (off the lock), then updates its plan."""
        for name in names:
            if self._stop.is_set():
                return
            with self._lock:
                model = self._models.get(name)
                config = model.config if model else None
            if config is None:
                continue
            found = self._scan(name, config)
            changed = self._repository.changed_failures(name, found or {})
            with self._lock:
                model = self._models.get(name)
                if model is None or model.config is not config:
                    continue  # reconfigured meanwhile; that change refreshes it
                if found is not None:
                    model.aspired = aspired_versions(config, found)
                    model.changed_since_failure = changed
                drains = self._plan_locked(name)
            self._drain(drains)

    def _scan(self, name: str, config) -> dict[int, str] | None:
        """The versions under a model's base path, or None when it cannot be used.

        A missing or unlistable base path, or one that lists no versions, is
        logged (one line per poll) and gives None: the caller then keeps what
        it serves.
        """
        base_path = config.base_path
        where = f"base path {printable(base_path)} for servable {printable(name)}"
        try:
            found: dict[int, str] | None = scan_base_path(base_path)
        except FileNotFoundError:
            found, level, problem = None, logging.ERROR, f"Could not find {where}"
        except OSError as e:
            found, level = None, logging.ERROR
            problem = f"Could not list {where}: {e.strerror or type(e).__name__}"
        if not found:
            if found is not None:
                level = logging.WARNING
                problem = (
                    f"No versions of servable {printable(name)} found under base path "
                    f"{printable(base_path)}. Did you forget to name your leaf directory as a number "
                    "(eg. '/1/')?"
                )
            kept = sorted(self._repository.serving(name), reverse=True)
            log.log(level, "%s%s", problem, f"; keeping version(s) {kept} served" if kept else "")
            return None
        policy = config.model_version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            for missing in sorted(set(policy.specific.versions) - set(found)):
                self._log_once(
                    ("specific", name, missing),
                    "Version %d of servable %s is in the config's specific versions but not found "
                    "under base path %s",
                    missing,
                    printable(name),
                    printable(base_path),
                )
        return found

    def _log_once(self, key: tuple, message: str, *args) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            log.warning(message, *args)

    # ---- planning (under the lock) -------------------------------------------------

    def _needs_load(self, name: str, version: int, model: _Model) -> bool:
        record = self._repository.status_of(name, version)
        if record is None:
            return True
        if record.state != END:
            return False  # loading, served or being unloaded
        if not record.failed:
            return True  # unloaded or cancelled earlier, aspired again
        return version in model.changed_since_failure

    def _plan_locked(self, name: str) -> list[tuple[str, int, Servable | None]]:
        """Decides one model's next steps; returns the unloads to drain after the lock.

        Availability first: a version that is no longer aspired is unloaded only
        once an aspired version is AVAILABLE (or none is aspired, or several old
        ones remain); the highest aspired version that needs it is loaded.
        """
        model = self._models.get(name)
        if model is None or self._stop.is_set():
            return []
        aspired = model.aspired
        task = model.load
        if task is not None:
            newer_waiting = any(v > task.version and self._needs_load(name, v, model) for v in aspired)
            if task.version not in aspired or newer_waiting:
                task.wake.set()  # its retries stop; the task re-checks and gives up
        drains = []
        while True:
            serving = self._repository.serving(name)
            old = sorted(v for v in serving if v not in aspired)
            aspired_serving = any(v in serving for v in aspired)
            if not (old and (not aspired or aspired_serving or len(old) > 1)):
                break
            drains.append((name, old[0], self._repository.withdraw(name, old[0])))
        if model.load is None:
            todo = [v for v in sorted(aspired, reverse=True) if self._needs_load(name, v, model)]
            if todo:
                self._start_load_locked(model, name, todo[0], aspired[todo[0]])
        return drains

    def _start_load_locked(self, model: _Model, name: str, version: int, path: str) -> None:
        model.changed_since_failure.discard(version)
        self._repository.set_status(name, version, VersionStatus(LOADING))
        task = _LoadTask(name, version, path)
        model.load = task
        task.thread = threading.Thread(
            target=self._run_load, args=(task,), name=f"model-load-{version}", daemon=True
        )
        task.thread.start()

    def _wanted_locked(self, task: _LoadTask, retry: bool = False) -> bool:
        """Whether a load should go on (`retry`: and try again after a failure)."""
        model = self._models.get(task.name)
        if self._stop.is_set() or model is None or model.load is not task:
            return False
        if model.aspired.get(task.version) != task.path:
            return False  # superseded, or the policy or config changed
        return not retry or not any(
            v > task.version and self._needs_load(task.name, v, model) for v in model.aspired
        )

    # ---- loading and unloading (off the lock) ----------------------------------------

    def _run_load(self, task: _LoadTask) -> None:
        """The load thread: attempts with retries, then publishes or records the failure."""
        name, version, path = task.name, task.version, task.path
        retries = max(0, self._options.max_num_load_retries)
        interval_s = max(0, self._options.load_retry_interval_micros) / 1e6
        outcome = VersionStatus(END)  # cancelled before the first attempt
        for attempt in range(retries + 1):
            with self._lock:
                if not self._wanted_locked(task):
                    break
            fingerprint = version_fingerprint(path)
            try:
                servable = self._load_once(name, version, path)
            except ServingError as e:
                log.error(
                    "Loading servable version {name: %s version: %d} failed (attempt %d of %d): %s: %s",
                    printable(name),
                    version,
                    attempt + 1,
                    retries + 1,
                    e.code.name,
                    e.message,
                )
                outcome = VersionStatus(END, e.code, e.message, failed_fingerprint=fingerprint)
                if attempt == retries:
                    break
                with self._lock:
                    retry = self._wanted_locked(task, retry=True)
                if not retry or task.wake.wait(interval_s) or not os.path.isdir(path):
                    # Woken: the version was superseded or the server is stopping.
                    break
                continue
            with self._lock:
                published = self._wanted_locked(task)
                if published:
                    self._repository.publish(servable)
                    self._finish_locked(task, None)
                    drains = self._plan_locked(name)
            if published:
                self._drain(drains)
                return
            log.info(
                "Discarding servable version {name: %s version: %d}: no longer aspired",
                printable(name),
                version,
            )
            servable.release()
            outcome = VersionStatus(END, grpc.StatusCode.CANCELLED, "Loading of servable cancelled")
            break
        with self._lock:
            self._finish_locked(task, outcome)
            drains = self._plan_locked(name)
        self._drain(drains)

    def _load_once(self, name: str, version: int, path: str) -> Servable:
        """Loads and warms up one version; any failure is a `ServingError`."""
        started = time.monotonic()
        log.info("Loading servable version {name: %s version: %d} from %s", printable(name), version, path)
        servable = None
        try:
            servable = Servable(name, version, path, self._options.tag_set, self._session_config)
            if self._warmup is not None:
                self._warmup(servable)
        except Exception as e:
            if servable is not None:
                servable.release()
            if self._metrics is not None:
                self._metrics.record_model_load(path, "fail", time.monotonic() - started)
            if isinstance(e, ServingError):
                raise
            # Not a failure the loader describes (a bug, or TensorFlow raising
            # something unexpected): fail this version, keep the watcher alive.
            log.exception("Unexpected error loading %s", path)
            raise ServingError(grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}") from e
        if self._metrics is not None:
            self._metrics.record_model_load(path, "success", time.monotonic() - started)
        log.info(
            "Successfully loaded servable version {name: %s version: %d} in %.2f s",
            printable(name),
            version,
            time.monotonic() - started,
        )
        return servable

    def _finish_locked(self, task: _LoadTask, outcome: VersionStatus | None) -> None:
        """Clears the model's running load and records a failed or cancelled outcome."""
        model = self._models.get(task.name)
        if model is not None and model.load is task:
            model.load = None
        if outcome is not None:
            self._repository.set_status(task.name, task.version, outcome)
        self._changed.notify_all()

    def _drain(self, drains: list[tuple[str, int, Servable | None]]) -> None:
        """Frees withdrawn versions: at once when idle, else once their runs finish (in a thread)."""
        busy = []
        for name, version, servable in drains:
            if servable is None or servable.wait_idle(0):
                self._release(name, version, servable)
            else:
                busy.append((name, version, servable))
        if busy:
            threading.Thread(target=self._drain_busy, args=(busy,), name="model-unload", daemon=True).start()

    def _drain_busy(self, drains: list[tuple[str, int, Servable]]) -> None:
        for name, version, servable in drains:
            if not servable.wait_idle(_UNLOAD_DRAIN_S):
                log.warning("Unloading %r while requests are still running in it", servable)
            self._release(name, version, servable)

    def _release(self, name: str, version: int, servable: Servable | None) -> None:
        if servable is not None:
            servable.release()
        self._repository.set_status(name, version, VersionStatus(END))
        log.info("Unloaded servable version {name: %s version: %d}", printable(name), version)
        # The version may be aspired again meanwhile; it could not load while UNLOADING.
        with self._changed:
            drains = self._plan_locked(name)
            self._changed.notify_all()
        self._drain(drains)


def superseded() -> ServingError:
    """ABORTED: a newer config was applied while this one's models were loading."""
    return ServingError(
        grpc.StatusCode.ABORTED,
        "A newer model config was applied while this one's models were loading; its labels were not applied",
    )
