"""`textserve score`: batch scoring from the command line.

    textserve score data/*.jsonl.gz --model runs/bbc/export --output out/scores.jsonl
    textserve score ../shared/data/bbc --model runs/bbc/export --output bbc.csv --format csv --probabilities
    textserve score feed.csv --text-column title --text-column body --id-column uid --label-column topic \\
        --model runs/bbc/export --output scored.jsonl --num-shards 8 --resume
    textserve score feed.jsonl --server grpc://127.0.0.1:8500 --model-name bbc_news --output scored.jsonl
    textserve score feed.jsonl --model runs/bbc/export --output scored.jsonl --runner beam \\
        --beam-args "--runner=DirectRunner --direct_num_workers=2"

This module only turns flags into the frozen `ScoreConfig` and picks the
runner; the package `pipeline/scoring/` does the work (`job.py` for tf.data, with
`predictors.py` for --server, and `beam.py` for --runner beam).
Failures that stop the job before it runs (`ScoringError`) reach
`pipeline.cli.main`, which prints them and exits 2.
"""

from __future__ import annotations

import argparse

from pipeline.cli.common import column, fail
from pipeline.errors import RunStopped
from pipeline.scoring.job import INPUT_FORMATS, OUTPUT_FORMATS

_EPILOG = """\
output files (for --output scores.jsonl):
  scores.jsonl, or scores-00000-of-0000N.jsonl ...   one row per document: id, label, score [, p_<class> ...]
  scores.errors.jsonl                                  every record that could not be scored: source, line, id, reason
  scores.summary.json                                  read = scored + errored, time, docs/s, accuracy / macro-F1
  scores.resume/                                       per-shard state used by --resume

exit status: 0 when the job ran (even with bad records, see the errors file),
2 when it could not start (unreadable input, invalid model, unreachable server,
bad options), 1 when it stopped mid-run (rerun with --resume).
"""


def register(subparsers) -> None:
    """Adds `textserve score` to the `textserve` parser."""
    score = subparsers.add_parser(
        "score",
        help="score files of documents with an exported model (tf.data, a server, or Apache Beam)",
        description="Score documents offline with the same exported model that is served. INPUT is a file, "
        "a directory (the class-folder layout, or a folder of files) or a quoted glob, of plain text (one "
        "document per line), CSV/TSV, JSON Lines, TFRecord of tf.Example, optionally gzip-compressed (.gz).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("inputs", nargs="+", metavar="INPUT", help="files, directories or globs (quote globs)")
    where = score.add_argument_group("model (one of)")
    where.add_argument(
        "--model",
        metavar="EXPORT_DIR",
        help="RUN/export (highest version) or RUN/export/<version>: score in this process",
    )
    where.add_argument(
        "--server",
        metavar="URL",
        help="grpc://HOST:PORT or http://HOST:PORT of TF Serving or `textserve serve`",
    )
    where.add_argument("--model-name", metavar="NAME", help="with --server: the served model's name")
    where.add_argument(
        "--concurrency",
        type=int,
        default=4,
        metavar="N",
        help="with --server: requests in flight (default: 4)",
    )
    where.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --server: deadline of one request (default: 60)",
    )

    reading = score.add_argument_group("reading")
    reading.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="auto",
        help="reader for every input (default: auto, by extension: .txt .csv .tsv .jsonl "
        ".json .tfrecord, each optionally .gz; directories with sub-directories are class folders)",
    )
    reading.add_argument(
        "--text-column",
        type=column,
        action="append",
        metavar="NAME",
        help="CSV/TSV column, JSON key or tf.Example bytes feature with the text; repeat to "
        "join several with a space; 0-based index with --no-header (default: text)",
    )
    reading.add_argument(
        "--id-column",
        type=column,
        default="",
        metavar="NAME",
        help="column / key / feature with document ids (default: FILE:LINE)",
    )
    reading.add_argument(
        "--label-column",
        type=column,
        default="",
        metavar="NAME",
        help="column / key / feature with reference labels: the summary then gives accuracy "
        "and macro-F1 (class folders always have labels)",
    )
    reading.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        help="CSV/TSV files have no header row (give columns as 0-based indices)",
    )
    reading.add_argument(
        "--fallback-encoding",
        default="",
        metavar="ENC",
        help="decode text that is not valid UTF-8 with ENC (e.g. latin-1) instead of "
        "reporting it in the errors file",
    )

    writing = score.add_argument_group("writing")
    writing.add_argument("--output", required=True, metavar="PATH", help="output file (see below)")
    writing.add_argument(
        "--format",
        dest="output_format",
        choices=OUTPUT_FORMATS,
        default="jsonl",
        help="output format (default: jsonl)",
    )
    writing.add_argument("--probabilities", action="store_true", help="also write every class's probability")
    writing.add_argument(
        "--num-shards",
        type=int,
        default=1,
        metavar="N",
        help="split the output into N shards of consecutive documents (default: 1)",
    )
    writing.add_argument(
        "--resume", action="store_true", help="continue an interrupted job: skip shards it completed"
    )
    writing.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier job")

    running = score.add_argument_group("running")
    running.add_argument(
        "--batch-size",
        type=int,
        default=256,
        metavar="N",
        help="documents per model call or request (default: 256)",
    )
    running.add_argument(
        "--runner",
        choices=("tfdata", "beam"),
        default="tfdata",
        help="tfdata: this machine (default); beam: an Apache Beam pipeline (pip install '.[beam]')",
    )
    running.add_argument(
        "--beam-args",
        default="",
        metavar='"ARGS"',
        help='Beam pipeline options, e.g. "--runner=DataflowRunner --project=P '
        '--region=R --temp_location=gs://B/tmp" (default: DirectRunner)',
    )
    running.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    score.set_defaults(run=_run_score)


def _run_score(args) -> int:
    from pipeline.scoring.job import ScoreConfig, run_scoring

    try:
        config = ScoreConfig(
            inputs=tuple(args.inputs),
            output=args.output,
            model=args.model or "",
            server=args.server or "",
            model_name=args.model_name or "",
            input_format=args.input_format,
            output_format=args.output_format,
            text_column=tuple(args.text_column or ("text",)),
            id_column=args.id_column,
            label_column=args.label_column,
            header=args.header,
            fallback_encoding=args.fallback_encoding,
            batch_size=args.batch_size,
            num_shards=args.num_shards,
            probabilities=args.probabilities,
            resume=args.resume,
            overwrite=args.overwrite,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            progress=args.progress,
        )
    except ValueError as error:
        return fail(str(error))
    if args.runner == "beam":
        return _run_beam(config, args.beam_args)
    if args.beam_args:
        return fail("--beam-args needs --runner beam.")
    try:
        run_scoring(config)
    except RunStopped as error:
        return fail(
            f"{error}\ncompleted shards are kept; rerun with --resume to continue.", code=error.exit_code
        )
    except KeyboardInterrupt:
        return fail("interrupted; completed shards are kept, rerun with --resume to continue.", code=130)
    return 0


def _run_beam(config, beam_args: str) -> int:
    try:
        from pipeline.scoring.beam import run_beam_scoring
    except ImportError as error:
        return fail(f"--runner beam needs Apache Beam: pip install '.[beam]' ({error}).")
    try:
        run_beam_scoring(config, beam_args)
    except ValueError as error:  # Beam's own option errors
        return fail(str(error))
    return 0
