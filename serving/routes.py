"""The REST port's routes, in one table that the router and the OpenAPI document both read.

`serving.rest` matches requests with the regexes built here from `MODEL_ROUTES`,
and `serving.openapi` lists the same routes, so a route cannot be served without
being documented or documented without being served (tests/serving/test_openapi.py
checks both directions).

TF Serving's routes (TFS_CONTRACT.md §3) all live under `/v1/models/`; a model
name or label is anything but '/' and ':', a version is digits, and a request
names the latest version, one version, or a label (never both):

    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            status
    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   metadata
    POST /v1/models/{m}[/versions/{n}|/labels/{l}]:predict|:classify|:regress

textserve's own pages stay outside `/v1/`: TF Serving answers every other
`/v1/...` path with 400 "Malformed request", and clients may rely on that, while
a path outside `/v1/` is a plain 404 there, so nothing a TF Serving client sends
changes meaning. The OpenAPI document is always served; the playground only with
`--rest_api_playground`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_PATTERN = r"[^/:]+"
VERSION_PATTERN = r"\d+"


@dataclass(frozen=True)
class Route:
    """One TF Serving REST route under `/v1/models/{m}[/versions/{n}|/labels/{l}]`.

    Attributes:
      method: "GET" or "POST".
      suffix: what follows the model part: "" (status), "/metadata", ":predict", ...
      operation: the handler's name, also the stem of the OpenAPI operationId.
      summary: one line for the OpenAPI document.
    """

    method: str
    suffix: str
    operation: str
    summary: str


MODEL_ROUTES: tuple[Route, ...] = (
    Route("GET", "", "status", "Model status: the state of every version, or of the one named"),
    Route("GET", "/metadata", "metadata", "Model metadata: the SignatureDefMap of the version named"),
    Route("POST", ":predict", "predict", "Predict: run a signature on input tensors"),
    Route("POST", ":classify", "classify", "Classify: run a classification signature on tf.Examples"),
    Route("POST", ":regress", "regress", "Regress: run a regression signature on tf.Examples"),
)

# How a request names its version, as path templates: latest, a number, a label.
TARGETS: tuple[str, ...] = ("", "/versions/{version}", "/labels/{label}")

# textserve's own routes (outside /v1/, see the module docstring).
OPENAPI_PATH = "/openapi.json"
PLAYGROUND_PATH = "/"
# The playground's script and style sheet, under this prefix (package data in serving/playground/).
PLAYGROUND_ASSET_PREFIX = "/playground/"


def _verbs(method: str, lead: str) -> list[str]:
    return [r.suffix[1:] for r in MODEL_ROUTES if r.method == method and r.suffix.startswith(lead)]


_TARGET = rf"(?:/versions/({VERSION_PATTERN})|/labels/({NAME_PATTERN}))?"

V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
# Groups: model name, version, label, verb.
PREDICTION_PATH = re.compile(
    rf"/v1/models/({NAME_PATTERN}){_TARGET}:({'|'.join(_verbs('POST', ':'))})", re.IGNORECASE
)
# Groups: model name (may be missing: answered "Missing model name"), version, label, "metadata" or None.
MODEL_PATH = re.compile(
    rf"/v1/models(?:/({NAME_PATTERN}))?{_TARGET}(?:/({'|'.join(_verbs('GET', '/'))}))?", re.IGNORECASE
)


def model_path(model: str, target: str, route: Route) -> str:
    """The path template of one route for one model, e.g. `/v1/models/m/versions/{version}:predict`.

    Args:
      model: the model name, as it appears in the path (not percent-encoded).
      target: one of `TARGETS`.
      route: one of `MODEL_ROUTES`.

    Returns:
      The OpenAPI path template.
    """
    return f"/v1/models/{model}{target}{route.suffix}"
