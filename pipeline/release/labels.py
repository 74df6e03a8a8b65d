"""Version labels in a ModelServerConfig file the user owns: canary, promote, roll back.

    textserve models label models/bbc_news --model-config models/bbc_news.config --label stable --version 1
    textserve models label models/bbc_news --model-config models/bbc_news.config --label canary --version 2
    textserve models rollback models/bbc_news --to 1 --model-config models/bbc_news.config

The file is the one `tensorflow_model_server --model_config_file=FILE` (and
`textserve serve`) reads and re-reads every `--model_config_file_poll_wait_seconds`.
`models label` creates it when it is missing, with an entry for the model whose
`base_path` is the model base path it was given, and rewrites it in place
otherwise. Protobuf text format keeps no comments, so the file's leading comment
block is kept and a line in it says that comments further down are not.

Two rules of TF Serving shape what is written:

* a label may only name a version that the version policy loads, so a label on
  a version outside the policy turns the policy into `specific { versions }`
  (the versions it served, every labelled version and this one);
* a server applies a label only to a version that is already AVAILABLE, unless
  it runs with `--allow_version_labels_for_unavailable_models` and the label is
  new. A created file pins the policy to the labelled version, so a later push
  is not served until a label names it (a canary).

Concurrent calls on one file are serialised with an advisory lock on
`FILE.lock`, so no call loses another's label.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline.errors import ReleaseError
from pipeline.release.store import is_remote, join, normalize_base_path, write_atomic
from pipeline.release.versions import complete_versions
from preprocessing import names

_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")
GENERATED_HEADER = """\
# tensorflow.serving.ModelServerConfig (text format) for
#   tensorflow_model_server --model_config_file=THIS_FILE  (or textserve serve)
# Created by `textserve models label`; each `models label` or `models rollback
# --model-config` call rewrites it and keeps only this leading comment block.
"""
REWRITE_NOTE = "# Rewritten by `textserve models label`: comments below this header are not kept."


@dataclass(frozen=True)
class LabelResult:
    """What a label change did to the ModelServerConfig.

    Attributes:
      model_name: the config entry.
      label: the label set (for a rollback, "" when several moved).
      version: the version it names.
      versions_served: the versions the policy now loads.
      messages: what changed, for the user.
      warnings: what the user should check (a base path that differs, dropped comments).
    """

    model_name: str
    label: str
    version: int
    versions_served: tuple[int, ...]
    messages: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def _served_versions(policy, available: list[int]) -> set[int]:
    """Which versions a TF Serving version policy loads from the complete versions in PATH."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(available)
    if kind == "specific":
        return set(policy.specific.versions)
    count = max(policy.latest.num_versions, 1) if kind == "latest" else 1
    return set(sorted(available)[-count:])


def _header_comments(text: str) -> tuple[str, bool]:
    """The file's leading comment block, and whether comments follow further down (to be lost)."""
    lines = text.splitlines()
    header = []
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            break
        header.append(line)
    rest = lines[len(header) :]
    later_comments = any(line.lstrip().startswith("#") for line in rest)
    block = "\n".join(header).rstrip() + "\n" if any(line.strip() for line in header) else ""
    return block, later_comments


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on `PATH.lock` (a file never replaced, unlike PATH)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _card_model_name(base_path: str, version: int) -> str | None:
    card = Path(join(base_path, str(version), names.ASSETS_EXTRA, names.MODEL_CARD_FILE))
    if is_remote(base_path) or not card.is_file():
        return None
    try:
        return json.loads(card.read_text("utf-8")).get("model_name")
    except (OSError, json.JSONDecodeError):
        return None


class _ConfigFile:
    """A ModelServerConfig file read for one change: its message, header and notes."""

    def __init__(self, path: Path):
        self.path = path
        self.created = not path.exists()
        self.config = model_server_config_pb2.ModelServerConfig()
        self.header, self.warnings = GENERATED_HEADER, []
        if self.created:
            return
        try:
            text = path.read_text("utf-8")
            text_format.Parse(text, self.config)
        except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
            raise ReleaseError(
                f"cannot read {path} as a ModelServerConfig: {error}. Fix the file, or pass a new path "
                f"to --model-config to have one created."
            ) from error
        if self.config.WhichOneof("config") not in (None, "model_config_list"):
            raise ReleaseError(f"{path}: has no model_config_list (custom_model_config is not supported).")
        self.header, later_comments = _header_comments(text)
        if later_comments:
            self.warnings.append(f"{path}: comments below the leading comment block are not kept.")
        if REWRITE_NOTE not in self.header:
            self.header += REWRITE_NOTE + "\n"

    def entry(self, model_name: str | None, base_path: str, version: int):
        """The config entry to change: the one named, the only one, or a new one for this base path."""
        entries = list(self.config.model_config_list.config)
        if model_name is not None:
            named = [entry for entry in entries if entry.name == model_name]
            if len(named) > 1:
                raise ReleaseError(f"{self.path}: several entries named {model_name!r}.")
            if named:
                return self._check_base(named[0], base_path)
        elif len(entries) == 1:
            return self._check_base(entries[0], base_path)
        elif entries:
            raise ReleaseError(
                f"{self.path}: pick the model with --model-name; models there: {[e.name for e in entries]}."
            )
        entry = self.config.model_config_list.config.add()
        entry.name = model_name or _card_model_name(base_path, version) or Path(base_path).name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        entry.model_version_policy.specific.versions.append(version)
        return entry

    def _check_base(self, entry, base_path: str):
        if normalize_base_path(entry.base_path) != base_path:
            self.warnings.append(
                f"{self.path}: {entry.name}'s base_path is {entry.base_path}, not {base_path}; a server "
                f"reading this file serves the versions there (fine if it is the same store mounted elsewhere)."
            )
        return entry

    def write(self) -> None:
        write_atomic(self.path, (self.header + text_format.MessageToString(self.config)).encode("utf-8"))


