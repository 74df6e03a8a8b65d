"""Version labels: point `canary` or `stable` at a version in a ModelServerConfig file.

    textserve models label models/bbc_news --model-config models/bbc_news.config \\
        --label canary --version 2
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from pipeline.errors import ReleaseError
from pipeline.release.store import normalize_base_path
from pipeline.release.versions import complete_versions

_LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class LabelResult:
    """What `label_version` changed in the ModelServerConfig."""

    model_name: str
    label: str
    version: int
    versions_served: tuple[int, ...]
    messages: tuple[str, ...]


def _served_versions(policy, available: list[int]) -> set[int]:
    """Which versions a TF Serving version policy loads from the complete versions in PATH."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return set(available)
    if kind == "specific":
        return set(policy.specific.versions)
    count = max(policy.latest.num_versions, 1) if kind == "latest" else 1
    return set(sorted(available)[-count:])


def _header_comments(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines).rstrip() + "\n" if any(line.strip() for line in lines) else ""


def label_version(
    base_path: str | Path,
    model_config_file: str | Path,
    label: str,
    version: int,
    model_name: str | None = None,
) -> LabelResult:
    """Points a version label at a version in a text-format ModelServerConfig file.

    If the config's version policy would not load that version, the policy
    becomes `specific { versions: ... }` with every version it served, every
    labelled version and this one. TF Serving moves a label only to a loaded
    version, and a version outside the policy never loads.

    Args:
      base_path: the model base path (the version must exist there, complete).
      model_config_file: the ModelServerConfig file (rewritten in place, its
        leading comment block kept; comments inside the message are not kept).
      label: `[A-Za-z0-9_]+`, e.g. canary or stable.
      version: the version the label names.
      model_name: which config entry, when the file lists several models.

    Raises:
      ReleaseError: unreadable config, unknown model, bad label or missing version.
    """
    base_path = normalize_base_path(base_path)
    if not _LABEL_PATTERN.match(label):
        raise ReleaseError(f"label {label!r} must match [A-Za-z0-9_]+ (TF Serving's URL form).")
    path = Path(model_config_file)
    try:
        text = path.read_text("utf-8")
        server_config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except (OSError, text_format.ParseError) as error:
        raise ReleaseError(f"cannot read {path} as a ModelServerConfig: {error}") from error
    entries = list(server_config.model_config_list.config)
    if model_name is not None:
        entries = [entry for entry in entries if entry.name == model_name]
    if len(entries) != 1:
        listed = [entry.name for entry in server_config.model_config_list.config]
        raise ReleaseError(
            f"{path}: pick the model with --model-name; models there: {listed}."
            if model_name is None or not entries
            else f"{path}: several entries named {model_name!r}."
        )
    entry = entries[0]
    complete = complete_versions(base_path)
    if version not in complete:
        raise ReleaseError(
            f"{base_path} has no complete version {version}; versions there: {complete}. "
            f"Push it first (textserve push)."
        )
    messages = []
    served = _served_versions(entry.model_version_policy, complete)
    labelled = {v for key, v in entry.version_labels.items() if key != label}
    if version not in served or not labelled <= served:
        wanted = sorted(served | labelled | {version})
        entry.model_version_policy.Clear()
        entry.model_version_policy.specific.versions.extend(wanted)
        messages.append(
            f"version policy is now specific {{ versions: {wanted} }}: the old policy did not load version "
            f"{version}. A server assigns a label only to a version that is AVAILABLE, so it refuses this "
            f"config until {version} has loaded (unless it runs with "
            f"--allow_version_labels_for_unavailable_models and the label is new); apply it once more "
            f"after the version is up if the first reload is refused."
        )
        served = set(wanted)
    entry.version_labels[label] = version
    content = _header_comments(text) + text_format.MessageToString(server_config)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(content, "utf-8")
    os.replace(tmp, path)
    messages.append(
        f"{path}: {entry.name} label {label!r} -> version {version}; versions served: {sorted(served)}"
    )
    return LabelResult(entry.name, label, version, tuple(sorted(served)), tuple(messages))
