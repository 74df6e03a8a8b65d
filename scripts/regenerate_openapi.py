"""Writes docs/openapi.json: the OpenAPI document of the BBC News model as `textserve serve` answers it.

    python scripts/regenerate_openapi.py --export runs/bbc/export          # a trained export
    python scripts/regenerate_openapi.py --data ../shared/data/bbc          # trains the TF-IDF model first
    python scripts/regenerate_openapi.py --export runs/bbc/export --check   # exit 1 if the copy is stale

The document depends only on the export's signatures (names, dtypes, shapes) and
version, so any BBC export of this code base gives the same file.
tests/serving/test_openapi.py fails when the committed copy is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "docs" / "openapi.json"
MODEL_NAME = "bbc_news"


def render(document: dict) -> str:
    """The file's text: indented, keys in document order, newline at the end."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _latest_version(export: Path) -> Path:
    if (export / "saved_model.pb").is_file():
        return export
    if not export.is_dir():
        raise SystemExit(f"error: {export} is not a directory; pass RUN/export from `textserve train`")
    versions = sorted((p for p in export.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise SystemExit(f"error: {export} holds no numbered version directory with a saved_model.pb")
    return versions[-1]


def _train(data: Path, workdir: Path) -> Path:
    from pipeline.config import load_config
    from pipeline.train import train

    config = load_config(None, ["model.arch=tfidf"])
    return train(config, data, workdir / "run", verbose=0, log=lambda *_: None).version_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--export", type=Path, help="a BBC export directory (or one version directory in it)")
    source.add_argument("--data", type=Path, help="the BBC News folder: train the TF-IDF model first")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where to write (default: docs/openapi.json)"
    )
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs")
    args = parser.parse_args(argv)

    from serving.openapi import saved_model_document

    with tempfile.TemporaryDirectory() as workdir:
        version_dir = _latest_version(args.export) if args.export else _train(args.data, Path(workdir))
        text = render(saved_model_document(MODEL_NAME, version_dir))
    if args.check:
        current = args.out.read_text("utf-8") if args.out.is_file() else ""
        if current != text:
            print(
                f"{args.out} is out of date; write it with: python scripts/regenerate_openapi.py "
                f"--export {args.export or 'RUN/export'}",
                file=sys.stderr,
            )
            return 1
        return 0
    args.out.write_text(text, "utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
