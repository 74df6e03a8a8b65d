"""Sub-commands of the release side: push, and models list / rollback / label.

    textserve push runs/bbc --model-base-path models/bbc_news
    textserve models list models/bbc_news
    textserve models label models/bbc_news --model-config models/bbc_news.config --label canary --version 2
    textserve models rollback models/bbc_news --to 1

The push's config is built here once and passed down, resolved as

    RUN/config.toml  <  --config FILE ([release] only)  <  --set release.KEY=VALUE  <  flags

so the data is re-read the way it was trained and only the `[release]` section
changes; the flags (`--skip-infra-validation`, `--model-server`,
`--infra-timeout`, `--infra-sample`, `--lock-timeout`) are shorthands for
`release.*` keys. The work is in pipeline/release/.

Exit codes: 0 done; 1 refused (gate, infra validation, another push holding
the lock); 2 unusable input (no export, corrupt model, unwritable path, bad flag).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import tomli_w

from pipeline.cli.common import fail
from pipeline.config import PipelineConfig, load_config, valid_keys
from pipeline.errors import GateRefused, InfraValidationError, ReleaseError, UsageError

_PUSH_DESCRIPTION = """\
Publish RUN_DIR/export/<highest version> as a new version under PATH, the model base path
TF Serving polls. PATH may be a local directory or a tf.io.gfile URL (gs://, s3://, hdfs://).

Before publishing, the push
  1. evaluates the candidate on its test split (or --eval-data PATH) and refuses (exit 1, both
     models side by side) unless it meets release.min_accuracy and release.min_macro_f1; then
     scores it and the latest version in PATH on the same documents minus any that version
     trained on, and refuses if the candidate is worse by more than release.max_regression
     with release.confidence (95%) confidence, or if fewer than release.min_eval_docs
     documents remain (settings from RUN_DIR/config.toml; change them with --config or --set);
  2. serves the candidate on loopback (tensorflow_model_server if on PATH, else python -m
     serving) and checks its gRPC and REST answers against in-process predictions.

The version number is larger than every number used in PATH. The version is copied under a
name TF Serving ignores (.tmp-push-...) and renamed into place, so a polling server never sees
it half-written (on object stores: every file first, saved_model.pb last). A record goes to
PATH/release_log.jsonl."""

_EPILOG = """\
examples:
  textserve push runs/bbc --model-base-path models/bbc_news
  textserve push runs/bbc --model-base-path gs://BUCKET/bbc_news --set release.min_accuracy=0.95
  textserve push runs/exp --model-base-path models/bbc_news --force --reason "hotfix for #12"
"""


def register(subparsers) -> None:
    """Adds `push` and `models {list,rollback,label}` to the `textserve` parser."""
    push = subparsers.add_parser(
        "push",
        help="gate, validate and publish a run's export as the next version of a served model",
        description=_PUSH_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by textserve train")
    push.add_argument(
        "--model-base-path",
        required=True,
        metavar="PATH",
        help="TF Serving's model base path (holds 1/, 2/, ...); created if missing",
    )
    push.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with a [release] table, applied over RUN_DIR/config.toml",
    )
    push.add_argument(
        "--set",
        metavar="release.KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a release setting, e.g. --set release.min_accuracy=0.95 (repeatable); "
        f"keys: {', '.join(k for k in valid_keys() if k.startswith('release.'))}",
    )
    push.add_argument(
        "--data",
        metavar="PATH",
        help="the run's training data, if it moved since training (default: the model card's "
        "data.source; its fingerprint must match)",
    )
    push.add_argument(
        "--eval-data",
        metavar="PATH",
        help="labelled documents to gate on instead of the run's test split (a holdout; read with the "
        "run's data.* settings; documents either model trained on are left out and counted)",
    )
    push.add_argument("--force", action="store_true", help="push even if the gate refuses (needs --reason)")
    push.add_argument("--reason", metavar="TEXT", help="why --force or --skip-infra-validation; logged")
    push.add_argument(
        "--skip-infra-validation",
        action="store_true",
        help="do not serve the candidate before publishing (release.infra_validation=false; needs --reason)",
    )
    push.add_argument(
        "--model-server",
        metavar="COMMAND",
        help="serving command for infra validation (release.model_server; default: "
        "tensorflow_model_server if on PATH, else python -m serving)",
    )
    push.add_argument(
        "--infra-timeout",
        type=float,
        metavar="SECONDS",
        help="time the server may take to load the candidate (release.infra_timeout_s; default 300)",
    )
    push.add_argument(
        "--infra-sample",
        type=int,
        metavar="N",
        help="test documents sent to the server over gRPC and REST (release.infra_sample; default 32)",
    )
    push.add_argument(
        "--lock-timeout",
        type=float,
        metavar="SECONDS",
        help="time to wait for a concurrent push to PATH (release.lock_timeout_s; default 120)",
    )
    push.set_defaults(run=_run_push)

    models = subparsers.add_parser(
        "models",
        help="list, roll back and label the versions under a model base path",
        description="Inspect and manage the versions that textserve push published under a model base path.",
    )
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="versions with their metrics and lineage, newest first",
        description="Print every version under PATH, newest first, with its test metrics, the version "
        "it was compared with, its run directory and any --force reason (from release_log.jsonl).",
    )
    listing.add_argument("base_path", metavar="PATH", help="model base path")
    listing.add_argument("--json", action="store_true", help="print the release records as JSON lines")
    listing.set_defaults(run=_run_list)

    rollback = actions.add_parser(
        "rollback",
        help="serve version N again by re-publishing it as a new version",
        description="Copy version N to a new, highest version number, so that every TF Serving version "
        "policy (latest included) serves it without a config change; recorded in the release log. "
        "With --model-config FILE, move FILE's labels back to N instead.",
    )
    rollback.add_argument("base_path", metavar="PATH", help="model base path")
    rollback.add_argument("--to", type=int, required=True, metavar="N", help="the version to serve again")
    rollback.add_argument("--reason", metavar="TEXT", help="why; logged")
    rollback.add_argument(
        "--model-config",
        metavar="FILE",
        help="roll back a labelled ModelServerConfig instead: labels on newer versions name N again "
        "and newer versions unload at the next config poll (nothing is copied)",
    )
    rollback.add_argument("--model-name", metavar="NAME", help="the config entry, if FILE has several models")
    rollback.add_argument(
        "--lock-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="time to wait for a concurrent push (default: 120)",
    )
    rollback.set_defaults(run=_run_rollback)

    label = actions.add_parser(
        "label",
        help="point a version label (e.g. canary) at a version in a models.config",
        description="Set version_labels { key: LABEL value: N } for the model in a text-format "
        "ModelServerConfig, so clients can call /v1/models/NAME/labels/LABEL. The file is created if "
        "missing (an entry with base_path PATH, policy pinned to N). If the version policy would not "
        "load N, it becomes specific { versions: ... } with every version it served, every labelled "
        "version and N. The file's leading comment block is kept; comments further down are not.",
    )
    label.add_argument("base_path", metavar="PATH", help="model base path (version N must exist there)")
    label.add_argument(
        "--model-config",
        required=True,
        metavar="FILE",
        help="your ModelServerConfig text file, e.g. models/bbc_news.config (created if missing, "
        "else rewritten); serve it with --model_config_file",
    )
    label.add_argument("--label", required=True, help="label name, [A-Za-z0-9_]+ (e.g. canary, stable)")
    label.add_argument("--version", type=int, required=True, metavar="N", help="the version it names")
    label.add_argument(
        "--model-name",
        metavar="NAME",
        help="the config entry, if the file has several models (or the name of a new entry; "
        "default: the version's model card name)",
    )
    label.set_defaults(run=_run_label)


def _log(message: str) -> None:
    print(message, flush=True)


def _toml_literal(value) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _release_overrides(args) -> list[str]:
    """`--config FILE`, `--set` and the push flags as `release.KEY=VALUE` overrides, in that order.

    Raises:
      UsageError: a setting outside [release], or an unreadable file.
    """
    overrides = []
    if args.config:
        try:
            document = tomllib.loads(Path(args.config).read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise UsageError(f"cannot read config file {args.config}: {error}") from error
        other = sorted(set(document) - {"release"})
        if other:
            raise UsageError(
                f"{args.config}: push reads only the [release] table (the rest stays as the run was "
                f"trained); found {other}."
            )
        release = document.get("release", {})
        if not isinstance(release, dict):
            raise UsageError(f"{args.config}: `release` must be a [release] table.")
        overrides += [f"release.{key}={_toml_literal(value)}" for key, value in release.items()]
    not_release = [item for item in args.overrides if not item.strip().startswith("release.")]
    if not_release:
        raise UsageError(
            f"push only overrides release.* settings (the rest must stay as the run was trained); "
            f"received {not_release}."
        )
    overrides += args.overrides
    flags = {
        "infra_validation": False if args.skip_infra_validation else None,
        "model_server": args.model_server,
        "infra_timeout_s": args.infra_timeout,
        "infra_sample": args.infra_sample,
        "lock_timeout_s": args.lock_timeout,
    }
    overrides += [
        f"release.{key}={_toml_literal(value)}" for key, value in flags.items() if value is not None
    ]
    return overrides


def push_config(args) -> PipelineConfig:
    """The push's config: the run's config.toml with the release overrides (see the module docstring).

    Raises:
      UsageError: no config.toml in the run, or a bad override.
    """
    config_file = Path(args.run_dir) / "config.toml"
    if not config_file.is_file():
        raise UsageError(
            f"{config_file} is missing: is {args.run_dir} a run directory written by textserve train?"
        )
    try:
        return load_config(config_file, _release_overrides(args))
    except ValueError as error:
        raise UsageError(str(error)) from error


def _run_push(args) -> int:
    from pipeline.release import push

    config = push_config(args)
    try:
        push(
            args.run_dir,
            args.model_base_path,
            config,
            force=args.force,
            reason=args.reason,
            data_path=args.data,
            log=_log,
        )
    except GateRefused as error:
        return fail(str(error), code=error.exit_code)
    except InfraValidationError as error:
        return fail(f"{error}\nnothing was pushed.", code=error.exit_code)
    except ReleaseError as error:
        return fail(str(error), code=error.exit_code)
    return 0


def _run_list(args) -> int:
    from pipeline.release import format_versions, list_versions, normalize_base_path

    try:
        infos, notes = list_versions(args.base_path)
    except ReleaseError as error:
        return fail(str(error))
    if args.json:
        for info in infos:
            print(json.dumps({"version": info.version, "complete": info.complete, "record": info.record}))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        print(format_versions(normalize_base_path(args.base_path), infos, notes))
    return 0


def _print_label_result(result) -> None:
    for message in result.messages:
        print(message)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _run_rollback(args) -> int:
    from pipeline.release import rollback
    from pipeline.release.labels import rollback_labels

    try:
        if args.model_config:
            _print_label_result(rollback_labels(args.base_path, args.model_config, args.to, args.model_name))
        else:
            rollback(args.base_path, args.to, reason=args.reason, lock_timeout_s=args.lock_timeout, log=_log)
    except ReleaseError as error:
        return fail(str(error), code=error.exit_code)
    return 0


def _run_label(args) -> int:
    from pipeline.release import label_version

    try:
        result = label_version(args.base_path, args.model_config, args.label, args.version, args.model_name)
    except ReleaseError as error:
        return fail(str(error), code=error.exit_code)
    _print_label_result(result)
    return 0
