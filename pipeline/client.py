"""A client for the served textserve text classifier, over gRPC or REST.

Built on the generic `serving.client.ServingClient`, it adds what only this
model's exports know: the `text` input, the `serving_default` outputs
`label` / `score` / `class_id` / `probabilities`, and the `classify` signature.
It works against `textserve serve` and TensorFlow Serving alike:

    from pipeline.client import TextClassifierClient

    with TextClassifierClient("localhost:8500", "bbc_news") as client:          # gRPC
        for p in client.predict(["Shares rose after the merger"]):
            print(p.label, p.score, p.probabilities)        # 'business' 0.99 {'business': 0.99, ...}
    rest = TextClassifierClient("http://localhost:8501", "bbc_news", transport="rest")
    rest.classify(["The striker scored twice"])             # same answers from the classify signature
    rest.status(), rest.metadata()                          # version states, signatures

`predict(texts)` calls `serving_default` with input `text` (DT_STRING `[n]`). Its
`probabilities` output is a bare vector, so the class names it is indexed by are
read once from the `classify` signature (which lists every class in probability
order) and checked against every answer's `label`/`class_id`; a new model
version with other classes is noticed and the names are read again.
`classify(texts)` sends one `tf.Example` per text with bytes feature `text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from preprocessing import names
from serving.client import (
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT_S,
    ClientError,
    ModelMetadata,
    ServingClient,
    SignatureSpec,
    TensorSpec,
    VersionStatus,
)

__all__ = [
    "ClientError",
    "ModelMetadata",
    "Prediction",
    "SignatureSpec",
    "TensorSpec",
    "TextClassifierClient",
    "VersionStatus",
]


@dataclass(frozen=True)
class Prediction:
    """One text's answer: the top class, its score, and every class's probability."""

    label: str
    score: float
    probabilities: dict[str, float]


class TextClassifierClient:
    """Calls a served textserve text classifier through TF Serving's gRPC or REST API.

    Args:
      target: the server: "host:port" (gRPC port for "grpc", REST port for "rest"),
        or "http://host:port" for REST.
      model_name: the served model's name (`--model_name` or the config's `name`).
      transport: "grpc" or "rest".
      timeout: seconds one attempt may take (gRPC deadline / socket timeout).
      retries: extra attempts after an UNAVAILABLE answer or a refused
        connection (0 = try once).
      backoff: seconds before the first retry; doubled for each further one.
      max_backoff: upper bound of the wait between two attempts.
      version: ask for this model version instead of the latest.
      version_label: ask for the version behind this label (exclusive with `version`).

    Raises:
      ValueError: an unknown transport, negative retries/timeouts, or both
        `version` and `version_label`.
    """

    def __init__(
        self,
        target: str,
        model_name: str,
        *,
        transport: str = "grpc",
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF_S,
        max_backoff: float = DEFAULT_MAX_BACKOFF_S,
        version: int | None = None,
        version_label: str | None = None,
    ):
        self.serving = ServingClient(
            target,
            model_name,
            transport=transport,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            version=version,
            version_label=version_label,
        )
        self.model_name = model_name
        self.transport = transport
        self._label_names: list[str] | None = None

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classifies texts with the `serving_default` signature.

        Args:
          texts: the documents (a list of str, not a single str).

        Returns:
          One `Prediction` per text, in order; `probabilities` maps every class
          name to its probability.

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: `texts` is a bare string or holds non-strings.
        """
        texts = _checked_texts(texts)
        if not texts:
            return []
        batch = np.empty(len(texts), dtype=object)
        batch[:] = texts
        outputs = self.serving.predict({names.TEXT_KEY: batch}, signature_name=names.PREDICT_SIGNATURE)
        for key in names.PREDICT_OUTPUTS:
            if key not in outputs:
                raise ClientError(
                    "INTERNAL",
                    f"the answer has no {key!r} output (got {sorted(outputs)}); is this "
                    f"model a textserve text classifier?",
                    request=self.serving.describe("Predict"),
                )
        labels = [_text(v) for v in outputs[names.PREDICTED_LABEL].tolist()]
        class_ids = [int(v) for v in outputs[names.CLASS_ID].tolist()]
        class_names = self._class_names(labels, class_ids)
        return [
            Prediction(label, float(score), dict(zip(class_names, row)))
            for label, score, row in zip(
                labels, outputs[names.SCORE].tolist(), outputs[names.PROBABILITIES].tolist()
            )
        ]

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        """Classifies texts with the `classify` signature (TF Serving's Classify API).

        Args:
          texts: the documents (a list of str, not a single str).

        Returns:
          One `Prediction` per text: the highest-scoring class and every
          class's score, as the signature's `classes`/`scores` give them.

        Raises:
          ClientError: the server refused the request or could not be reached.
          ValueError: `texts` is a bare string or holds non-strings.
        """
        texts = _checked_texts(texts)
        if not texts:
            return []
        results = self.serving.classify(
            [{names.TEXT_KEY: text} for text in texts], signature_name=names.CLASSIFY_SIGNATURE
        )
        predictions = []
        for pairs in results:
            scores = dict(pairs)
            best = max(scores, key=scores.__getitem__)
            predictions.append(Prediction(best, scores[best], scores))
        return predictions

    def metadata(self) -> ModelMetadata:
        """Reads the served version's signatures (see `ServingClient.metadata`)."""
        return self.serving.metadata()

    def status(self) -> list[VersionStatus]:
        """Reads the state of the model's versions (see `ServingClient.status`)."""
        return self.serving.status()

    def close(self) -> None:
        """Closes the channel or the pooled connections."""
        self.serving.close()

    def __enter__(self) -> TextClassifierClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _class_names(self, labels: list[str], class_ids: list[int]) -> list[str]:
        """Class names in probability order, re-read if the answer disagrees with the cached ones."""
        known: list[str] = []
        for fresh in (False, True):
            if self._label_names is None or fresh:
                self._label_names = self._read_class_names()
            known = self._label_names
            if all(0 <= i < len(known) and known[i] == label for label, i in zip(labels, class_ids)):
                return known
        raise ClientError(
            "FAILED_PRECONDITION",
            f"the classify signature's classes {known} disagree with serving_default's answers "
            f"(labels {labels}, class ids {class_ids}); the export's two signatures do not match",
            request=self.serving.describe("Predict"),
        )

    def _read_class_names(self) -> list[str]:
        # An Example without the `text` feature is an empty document: the
        # classify signature still lists every class, in probability order.
        results = self.serving.classify([{}], signature_name=names.CLASSIFY_SIGNATURE)
        return [label for label, _ in results[0]]


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise ValueError("texts must be a list of strings, not a single string: pass [text]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] is a {type(text).__name__}, expected str")
    return texts


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
