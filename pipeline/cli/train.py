"""Sub-commands of the training side: train, evaluate, predict, data fetch.

Each command builds the frozen config at this entry point (defaults <
--config FILE < --set KEY=VALUE) and passes it down; nothing below reads flags
or the environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from model.config import MEMBER_ARCHITECTURES
from pipeline.cli.common import add_config_args, default_cache_dir, fail, load_config_from_args
from pipeline.config import unread_overrides, valid_keys


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
    train.add_argument(
        "--repeats",
        type=int,
        metavar="K",
        help="also train on K more stratified splits (seeds 1..K) and report test accuracy and "
        "macro-F1 as mean ± sd; the export is still the configured split's (sets train.repeats)",
    )
    add_config_args(train)
    train.set_defaults(run=_run_train)

    tune = subparsers.add_parser(
        "tune",
        help="search hyperparameters with KerasTuner on the validation split; writes a TOML for train --config",
        description="Search an architecture's hyperparameters with KerasTuner (Bayesian optimisation) "
        "on the training split, scored by validation loss (the test split is never read). "
        "Writes OUT/best_config.toml, which `textserve train --config` takes, and OUT/trials.json. "
        "Needs the `tune` extra: pip install 'textserve[tune]'.",
    )
    tune.add_argument("--data", required=True, metavar="PATH", help="labelled data, as for train")
    tune.add_argument(
        "--arch",
        required=True,
        choices=list(MEMBER_ARCHITECTURES),
        help="architecture to tune (not an ensemble)",
    )
    tune.add_argument("--trials", type=int, default=10, metavar="N", help="models to try (default: 10)")
    tune.add_argument("--out", metavar="DIR", help="where results go (default: runs/tune-<arch>-<timestamp>)")
    add_config_args(tune)
    tune.set_defaults(run=_run_tune)

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
    evaluate.add_argument(
        "--json", action="store_true", help="print the metrics as one JSON object (for scripts)"
    )
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
    predict.add_argument(
        "texts", nargs="*", metavar="TEXT", help="documents to classify (quote each); none: read stdin"
    )
    predict.add_argument(
        "--batch-size",
        type=int,
        default=256,
        metavar="N",
        help="documents per call of the model's serving_default signature (default: 256)",
    )
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


def _format_timings(timings: dict[str, float]) -> str:
    """`41 s, of which model.fit 33 s (1.24x); read 1.2 s, adapt 0.8 s, ...`."""
    total, fit = timings["total"], timings.get("fit", 0.0)
    ratio = f" ({total / fit:.2f}x the fit)" if fit else ""
    steps = ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in timings.items() if name not in ("total", "fit")
    )
    return f"{total:.1f} s, of which model.fit {fit:.1f} s{ratio}; {steps}"


def _run_train(args) -> int:
    from pipeline.train import train

    overrides = list(args.overrides)
    if args.repeats is not None:
        overrides.append(f"train.repeats={args.repeats}")
    args.overrides = overrides
    config = load_config_from_args(args)
    for key in unread_overrides(config, overrides):
        hint = " (its vocabulary is model.tfidf_max_tokens)" if key == "preprocessing.max_tokens" else ""
        print(
            f"note: model.arch={config.model.arch} does not read {key}: it has no effect{hint}.",
            file=sys.stderr,
        )
    run_dir = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    verbose = 0 if args.quiet else (1 if sys.stdout.isatty() else 2)
    try:
        result = train(config, args.data, run_dir, verbose=verbose)
    except FileExistsError as error:  # the export refuses to overwrite a version
        return fail(str(error))
    test = result.metrics["test"]
    lines = [
        f"\ndone: test accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} "
        f"({test['count']} documents, {config.model.arch}, split seed {config.split.seed})"
    ]
    if result.repeats:
        accuracy, macro_f1 = result.repeats["accuracy"], result.repeats["macro_f1"]
        seeds = result.repeats["split_seeds"]
        lines.append(
            f"repeats: test accuracy {accuracy['mean']:.4f} ± {accuracy['sd']:.4f}, macro-F1 "
            f"{macro_f1['mean']:.4f} ± {macro_f1['sd']:.4f} (mean ± sd over {len(seeds)} splits, "
            f"seeds {seeds[0]}-{seeds[-1]}; {result.repeats['seconds']:.0f} s)"
        )
    lines += [
        f"time:   {_format_timings(result.timings)}",
        f"export: {result.version_dir}",
        f"card:   {run_dir / 'MODEL_CARD.md'}",
        f"plots:  {run_dir / 'history.png'}, {run_dir / 'confusion_matrix.png'}",
        f"logs:   tensorboard --logdir {run_dir / 'logs'}",
        f'try:    textserve predict --model {result.version_dir.parent} "Shares rose after the merger"',
    ]
    print("\n".join(lines))
    return 0


def _run_tune(args) -> int:
    from pipeline.tune import tune

    if args.trials < 1:
        return fail(f"--trials must be at least 1, received {args.trials}.")
    config = load_config_from_args(
        argparse.Namespace(config=args.config, overrides=[f"model.arch={args.arch}", *args.overrides])
    )
    out = Path(args.out or f"runs/tune-{args.arch}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = tune(config, args.data, out, trials=args.trials)
    print(
        f"\nbest of {result.trials} trials: validation loss {result.best_loss:.4f}, "
        f"accuracy {result.best_accuracy:.4f}\n"
        f"        {', '.join(f'{k}={v}' for k, v in result.best_values.items())}\n"
        f"config: {result.config_path}\n"
        f"try:    textserve train --data {args.data} --config {result.config_path} --repeats 5"
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
    if args.json:
        print(json.dumps(metrics))
    else:
        print(format_metrics(f"{args.data} on {model.version_dir}", metrics))
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
