"""The model card: what the exported model is for, how it was made and how well it does.

Its sections follow "Model Cards for Model Reporting" (Mitchell et al., 2019):
model details, intended use, training data, evaluation data, quantitative
analysis (with confidence intervals and, when measured, repeated splits),
limitations, ethical considerations, and how to call the model. One dict is
written twice: as JSON in the SavedModel's `assets.extra/model_card.json`
(machines: `textserve push` reads its data fingerprint and metrics) and as
`MODEL_CARD.md` in the run directory (people).

This module only arranges what the pipeline measured; it computes nothing.
"""

from __future__ import annotations

import time

# The BBC News dataset's classes: when the labels are exactly these, the card
# can name the dataset and its terms of use.
_BBC_LABELS = ["business", "entertainment", "politics", "sport", "tech"]
_BBC_LICENCE = (
    "BBC News dataset (D. Greene and P. Cunningham, ICML 2006): articles from the BBC News "
    "website, 2004–2005. All rights in the texts remain with the BBC; the dataset is provided "
    "for non-commercial research. Do not redistribute the texts or use a model trained on them "
    "commercially without checking those terms."
)
_OTHER_LICENCE = (
    "Not recorded: the licence of the training data is its owner's. State it here before "
    "publishing the model."
)

_INTERPRETATION = {
    "bilstm": "token ids → embedding → bidirectional LSTM → dense → softmax",
    "cnn": "token ids → embedding → 1-D convolutions of several widths → max over time → softmax",
    "fasttext": "unigram and bigram ids → mean of their embeddings → softmax",
    "tfidf": "unigram+bigram TF-IDF features → L2 normalisation → softmax regression",
}


def _interval_text(value: float, interval: list[float] | tuple[float, float] | None) -> str:
    if interval is None:
        return f"{value:.4f}"
    return f"{value:.4f} (95% CI {interval[0]:.4f}–{interval[1]:.4f})"


def build_model_card(
    *,
    model_name: str,
    version: int,
    labels: list[str],
    architecture: str,
    config: dict,
    config_hash: str,
    metrics: dict,
    data: dict,
    environment: dict,
    run_dir: str,
) -> dict:
    """Arranges a run's facts into the model card.

    Args:
      model_name: the name TF Serving serves it under.
      version: the export version.
      labels: class names in probability order.
      architecture: `model.arch`.
      config: the resolved run config as a dict.
      config_hash: its fingerprint.
      metrics: `{"validation": ..., "test": ...}` from `classification_metrics`,
        each optionally with `"intervals": {"accuracy": [lo, hi], "macro_f1": [lo, hi]}`,
        and optionally `"repeats"` (mean ± sd over repeated splits).
      data: source, fingerprint, documents, classes, splits and split_seed.
      environment: tensorflow_version, python_version, git_commit.
      run_dir: where the run's artifacts are.

    Returns:
      The card as a JSON-ready dict. The flat keys of earlier cards
      (`labels`, `metrics`, `data`, `config_hash`, `git_commit`, ...) are kept.
    """
    is_bbc = sorted(labels) == _BBC_LABELS
    if architecture == "ensemble":
        members = config.get("model", {}).get("ensemble_members", [])
        described = "mean of the probabilities of " + " and ".join(
            f"{member} ({_INTERPRETATION.get(member, member)})" for member in members
        )
    else:
        described = _INTERPRETATION.get(architecture, architecture)
    sequence_length = config.get("preprocessing", {}).get("sequence_length")
    summary = {
        split: {k: metrics[split][k] for k in ("accuracy", "macro_f1", "count")}
        for split in ("validation", "test")
    }
    analysis: dict = {}
    for split in ("validation", "test"):
        figures = metrics[split]
        analysis[split] = {
            "documents": figures["count"],
            "accuracy": figures["accuracy"],
            "macro_f1": figures["macro_f1"],
            "confidence_intervals_95": figures.get("intervals"),
            "per_class_f1": {label: values["f1"] for label, values in figures["per_class"].items()},
        }
    if metrics.get("repeats"):
        analysis["repeated_splits"] = metrics["repeats"]
    limitations = [
        f"Assigns one of {len(labels)} classes ({', '.join(labels)}) to every text: there is no "
        "'other' class, so a text about anything else still gets one of these labels. Use the "
        "`score` output to set aside low-confidence predictions.",
        (
            "Trained on English news articles; other languages"
            if is_bbc
            else "Trained on one source's texts; other sources, languages"
        )
        + ", genres (social media, transcripts) or much shorter texts (headlines) are out of its "
        "domain and were not evaluated.",
        f"The test split holds {summary['test']['count']} documents, so its accuracy is uncertain "
        "by the interval shown; repeated splits (`textserve train --repeats K`) measure how much "
        "it moves with the split.",
    ]
    if architecture in ("bilstm", "cnn", "fasttext") and sequence_length:
        limitations.append(f"Reads only the first {sequence_length} tokens after stopword removal.")
    if is_bbc:
        limitations.append(
            "The BBC articles date from 2004–2005: names and topics since then are unseen words."
        )
    return {
        # Flat keys: read by `textserve push`, `models list` and earlier tools.
        "model_name": model_name,
        "version": version,
        "labels": labels,
        "architecture": architecture,
        "config": config,
        "config_hash": config_hash,
        "metrics": summary,
        "data": data,
        **environment,
        "run_dir": run_dir,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Model Cards sections.
        "model_details": {
            "description": f"Text classifier over {len(labels)} classes; raw UTF-8 text in, label and "
            "probabilities out. Normalisation, stopwords and vocabulary are inside the SavedModel.",
            "architecture": f"{architecture}: {described}",
            "signatures": {
                "serving_default": "text: string [batch] → label, score, class_id, probabilities [batch, "
                f"{len(labels)}]",
                "classify": "tf.Example with bytes feature `text` → classes, scores (TF Serving Classify API)",
            },
            "framework": f"TensorFlow {environment.get('tensorflow_version', '')} SavedModel",
        },
        "intended_use": {
            "primary_uses": "Routing or tagging English news articles by topic; a baseline and "
            "reference deployment for TF Serving.",
            "primary_users": "Engineers serving or batch-scoring news text.",
            "out_of_scope": "Decisions about people; texts outside the training classes or language; "
            "any use the training data's licence does not allow.",
        },
        "training_data": {
            "source": data.get("source"),
            "documents": data.get("splits", {}).get("train"),
            "classes": data.get("classes"),
            "fingerprint": data.get("fingerprint"),
            "preparation": "empty texts, missing labels and exact duplicates removed before a "
            f"stratified split (seed {data.get('split_seed')}); see the run's data_report.json.",
            "licence": _BBC_LICENCE if is_bbc else _OTHER_LICENCE,
        },
        "evaluation_data": {
            "validation": data.get("splits", {}).get("validation"),
            "test": data.get("splits", {}).get("test"),
            "note": "held out from the same source and split; validation chose the early-stopping "
            "epoch, the test split was not used for any choice.",
        },
        "quantitative_analysis": analysis,
        "limitations": limitations,
        "ethical_considerations": "News topics carry no personal attributes as labels, but the texts "
        "name real people; the model can reflect the coverage choices of one publisher.",
        "how_to_call": {
            "rest": f'curl -d \'{{"instances": ["Shares rose after the merger"]}}\' '
            f"localhost:8501/v1/models/{model_name}:predict",
            "grpc": f'TextClassifierClient("localhost:8500", "{model_name}", transport="grpc")'
            '.predict(["Shares rose after the merger"])',
            "cli": 'textserve predict --model RUN/export "Shares rose after the merger"',
            "note": "load with tensorflow_text imported (its ops are in the graph); TF Serving links them.",
        },
    }


