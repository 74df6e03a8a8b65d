"""The `textserve` command line: one entry point, one sub-command per job.

    textserve train --data ../shared/data/bbc --out runs/bbc
    textserve predict --model runs/bbc/export/1 "Shares rose sharply ..."
    textserve serve --port=8500 --rest_api_port=8501 --model_name=bbc_news --model_base_path=$PWD/runs/bbc/export

Each sub-command group is a module of this package that registers itself
through a `register(subparsers)` function listed in `_COMMAND_MODULES`; this
file only dispatches, and turns every expected failure (`pipeline.errors`) into
one `textserve: error: ...` line and its exit code. TensorFlow is imported
lazily inside the commands so that `--help` answers at once.

`serve` is the exception: it takes tensorflow_model_server's own flag syntax
(`--name=value`, bare booleans, unknown flags reported but tolerated), which
argparse cannot reproduce, so its arguments are handed over untouched.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline.cli.common import fail
from pipeline.cli.quiet import import_tensorflow_quietly
from pipeline.errors import EXIT_INTERRUPTED, TextserveError

# Modules that define `register(subparsers)`; order is the order in --help.
_COMMAND_MODULES = (
    "pipeline.cli.train",
    "pipeline.cli.demo",
    "pipeline.cli.score",
    "pipeline.cli.release",
)

# Sub-commands whose arguments are passed verbatim to another entry point.
_PASSTHROUGH = {
    "serve": ("serving.server", "main"),
}


def version_text() -> str:
    """`textserve --version`: this package and the TensorFlow / TF Serving API versions it works with."""
    from importlib import metadata

    def installed(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"textserve {installed('textserve')}\n"
        f"tensorflow {installed('tensorflow')}, tensorflow-text {installed('tensorflow-text')}\n"
        f"speaks the TensorFlow Serving API of tensorflow-serving-api {installed('tensorflow-serving-api')}"
    )


def build_parser() -> argparse.ArgumentParser:
    """Builds the full `textserve` parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="textserve",
        description="Train, export, serve and score a text classifier whose "
        "preprocessing lives inside one TensorFlow SavedModel.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps --version's lines
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show TensorFlow's own start-up and C++ log lines"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers.add_parser(
        "serve",
        help="serve SavedModels over gRPC and REST exactly as TensorFlow Serving does "
        "(tensorflow_model_server flags; `textserve serve --help` lists them)",
        add_help=False,
    )
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line and returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        module_name, function_name = _PASSTHROUGH[argv[0]]
        entry = getattr(importlib.import_module(module_name), function_name)
        return entry(argv[1:], prog=f"textserve {argv[0]}")
    args = build_parser().parse_args(argv)
    import_tensorflow_quietly(args.verbose)
    try:
        return args.run(args) or 0
    except TextserveError as error:
        return fail(str(error), error.exit_code)
    except KeyboardInterrupt:
        return fail("interrupted.", EXIT_INTERRUPTED)
