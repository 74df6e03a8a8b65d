"""The model store the front ends hold: a `ModelRepository` kept current by a `VersionWatcher`.

    manager = ModelManager(options)
    manager.start(initial_config(options), warmup=hook)   # blocks until served
    servable = manager.resolve("half_plus_two")
    ...
    manager.stop()

Requests go to the repository (model_repository.py: resolve, status, labels),
which never waits for a load; the watcher (version_watcher.py: polling, aspired
versions, loads, retries, unloads) keeps it current. This module applies
configs the way tensorflow_model_server's ServerCore does (TFS_CONTRACT.md §2):
checks them, hands them to the watcher, waits for the models they add, then
replaces the version labels; it also re-reads `--model_config_file` every
`--model_config_file_poll_wait_seconds`.
"""

from __future__ import annotations

import logging
import threading

from serving import config_protos
from serving.errors import ServingError
from serving.flags import ServerOptions
from serving.model_repository import (
    TENSORFLOW_PLATFORM,
    ModelRepository,
    model_server_config_class,
    printable,
    read_config_file,
    validate_config,
)
from serving.servable import Servable
from serving.version_watcher import VersionWatcher, WarmupHook

log = logging.getLogger("serving.model_manager")


def single_model_config(name: str, base_path: str):
    """The config tensorflow_model_server builds from `--model_name`/`--model_base_path`."""
    config = model_server_config_class()()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def initial_config(options: ServerOptions):
    """The startup config: the config file when given, else the single-model flags.

    Raises:
      config_protos.TextProtoError: the config file does not parse.
    """
    if options.model_config_file:
        return read_config_file(options.model_config_file)
    return single_model_config(options.model_name, options.model_base_path)


class ModelManager:
    """Loads, serves, swaps and unloads SavedModel versions per a ModelServerConfig.

    Args:
      options: the server options (tags, polling, retries, session threads, labels rule).
      metrics: a `serving.metrics.Metrics` to count load attempts in, or None.

    Raises:
      config_protos.TextProtoError: `--tensorflow_session_config_file` does not parse.
    """

    def __init__(self, options: ServerOptions, metrics=None):
        self._options = options
        self.repository = ModelRepository(options.allow_version_labels_for_unavailable_models)
        self._watcher = VersionWatcher(self.repository, options, metrics)
        self._applied = None  # the last config applied in full (labels included)
        self._stop = threading.Event()
        self._config_thread: threading.Thread | None = None

    # ---- requests (never wait for loads) -----------------------------------------

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The AVAILABLE servable a request names; see `ModelRepository.resolve`.

        Raises:
          ServingError: INVALID_ARGUMENT for an unknown label, NOT_FOUND for an
            unknown model or version.
        """
        return self.repository.resolve(name, version, label)

    def model_names(self) -> list[str]:
        """Names of the configured models, sorted."""
        return self.repository.model_names()

    def available_versions(self, name: str) -> list[int]:
        """AVAILABLE versions of a model, highest first."""
        return self.repository.available_versions(name)

    def version_labels(self, name: str) -> dict[str, int]:
        """A model's version labels (label → version), as configured."""
        return self.repository.version_labels(name)

    def model_status(self, name: str, version: int | None = None):
        """GetModelStatus; see `ModelRepository.model_status`.

        Raises:
          ServingError: NOT_FOUND for an unknown model or version.
        """
        return self.repository.model_status(name, version)

    # ---- lifecycle -----------------------------------------------------------------

    def start(self, config, warmup: WarmupHook | None = None) -> None:
        """Applies the startup config, blocks until every model is served, starts polling.

        Like tensorflow_model_server, startup waits for every model, including
        one whose base path has no versions yet.

        Args:
          config: the startup `ModelServerConfig`.
          warmup: called with each freshly loaded servable before it is served;
            raising `ServingError` fails that version's load.

        Raises:
          ServingError: invalid config (INVALID_ARGUMENT), labels on versions that
            are not available (FAILED_PRECONDITION), or UNKNOWN
            `N servable(s) did not become available: ...`.
        """
        validate_config(config)
        # Startup labels are checked before anything loads, as in TF Serving:
        # without --allow_version_labels_for_unavailable_models they fail.
        labels = self.repository.checked_labels(config)
        self._watcher.set_warmup(warmup)
        _, added = self._watcher.apply(config)
        self._watcher.wait_for(added, "servable(s)", generation=None, rescan=True)
        self._watcher.commit(None, lambda: self._install(config, labels))
        self._watcher.start_polling()
        if self._options.model_config_file and self._options.model_config_file_poll_wait_seconds > 0:
            self._config_thread = threading.Thread(
                target=self._config_file_loop, name="model-config-poll", daemon=True
            )
            self._config_thread.start()

    def reload_config(self, config) -> None:
        """Replaces the whole config (HandleReloadConfigRequest semantics).

        Models absent from `config` are unloaded; added models that have
        versions on disk are waited for until AVAILABLE or failed; then the
        version labels are replaced. An added model whose base path holds no
        versions yet is not waited for (TF Serving would block the call, and
        every later reload, until one appears): it is configured, logged, and
        served once a version lands. Polling, loads and requests of the other
        models go on throughout.

        Raises:
          ServingError: INVALID_ARGUMENT for a bad config (nothing changes);
            UNKNOWN `N model(s) did not become available` when an added model
            fails to load; FAILED_PRECONDITION for a label on an unavailable
            version; ABORTED when a newer config replaced this one while its
            models were loading.
        """
        validate_config(config)
        for model in config.model_config_list.config:
            log.info(
                "Reload config: model %s base_path %s", printable(model.name), printable(model.base_path)
            )
        generation, added = self._watcher.apply(config)
        awaited = [name for name in added if self._watcher.has_versions(name)]
        for name in sorted(set(added) - set(awaited)):
            log.warning(
                "Model %s has no versions under its base path yet; ReloadConfig does not wait for it: "
                "it is served once a version appears",
                printable(name),
            )
        self._watcher.wait_for(awaited, "model(s)", generation=generation, rescan=False)
        self._watcher.commit(
            generation, lambda: self._install(config, self.repository.checked_labels(config))
        )

    def stop(self) -> None:
        """Stops polling and pending load retries (loaded sessions are freed with the process)."""
        self._stop.set()
        self._watcher.stop()
        if self._config_thread is not None:
            self._config_thread.join(timeout=60)

    def _install(self, config, labels: dict[str, dict[str, int]]) -> None:
        self.repository.set_labels(labels)
        self._applied = config

    def _config_file_loop(self) -> None:
        path = self._options.model_config_file
        while not self._stop.wait(self._options.model_config_file_poll_wait_seconds):
            try:
                config = read_config_file(path)
            except config_protos.TextProtoError as e:
                log.error("%s", e.log_line)
                log.error("Keeping the current models: %s", e)
                continue
            applied = self._applied
            if applied is not None and config.SerializeToString(
                deterministic=True
            ) == applied.SerializeToString(deterministic=True):
                continue
            log.info("Model config file %s changed; applying it", path)
            try:
                self.reload_config(config)
            except ServingError as e:
                log.error("Could not apply the model config file %s: %s: %s", path, e.code.name, e.message)
