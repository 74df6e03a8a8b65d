"""`textserve score`: batch scoring from the command line.

    textserve score data/*.jsonl.gz --model runs/bbc/export --output out/scores.jsonl
    textserve score ../shared/data/bbc --model runs/bbc/export --output bbc.csv --format csv --probabilities
    textserve score feed.csv --text-column title --text-column body --id-column uid --label-column topic \\
        --model runs/bbc/export --output scored.parquet --format parquet --num-shards 8 --resume
    textserve score feed.jsonl --server grpc://127.0.0.1:8500 --model-name bbc_news --output scored.jsonl
    textserve score feed.jsonl --model runs/bbc/export --output scored.jsonl --config score.toml \\
        --set score.batch_size=512 --runner beam --beam-args "--runner=DirectRunner --direct_num_workers=2"

The settings are the same frozen config `train` uses: defaults < `--config
FILE` < `--set section.key=value` < the flags below, each of which is a
shorthand for one key of the `[data]` (what to read) or `[score]` (how to
score) section. This module only builds the config and the `ScoreJob` and
picks the runner; the package `pipeline/scoring/` does the work (`job.py` for
this machine, `beam.py` for --runner beam). Expected failures are
`TextserveError`s, which `pipeline.cli.main` prints without a traceback.
"""

from __future__ import annotations

import argparse
import json

from pipeline.cli.common import add_config_args, column, fail, load_config_from_args
from pipeline.config import DATA_FORMATS, SCORE_OUTPUT_FORMATS, SCORE_RUNNERS, DataConfig, ScoreConfig
from pipeline.errors import EXIT_INTERRUPTED, RunStopped

_EPILOG = """\
output files (for --output scores.jsonl):
  scores.jsonl, or scores-00000-of-0000N.jsonl ...   one row per document: id, label, score [, p_<class> ...]
  scores.errors.jsonl                                  every record that could not be scored: source, line, id, reason
  scores.summary.json                                  read = scored + errored, time, docs/s, accuracy / macro-F1
  scores.config.toml                                   the resolved [data] and [score] settings
  scores.resume/                                       per-shard state used by --resume

ids come from the `id` key/column where the input has one (else FILE:LINE), reference
labels from `label` where present; text that is not UTF-8 is decoded with latin-1 and
counted in the summary (--fallback-encoding "" makes it an error row instead).

exit status: 0 when the job ran (even with bad records, see the errors file),
2 when it could not start (unreadable input, invalid model, unreachable server,
bad options), 1 when it stopped mid-run (rerun with --resume).
"""

# Flag (argparse dest) -> the config key it sets.
_FLAG_KEYS = {
    "input_format": "data.format",
    "text_column": "data.text_column",
    "id_column": "data.id_column",
    "label_column": "data.label_column",
    "header": "data.header",
    "fallback_encoding": "data.fallback_encoding",
    "output_format": "score.output_format",
    "probabilities": "score.probabilities",
    "num_shards": "score.num_shards",
    "batch_size": "score.batch_size",
    "concurrency": "score.concurrency",
    "timeout": "score.timeout_s",
    "runner": "score.runner",
    "beam_args": "score.beam_args",
}


