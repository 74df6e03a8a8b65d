"""An OpenAPI 3.1 document for the REST API, with each model's schema taken from its signatures.

    GET /openapi.json            (on the REST port; see serving/routes.py for why not under /v1/)

The paths are `serving.routes.MODEL_ROUTES` × `TARGETS`, written out for every
served model, so each path carries that model's own request and response
schemas, derived generically from its SignatureDefs (dtypes and shapes; any
SavedModel, not only text classifiers):

* DT_STRING → a JSON string or `{"b64": "..."}` (responses: a string, or
  `{"b64"}` for aliases ending in `_bytes`); floats → numbers; integers →
  integers within the dtype's range; DT_BOOL → booleans; other dtypes → any value.
* A shape `[-1, 5]` is an array of rows, each an array of exactly 5 values; in
  the row format (`instances`/`predictions`) the first dimension is the batch.
* `:predict` takes every signature whose method is predict (chosen with
  `signature_name`); `:classify` / `:regress` appear for models that have such
  a signature, with TF Serving's `examples` / `results` shapes.

Version path parameters list the loaded versions as examples; label parameters
are an enum of the configured labels. The document is built per request from
what is loaded, so a new version or label shows up at once.
`tags` name the models (one tag each), which the playground page reads.
`python scripts/regenerate_openapi.py` writes the BBC model's copy to docs/openapi.json.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving import openapi_schemas, routes
from serving.openapi_schemas import closed, ref

OPENAPI_VERSION = "3.1.0"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
_INIT_OP = "__saved_model_init_op"
_INT64_MAX = (1 << 63) - 1
# A label as documented when none is configured; starts with a letter or digit so
# it can never be a `.` / `..` path segment that HTTP clients would collapse.
_LABEL_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"

_INT_RANGES = {
    types_pb2.DT_INT8: (-(1 << 7), (1 << 7) - 1),
    types_pb2.DT_UINT8: (0, (1 << 8) - 1),
    types_pb2.DT_INT16: (-(1 << 15), (1 << 15) - 1),
    types_pb2.DT_UINT16: (0, (1 << 16) - 1),
    types_pb2.DT_INT32: (-(1 << 31), (1 << 31) - 1),
    types_pb2.DT_UINT32: (0, (1 << 32) - 1),
    types_pb2.DT_INT64: (-(1 << 63), (1 << 63) - 1),
    types_pb2.DT_UINT64: (0, (1 << 64) - 1),
}
# Finite range of each float dtype the REST codec accepts (larger numbers are refused with 400).
_FLOAT_MAX = {types_pb2.DT_FLOAT: 3.4028234663852886e38, types_pb2.DT_DOUBLE: 1.7976931348623157e308}

_ERROR_CODES = {
    "400": "INVALID_ARGUMENT or FAILED_PRECONDITION: the request does not fit the model or the API",
    "404": "NOT_FOUND: no such model or version",
    "413": "the body is larger than the server's REST limit",
    "429": "RESOURCE_EXHAUSTED: over the decoded-input budget",
    "503": "UNAVAILABLE: the model is not available, or the batch queue is full",
    "504": "DEADLINE_EXCEEDED: --rest_api_timeout_in_ms passed",
}


@dataclass(frozen=True)
class ServedModel:
    """What the document describes of one model.

    Attributes:
      name: the model name.
      signature_defs: the latest version's SignatureDefMap.
      versions: the loaded versions (examples for the version parameter).
      labels: the configured version labels (an enum for the label parameter).
    """

    name: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
    versions: Sequence[int] = ()
    labels: Sequence[str] = field(default_factory=tuple)


def document(
    models: Sequence[ServedModel],
    *,
    server_url: str = "/",
    title: str = "textserve REST API",
    api_version: str = "1",
    playground: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `models` (a JSON-ready dict).

    Args:
      models: the served models, in the order to list them.
      server_url: the `servers[0].url` (relative "/" for the live document).
      title: `info.title`.
      api_version: `info.version`.
      playground: also list the playground page (`--rest_api_playground`).

    Returns:
      The document; `json.dumps` writes it.
    """
    paths: dict[str, Any] = {}
    for model in models:
        paths.update(_model_paths(model))
    paths[routes.OPENAPI_PATH] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document (textserve; not part of TF Serving)",
            "responses": {"200": _json_response("The OpenAPI document", {"type": "object"})},
        }
    }
    if playground:
        paths[routes.PLAYGROUND_PATH] = {
            "get": {
                "operationId": "playground",
                "summary": "The playground page (textserve, --rest_api_playground)",
                "responses": {
                    "200": {
                        "description": "An HTML page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": api_version,
            "description": (
                "TensorFlow Serving's REST API (api_rest.md), as served by textserve or by "
                "tensorflow_model_server, with each model's schemas taken from its SignatureDefs. "
                'Every error answers {"error": "..."} with TF Serving\'s HTTP status.'
            ),
        },
        "servers": [{"url": server_url}],
        "tags": [{"name": m.name, "description": _model_description(m)} for m in models],
        "paths": paths,
        "components": {
            "schemas": openapi_schemas.component_schemas(),
            "responses": {
                f"Error{code}": _json_response(text, ref("Error")) for code, text in _ERROR_CODES.items()
            },
        },
    }


def _model_description(model: ServedModel) -> str:
    signatures = ", ".join(sorted(_usable(model.signature_defs))) or "none"
    return f"Model {model.name}; signatures: {signatures}"


def _usable(
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef],
) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The signatures a request can run (TF2's `__saved_model_init_op` cannot)."""
    return {k: v for k, v in signature_defs.items() if k != _INIT_OP and v.inputs}


def _model_paths(model: ServedModel) -> dict[str, Any]:
    usable = _usable(model.signature_defs)
    bodies = {
        "predict": _predict_operation(usable),
        "classify": _examples_operation(usable, CLASSIFY_METHOD, _classify_results()),
        "regress": _examples_operation(
            usable, REGRESS_METHOD, {"type": "array", "items": {"type": "number"}}
        ),
    }
    quoted = urllib.parse.quote(model.name, safe="")
    paths: dict[str, Any] = {}
    for target in routes.TARGETS:
        for route in routes.MODEL_ROUTES:
            operation = (
                _info_operation(route)
                if route.operation in ("status", "metadata")
                else bodies[route.operation]
            )
            if operation is None:
                continue  # no signature of that kind: the route would only answer 400
            op_id = f"{route.operation}_{model.name}{_target_id(target)}"
            parameters = _target_parameters(model, target)
            paths[routes.model_path(quoted, target, route)] = {
                **({"parameters": parameters} if parameters else {}),
                route.method.lower(): {
                    "operationId": op_id,
                    "summary": route.summary,
                    "tags": [model.name],
                    **operation,
                },
            }
    return paths


def _target_id(target: str) -> str:
    return {"": "", "/versions/{version}": "_version", "/labels/{label}": "_label"}[target]


def _target_parameters(model: ServedModel, target: str) -> list[dict[str, Any]]:
    if target == "/versions/{version}":
        schema: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": _INT64_MAX}
        if model.versions:
            schema["examples"] = list(model.versions)
        return [{"name": "version", "in": "path", "required": True, "schema": schema}]
    if target == "/labels/{label}":
        if model.labels:
            schema = {"type": "string", "enum": list(model.labels)}
        else:
            schema = {"type": "string", "pattern": _LABEL_PATTERN}
        return [{"name": "label", "in": "path", "required": True, "schema": schema}]
    return []


def _info_operation(route: routes.Route) -> dict[str, Any]:
    schema = "ModelStatus" if route.operation == "status" else "ModelMetadata"
    return {"responses": {"200": _json_response(route.summary, ref(schema)), **_error_responses()}}


def _predict_operation(usable: Mapping[str, meta_graph_pb2.SignatureDef]) -> dict[str, Any] | None:
    """`:predict` for every predict-method signature: row and columnar requests, and their answers."""
    requests: list[dict[str, Any]] = []
    answers: list[dict[str, Any]] = []
    for name in sorted(usable):
        signature = usable[name]
        if signature.method_name != PREDICT_METHOD:
            continue
        selector = _signature_selector(name)
        requests.append(_request_object(selector, "instances", _rows(signature.inputs, output=False)))
        requests.append(_request_object(selector, "inputs", _columns(signature.inputs, output=False)))
        answers.append(closed({"predictions": _rows(signature.outputs, output=True)}))
        answers.append(closed({"outputs": _columns(signature.outputs, output=True)}))
    if not requests:
        return None
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _one_of(requests)}}},
        "responses": {"200": _json_response("The outputs", _one_of(answers)), **_error_responses()},
    }