def _check_label(label: str) -> None:
    if not _LABEL_PATTERN.match(label):
        raise ReleaseError(f"label {label!r} must match [A-Za-z0-9_]+ (TF Serving's URL form).")


def label_version(
    base_path: str | Path,
    model_config_file: str | Path,
    label: str,
    version: int,
    model_name: str | None = None,
) -> LabelResult:
    """Points a version label at a version in a text-format ModelServerConfig file.

    Args:
      base_path: the model base path (the version must exist there, complete).
      model_config_file: the ModelServerConfig file; created if missing.
      label: `[A-Za-z0-9_]+`, e.g. canary or stable.
      version: the version the label names.
      model_name: which config entry, when the file lists several models (or
        the name of a new entry; default: the version's model card name).

    Returns:
      What changed.

    Raises:
      ReleaseError: unreadable config, ambiguous model, bad label or missing version.
    """
    base_path = normalize_base_path(base_path)
    _check_label(label)
    complete = complete_versions(base_path)
    if version not in complete:
        raise ReleaseError(
            f"{base_path} has no complete version {version}; versions there: {complete}. "
            f"Push it first (textserve push)."
        )
    path = Path(model_config_file).resolve()
    with _locked(path):
        config_file = _ConfigFile(path)
        entry = config_file.entry(model_name, base_path, version)
        messages = [f"{path}: created, serving {entry.name} from {base_path}"] if config_file.created else []
        served = _served_versions(entry.model_version_policy, complete)
        labelled = {v for key, v in entry.version_labels.items() if key != label}
        if version not in served or not labelled <= served:
            wanted = sorted(served | labelled | {version})
            entry.model_version_policy.Clear()
            entry.model_version_policy.specific.versions.extend(wanted)
            messages.append(
                f"version policy is now specific {{ versions: {wanted} }}: the old policy did not load "
                f"version {version}. A server assigns a label only to a version that is AVAILABLE, so it "
                f"refuses this config until {version} has loaded (unless it runs with "
                f"--allow_version_labels_for_unavailable_models and the label is new); apply it once more "
                f"after the version is up if the first reload is refused."
            )
            served = set(wanted)
        entry.version_labels[label] = version
        config_file.write()
    messages.append(
        f"{path}: {entry.name} label {label!r} -> version {version}; versions served: {sorted(served)}"
    )
    return LabelResult(
        entry.name, label, version, tuple(sorted(served)), tuple(messages), tuple(config_file.warnings)
    )


def rollback_labels(
    base_path: str | Path, model_config_file: str | Path, to_version: int, model_name: str | None = None
) -> LabelResult:
    """Rolls a labelled config back to version N: labels on newer versions name N, newer versions unload.

    No files are copied: N is already loaded, so the server applies the change
    at its next config poll. Unlabelled requests go to the highest version the
    policy loads, which becomes N.

    Args:
      base_path: the model base path.
      model_config_file: the ModelServerConfig file (must exist).
      to_version: N, a version the config's policy loads now.
      model_name: which config entry, when the file lists several models.

    Returns:
      What changed.

    Raises:
      ReleaseError: no such file, or N is not loaded under the file's policy.
    """
    base_path = normalize_base_path(base_path)
    path = Path(model_config_file).resolve()
    if not path.is_file():
        raise ReleaseError(f"{path}: no such ModelServerConfig file.")
    with _locked(path):
        config_file = _ConfigFile(path)
        entry = config_file.entry(model_name, base_path, to_version)
        served = _served_versions(entry.model_version_policy, complete_versions(base_path))
        if to_version not in served:
            raise ReleaseError(
                f"version {to_version} is not loaded under {path}'s policy (it loads {sorted(served)}); "
                f"roll back without --model-config, which re-publishes it as a new version."
            )
        keep = sorted(v for v in served if v <= to_version)
        moved = sorted(key for key, v in entry.version_labels.items() if v > to_version)
        for key in moved:
            entry.version_labels[key] = to_version
        entry.model_version_policy.Clear()
        entry.model_version_policy.specific.versions.extend(keep)
        config_file.write()
    message = (
        f"{path}: {entry.name} rolled back to version {to_version}: "
        + (f"labels {moved} -> {to_version}; " if moved else "")
        + f"versions served: {keep} (newer ones unload at the server's next config poll)"
    )
    return LabelResult(
        entry.name, ",".join(moved), to_version, tuple(keep), (message,), tuple(config_file.warnings)
    )
