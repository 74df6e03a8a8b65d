"""Sub-commands of the training side: train, evaluate, predict, data fetch.

Each command builds the frozen config at this entry point (defaults <
--config FILE < --set KEY=VALUE) and passes it down; nothing below reads flags
or the environment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline.cli.common import add_config_args, default_cache_dir, fail, load_config_from_args
from pipeline.config import valid_keys


def register(subparsers) -> None:
    """Adds train, evaluate, predict and data to the `textserve` parser."""
    keys = ", ".join(valid_keys())

    train = subparsers.add_parser(
        "train",
        help="train, export and verify a model (ingest → split → train → export → verify)",
        description="Train a classifier and export one raw-string SavedModel to RUN_DIR/export/<version>/. "
        f"Settable keys: {keys}.",
    )
    train.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="class-folder directory (e.g. ../shared/data/bbc) or CSV/TSV/JSONL file",
    )
    train.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<timestamp>)")
    train.add_argument("--quiet", action="store_true", help="no per-step Keras progress bars")
    add_config_args(train)
    train.set_defaults(run=_run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="metrics of an exported model on any labelled dataset",
        description="Run an exported model's serving_default on labelled data and print accuracy, "
        "macro-F1, per-class figures and the confusion matrix.",
    )
    evaluate.add_argument(
        "--model",
        required=True,
        metavar="EXPORT_DIR",
        help="RUN/export (highest version) or RUN/export/<version>",
    )
    evaluate.add_argument("--data", required=True, metavar="PATH", help="labelled data, as for train")
    evaluate.add_argument("--output", metavar="FILE", help="also write the metrics as JSON")
    add_config_args(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    predict = subparsers.add_parser(
        "predict",
        help="classify texts with an exported model (label<TAB>score per input)",
        description="Classify the TEXT arguments, or one document per line of stdin when none are given.",
    )
    predict.add_argument(
        "--model",
        required=True,
        metavar="EXPORT_DIR",
        help="RUN/export (highest version) or RUN/export/<version>",
    )
    predict.add_argument("texts", nargs="*", metavar="TEXT")
    predict.add_argument("--batch-size", type=int, default=256)
    predict.set_defaults(run=_run_predict)

    data = subparsers.add_parser("data", help="dataset utilities", description="Dataset utilities.")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = data_sub.add_parser(
        "fetch",
        help="download a dataset into the cache and print its path",
        description="Download the BBC News archive, check it (2,225 documents, 5 classes), "
        "and print the folder to pass to --data.",
    )
    fetch.add_argument("name", choices=["bbc"])
    default_cache = default_cache_dir()
    fetch.add_argument("--cache-dir", type=Path, default=default_cache, help=f"default: {default_cache}")
    fetch.add_argument("--url", help="archive URL (default: the official BBC archive)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds (default: 60)")
    fetch.set_defaults(run=_run_fetch)


def _run_train(args) -> int:
    from pipeline.train import train

    config = load_config_from_args(args)
    run_dir = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    try:
        result = train(config, args.data, run_dir, verbose=verbose)
    except FileExistsError as error:  # the export refuses to overwrite a version
        return fail(str(error))
    test = result.metrics["test"]
    print(
        f"\ndone in {result.seconds:.0f}s: test accuracy {test['accuracy']:.4f}, macro-F1 "
        f"{test['macro_f1']:.4f} ({test['count']} documents)\n"
        f"export: {result.version_dir}\n"
        f"plots:  {run_dir / 'history.png'}, {run_dir / 'confusion_matrix.png'}\n"
        f'try:    textserve predict --model {result.version_dir.parent} "Shares rose after the merger"'
    )
    return 0


def _run_evaluate(args) -> int:
    from model.export import ExportedModel
    from pipeline.data import ingest
    from pipeline.evaluate import classification_metrics, format_metrics, leakage_report, predict_labels

    config = load_config_from_args(args)
    try:
        model = ExportedModel(args.model)
    except FileNotFoundError as error:
        return fail(str(error))
    data = ingest(args.data, config.data, deduplicate=False)
    predicted = predict_labels(model, data.texts)
    metrics = classification_metrics(data.labels, predicted, model.label_names)
    metrics["data_report"] = {
        k: data.report[k] for k in ("records_read", "records_kept", "dropped_by_reason")
    }
    # Figures on documents the model trained on flatter it: count them and report the rest apart.
    leakage = leakage_report(model.card, data.texts, data.labels, predicted, model.label_names)
    metrics["leakage"] = leakage
    print(format_metrics(f"{args.data} on {model.version_dir}", metrics))
    print("confusion matrix (rows true, columns predicted):", json.dumps(metrics["confusion_matrix"]))
    print(leakage["note"])
    if leakage["unseen_metrics"] is not None and leakage["trained_on"]:
        print(
            format_metrics(
                f"the {leakage['unseen']} documents it never trained on", leakage["unseen_metrics"]
            )
        )
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n", "utf-8")
    return 0


def _run_predict(args) -> int:
    from model.export import ExportedModel
    from preprocessing import names

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]
    try:
        model = ExportedModel(args.model)
    except FileNotFoundError as error:
        return fail(str(error))
    # An empty text still gets a prediction (one output line per input, as TF Serving answers
    # it), but that prediction means nothing: say so rather than let it look confident.
    empty = [i + 1 for i, text in enumerate(texts) if not text.strip()]
    if empty:
        where = "input" if args.texts else "line"
        print(
            f"textserve: warning: {where} {', '.join(map(str, empty[:10]))}{' ...' if len(empty) > 10 else ''} "
            f"{'is' if len(empty) == 1 else 'are'} empty; the prediction for an empty text only reflects the "
            f"model's bias",
            file=sys.stderr,
        )
    outputs = model.predict(texts, args.batch_size)
    for label, score in zip(outputs.get(names.PREDICTED_LABEL, []), outputs.get(names.SCORE, [])):
        print(f"{label.decode('utf-8')}\t{score:.4f}")
    return 0


def _run_fetch(args) -> int:
    from pipeline.fetch import BBC_URL, fetch_bbc

    print(fetch_bbc(args.cache_dir, args.url or BBC_URL, args.timeout))
    return 0