def _examples_operation(
    usable: Mapping[str, meta_graph_pb2.SignatureDef], method: str, results: dict[str, Any]
) -> dict[str, Any] | None:
    """`:classify` / `:regress`: tf.Examples as JSON objects, for the signatures of `method`."""
    names = sorted(n for n, s in usable.items() if s.method_name == method)
    if not names:
        return None
    properties: dict[str, Any] = {
        "signature_name": {"type": "string", "enum": names},
        "context": ref("Example"),
        "examples": {"type": "array", "minItems": 1, "items": ref("Example")},
    }
    required = ["examples"] if DEFAULT_SIGNATURE in names else ["examples", "signature_name"]
    request = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": _json_response("One result per example", closed({"results": results})),
            **_error_responses(),
        },
    }


def _classify_results() -> dict[str, Any]:
    # Each pair is [label, score]. Written without `prefixItems`: schemathesis (to 4.32 at
    # least) rejects response schemas that use it.
    pair = {
        "type": "array",
        "description": "[label, score]",
        "minItems": 2,
        "maxItems": 2,
        "items": {"type": ["string", "number"]},
    }
    return {"type": "array", "items": {"type": "array", "items": pair}}


def _signature_selector(name: str) -> dict[str, Any]:
    """The `signature_name` property for one signature (optional for serving_default)."""
    if name == DEFAULT_SIGNATURE:
        return {"properties": {"signature_name": {"enum": ["", DEFAULT_SIGNATURE]}}, "required": []}
    return {"properties": {"signature_name": {"const": name}}, "required": ["signature_name"]}