def render_markdown(card: dict) -> str:
    """The card as MODEL_CARD.md, section by section.

    Args:
      card: a dict from `build_model_card`.

    Returns:
      Markdown text.
    """
    details, use = card["model_details"], card["intended_use"]
    training, evaluation = card["training_data"], card["evaluation_data"]
    analysis = card["quantitative_analysis"]
    lines = [
        f"# Model card: {card['model_name']} version {card['version']}",
        "",
        "## Model details",
        "",
        f"- {details['description']}",
        f"- Architecture: {details['architecture']}",
        f"- Framework: {details['framework']}; config hash `{card['config_hash']}`, "
        f"commit `{card.get('git_commit', 'unknown')}`, created {card['created']}",
        *(f"- Signature `{name}`: {text}" for name, text in details["signatures"].items()),
        "",
        "## Intended use",
        "",
        f"- Primary uses: {use['primary_uses']}",
        f"- Primary users: {use['primary_users']}",
        f"- Out of scope: {use['out_of_scope']}",
        "",
        "## Training data",
        "",
        f"- Source: `{training['source']}` ({training['documents']} training documents; "
        f"fingerprint `{str(training['fingerprint'])[:16]}…`)",
        f"- Classes: {training['classes']}",
        f"- Preparation: {training['preparation']}",
        f"- Licence: {training['licence']}",
        "",
        "## Evaluation data",
        "",
        f"- {evaluation['validation']} validation and {evaluation['test']} test documents; {evaluation['note']}",
        "",
        "## Quantitative analysis",
        "",
        "| split | documents | accuracy | macro-F1 |",
        "|---|---|---|---|",
    ]
    for split in ("validation", "test"):
        figures = analysis[split]
        intervals = figures.get("confidence_intervals_95") or {}
        lines.append(
            f"| {split} | {figures['documents']} | {_interval_text(figures['accuracy'], intervals.get('accuracy'))} "
            f"| {_interval_text(figures['macro_f1'], intervals.get('macro_f1'))} |"
        )
    repeated = analysis.get("repeated_splits")
    if repeated:
        lines += [
            "",
            f"Repeated splits (seeds {repeated['split_seeds'][0]}–{repeated['split_seeds'][-1]}, "
            f"{len(repeated['split_seeds'])} runs): test accuracy {repeated['accuracy']['mean']:.4f} ± "
            f"{repeated['accuracy']['sd']:.4f}, macro-F1 {repeated['macro_f1']['mean']:.4f} ± "
            f"{repeated['macro_f1']['sd']:.4f} (mean ± sd).",
        ]
    lines += ["", "Per-class F1 on the test split:", ""]
    lines += [f"- {label}: {f1:.3f}" for label, f1 in analysis["test"]["per_class_f1"].items()]
    lines += ["", "## Limitations", ""]
    lines += [f"- {text}" for text in card["limitations"]]
    lines += [
        "",
        "## Ethical considerations",
        "",
        card["ethical_considerations"],
        "",
        "## How to call it",
        "",
    ]
    calls = card["how_to_call"]
    lines += [
        "```bash",
        calls["cli"],
        calls["rest"],
        "```",
        "",
        "```python",
        "from pipeline.client import TextClassifierClient",
        calls["grpc"],
        "```",
        "",
        calls["note"].capitalize(),
        "",
    ]
    return "\n".join(lines)
