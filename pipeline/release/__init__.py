"""Releasing a trained run into a TF Serving model base path: gate, validate, publish, lineage.

    textserve push runs/bbc --model-base-path models/bbc_news
    textserve models list models/bbc_news
    textserve models label models/bbc_news --model-config models/bbc_news.config --label canary --version 2
    textserve models rollback models/bbc_news --to 1

One module per reason to change, read in this order:

    store.py             paths on any gfile filesystem, copy, atomic write; the base path's layout
    log.py               release_log.jsonl and the record each version carries
    versions.py          which children TF Serving takes for versions; `models list`
    lock.py              the push lock
    candidate.py         the run's export and test split
    gate.py              thresholds, baseline comparison, the side-by-side table
    infra_validation.py  serve the candidate on loopback and check its answers
    push.py              staging, version numbers, publish, push, rollback
    labels.py            version labels in a ModelServerConfig (canary)

The push's settings are the `[release]` section of the run's config
(pipeline/config.py `ReleaseConfig`), overridden by `textserve push` flags.
"""

from pipeline.errors import GateRefused, InfraValidationError, ReleaseError
from pipeline.release.candidate import Candidate, load_candidate, load_test_split
from pipeline.release.gate import Comparison, compare, format_comparison
from pipeline.release.infra_validation import find_model_server
from pipeline.release.labels import LabelResult, label_version, rollback_labels
from pipeline.release.log import read_release_log
from pipeline.release.push import PushResult, push, rollback
from pipeline.release.store import (
    LOCK_FILE,
    RECORD_FILE,
    RELEASE_LOG,
    STAGING_PREFIX,
    copy_plan,
    has_atomic_rename,
    normalize_base_path,
)
from pipeline.release.versions import VersionInfo, format_versions, is_complete, list_versions, version_dirs

__all__ = [
    "LOCK_FILE",
    "RECORD_FILE",
    "RELEASE_LOG",
    "STAGING_PREFIX",
    "Candidate",
    "Comparison",
    "GateRefused",
    "InfraValidationError",
    "LabelResult",
    "PushResult",
    "ReleaseError",
    "VersionInfo",
    "compare",
    "copy_plan",
    "find_model_server",
    "format_comparison",
    "format_versions",
    "has_atomic_rename",
    "is_complete",
    "label_version",
    "list_versions",
    "load_candidate",
    "load_test_split",
    "normalize_base_path",
    "push",
    "read_release_log",
    "rollback",
    "rollback_labels",
    "version_dirs",
]