def _request_object(selector: dict[str, Any], key: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**selector["properties"], key: schema},
        "required": [*selector["required"], key],
        "additionalProperties": False,
    }


def _rows(tensors: Mapping[str, meta_graph_pb2.TensorInfo], output: bool) -> dict[str, Any]:
    """`instances` / `predictions`: a list over the batch of one value, or of an object per row."""
    aliases = sorted(tensors)
    if len(aliases) == 1:
        row = _value(tensors[aliases[0]], aliases[0], output, skip_batch=True)
    else:
        row = closed({a: _value(tensors[a], a, output, skip_batch=True) for a in aliases})
    return {"type": "array", "minItems": 1, "items": row}


def _columns(tensors: Mapping[str, meta_graph_pb2.TensorInfo], output: bool) -> dict[str, Any]:
    """`inputs` / `outputs`: the whole tensor, or an object of whole tensors."""
    aliases = sorted(tensors)
    named = closed({a: _value(tensors[a], a, output, skip_batch=False) for a in aliases})
    if len(aliases) == 1 and not output:
        # A single input may be sent bare or under its alias.
        return _one_of([_value(tensors[aliases[0]], aliases[0], output, skip_batch=False), named])
    if len(aliases) == 1:
        return _value(tensors[aliases[0]], aliases[0], output, skip_batch=False)
    return named