def register(subparsers) -> None:
    """Adds `textserve score` to the `textserve` parser."""
    data, score = DataConfig(), ScoreConfig()
    parser = subparsers.add_parser(
        "score",
        help="score files of documents with an exported model (this machine, a server, or Apache Beam)",
        description="Score documents offline with the same exported model that is served. INPUT is a file, "
        "a directory (the class-folder layout, or a folder of files) or a quoted glob, of plain text (one "
        "document per line), CSV/TSV, JSON Lines, Parquet, TFRecord of tf.Example, optionally "
        "gzip-compressed (.gz). Every flag below that sets a setting is a shorthand for --set KEY=VALUE.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="files, directories or globs (quote globs)"
    )
    where = parser.add_argument_group("model (one of)")
    where.add_argument(
        "--model",
        metavar="EXPORT_DIR",
        help="RUN/export (highest version) or RUN/export/<version>: score here",
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
        metavar="N",
        help=f"with --server: requests in flight (score.concurrency, default: {score.concurrency})",
    )
    where.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"with --server: deadline of one request (score.timeout_s, default: {score.timeout_s:g})",
    )

    reading = parser.add_argument_group("reading (the [data] section)")
    reading.add_argument(
        "--input-format",
        choices=DATA_FORMATS,
        help="reader for every input (data.format; default: auto, by extension: .txt .csv .tsv .jsonl .json "
        ".parquet .tfrecord, each but .parquet optionally .gz; directories with sub-directories are class folders)",
    )
    reading.add_argument(
        "--text-column",
        type=column,
        action="append",
        metavar="NAME",
        help="CSV/TSV column, JSON key, Parquet column or tf.Example bytes feature with the text; repeat to "
        f"join several with a space; 0-based index with --no-header (data.text_column, default: {data.text_column[0]})",
    )
    reading.add_argument(
        "--id-column",
        type=column,
        metavar="NAME",
        help=f"column / key / feature with document ids (data.id_column, default: {data.id_column!r} where "
        'present, else FILE:LINE; "" = always FILE:LINE)',
    )
    reading.add_argument(
        "--label-column",
        type=column,
        metavar="NAME",
        help="column / key / feature with reference labels: the summary then gives accuracy and macro-F1 "
        f"(data.label_column, default: {data.label_column!r} where present; class folders always have labels)",
    )
    reading.add_argument(
        "--no-header",
        dest="header",
        action="store_false",
        default=None,
        help="CSV/TSV files have no header row (give columns as 0-based indices; data.header=false)",
    )
    reading.add_argument(
        "--fallback-encoding",
        metavar="ENC",
        help='decode text that is not valid UTF-8 with ENC and count it in the summary; "" makes such '
        f"text an error row (data.fallback_encoding, default: {data.fallback_encoding}; train uses the same key)",
    )

    writing = parser.add_argument_group("writing (the [score] section)")
    writing.add_argument("--output", required=True, metavar="PATH", help="output file (see below)")
    writing.add_argument(
        "--format",
        dest="output_format",
        choices=SCORE_OUTPUT_FORMATS,
        help=f"output format (score.output_format, default: {score.output_format})",
    )
    writing.add_argument(
        "--probabilities",
        action="store_true",
        default=None,
        help="also write every class's probability as p_<class> (score.probabilities)",
    )
    writing.add_argument(
        "--num-shards",
        type=int,
        metavar="N",
        help=f"split the output into N shards of consecutive documents (score.num_shards, default: {score.num_shards})",
    )
    writing.add_argument(
        "--resume", action="store_true", help="continue an interrupted job: skip shards it completed"
    )
    writing.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier job")

    running = parser.add_argument_group("running")
    running.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"documents per model call or request (score.batch_size, default: {score.batch_size})",
    )
    running.add_argument(
        "--runner",
        choices=SCORE_RUNNERS,
        help="tfdata: this machine (default); beam: an Apache Beam pipeline (pip install '.[beam]'; score.runner)",
    )
    running.add_argument(
        "--beam-args",
        metavar='"ARGS"',
        help='Beam pipeline options, e.g. "--runner=DataflowRunner --project=P --region=R '
        '--temp_location=gs://B/tmp" (score.beam_args; default: DirectRunner)',
    )
    running.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar with docs/s and ETA on stderr (default: when stderr is a terminal)",
    )
    add_config_args(parser)
    parser.set_defaults(run=_run_score)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags that were given, as `section.key=value` overrides (TOML literals)."""
    overrides = []
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return overrides


def _run_score(args: argparse.Namespace) -> int:
    from pipeline.scoring.job import ScoreJob, run_scoring

    args.overrides = [*args.overrides, *_flag_overrides(args)]
    config = load_config_from_args(args)
    try:
        job = ScoreJob(
            inputs=tuple(args.inputs),
            output=args.output,
            config=config,
            model=args.model or "",
            server=args.server or "",
            model_name=args.model_name or "",
            resume=args.resume,
            overwrite=args.overwrite,
            progress=args.progress,
        )
    except ValueError as error:
        return fail(str(error))
    if config.score.runner == "beam":
        return _run_beam(job)
    if config.score.beam_args:
        return fail("--beam-args (score.beam_args) needs --runner beam.")
    try:
        run_scoring(job)
    except RunStopped as error:
        return fail(
            f"{error}\ncompleted shards are kept; rerun with --resume to continue.", code=error.exit_code
        )
    except KeyboardInterrupt:
        return fail(
            "interrupted; completed shards are kept, rerun with --resume to continue.", code=EXIT_INTERRUPTED
        )
    return 0


def _run_beam(job) -> int:
    try:
        from pipeline.scoring.beam import run_beam_scoring
    except ImportError as error:
        return fail(f"--runner beam needs Apache Beam: pip install '.[beam]' ({error}).")
    try:
        run_beam_scoring(job)
    except RunStopped as error:
        return fail(
            f"{error}\ncompleted shards are kept; rerun with --resume to continue.", code=error.exit_code
        )
    except ValueError as error:  # Beam's own option errors
        return fail(str(error))
    return 0
