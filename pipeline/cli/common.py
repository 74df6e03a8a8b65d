"""What every `textserve` sub-command shares: config flags, error output, cache and column helpers.

Each command module builds the frozen config at its entry point with
`add_config_args` + `load_config_from_args` (defaults < --config FILE < --set
KEY=VALUE) and passes it down; nothing below reads flags or the environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.config import PipelineConfig, load_config
from pipeline.errors import EXIT_CANNOT_START, UsageError

CONFIG_HELP = "TOML file with [section] tables (see README, 'Configuration')"
SET_HELP = "override one setting, e.g. --set model.arch=tfidf (repeatable)"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Adds `--config FILE` and repeatable `--set KEY=VALUE` (stored as `args.overrides`)."""
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help=SET_HELP
    )


def load_config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Resolves `--config` and `--set` into the frozen config.

    Raises:
      UsageError: an unreadable file, an unknown key or a bad value (the message names it).
    """
    try:
        return load_config(args.config, args.overrides)
    except ValueError as error:
        raise UsageError(str(error)) from error


def fail(message: str, code: int = EXIT_CANNOT_START) -> int:
    """Prints `textserve: error: MESSAGE` on stderr and returns `code` (the exit status)."""
    print(f"textserve: error: {message}", file=sys.stderr)
    return code


def default_cache_dir() -> Path:
    """Where downloaded datasets go: $XDG_CACHE_HOME/textserve, else ~/.cache/textserve."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "textserve"


def column(value: str) -> str | int:
    """A column given by name, or by 0-based index when it is all digits (argparse `type=`)."""
    return int(value) if value.isdigit() else value