def _value(info: meta_graph_pb2.TensorInfo, alias: str, output: bool, skip_batch: bool) -> dict[str, Any]:
    """The JSON schema of one tensor (or one row of it): nested arrays of its element schema."""
    element = _element(info.dtype, alias, output)
    if not info.HasField("tensor_shape") or info.tensor_shape.unknown_rank:
        return {}  # any rank: no schema can say more
    dims = [d.size for d in info.tensor_shape.dim]
    if skip_batch:
        dims = dims[1:]
    schema = element
    for position, size in reversed(list(enumerate(dims))):
        array: dict[str, Any] = {"type": "array", "items": schema}
        if size >= 0:
            array["minItems"] = array["maxItems"] = size
        elif position == 0 and not skip_batch:
            array["minItems"] = 1  # the batch
        schema = array
    return schema


def _element(dtype: int, alias: str, output: bool) -> dict[str, Any]:
    if dtype == types_pb2.DT_STRING:
        if output:
            return ref("Base64") if alias.endswith("_bytes") else {"type": "string"}
        return {"oneOf": [{"type": "string"}, ref("Base64")]}
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        limit = _FLOAT_MAX.get(dtype, 65504.0)
        return {"type": "number"} if output else {"type": "number", "minimum": -limit, "maximum": limit}
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        return {"type": "integer", "minimum": low, "maximum": high}
    if dtype == types_pb2.DT_BOOL:
        return {"type": "boolean"}
    return {"description": f"{types_pb2.DataType.Name(dtype)}: no JSON form"}


def _one_of(schemas: list[dict[str, Any]]) -> dict[str, Any]:
    return schemas[0] if len(schemas) == 1 else {"oneOf": schemas}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error_responses() -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/Error{code}"} for code in _ERROR_CODES}


def signature_defs_from_saved_model(
    version_dir: str | Path, tags: Sequence[str] = ("serve",)
) -> dict[str, meta_graph_pb2.SignatureDef]:
    """Reads a SavedModel's SignatureDefMap from its saved_model.pb, without loading the graph.

    Args:
      version_dir: a version directory holding saved_model.pb.
      tags: the MetaGraph's tag set (`--saved_model_tags`).

    Returns:
      Signature name → SignatureDef.

    Raises:
      FileNotFoundError: no saved_model.pb in `version_dir`.
      ValueError: no MetaGraph with exactly those tags.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(version_dir) / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return dict(meta_graph.signature_def)
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"{path}: no MetaGraph with tags {sorted(tags)} (found {found}); pass the right tags")


def document_json(manager: Any, *, playground: bool = False) -> bytes:
    """The live document of what `manager` serves now, as JSON bytes (`GET /openapi.json`)."""
    import orjson

    return orjson.dumps(document(served_models(manager), playground=playground))


def served_models(manager: Any) -> list[ServedModel]:
    """What a `ModelManager` serves now, for `document` (models with no version loaded are left out).

    Args:
      manager: the `ModelManager` (`model_names`, `resolve`, `available_versions`, `version_labels`).

    Returns:
      One `ServedModel` per model with an available version, by name.
    """
    from serving.errors import ServingError

    models = []
    for name in manager.model_names():
        try:
            latest = manager.resolve(name)
        except ServingError:
            continue  # nothing loaded: every route would answer 404 until a version loads
        labels = sorted(manager.version_labels(name))
        models.append(ServedModel(name, latest.signature_defs, manager.available_versions(name), labels))
    return models


# Where the static copy (docs/openapi.json) says the API is: the README's `--rest_api_port=8501`.
STATIC_SERVER_URL = "http://localhost:8501"


def saved_model_document(
    model_name: str, version_dir: str | Path, *, server_url: str = STATIC_SERVER_URL
) -> dict[str, Any]:
    """The document a server would answer when serving only this SavedModel version.

    Args:
      model_name: the name it is served under.
      version_dir: the numbered version directory (its name is the version).
      server_url: `servers[0].url`.

    Returns:
      The OpenAPI document (see `document`).

    Raises:
      FileNotFoundError / ValueError: see `signature_defs_from_saved_model`.
    """
    version_dir = Path(version_dir)
    versions = [int(version_dir.name)] if version_dir.name.isdigit() else []
    model = ServedModel(model_name, signature_defs_from_saved_model(version_dir), versions)
    return document([model], server_url=server_url)
