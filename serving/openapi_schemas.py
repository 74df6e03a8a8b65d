"""The fixed JSON Schemas of TF Serving's REST payloads, for `serving.openapi`'s `components`.

These do not depend on a model: the error envelope, `{"b64": ...}`, a tf.Example
as JSON (TFS_CONTRACT.md §4), GetModelStatus and GetModelMetadata answers.
`serving.openapi` adds each model's own request and response schemas.
"""

from __future__ import annotations

from typing import Any

# Standard base64 with padding, as TF Serving decodes `{"b64": ...}`.
BASE64_PATTERN = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def ref(name: str) -> dict[str, str]:
    """A `$ref` to one of `component_schemas()`."""
    return {"$ref": f"#/components/schemas/{name}"}


def closed(properties: dict[str, Any]) -> dict[str, Any]:
    """An object with exactly these properties, all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


def component_schemas() -> dict[str, Any]:
    """`components.schemas`: the JSON of errors, status, metadata, tf.Examples and `{"b64"}`."""
    tensor_info = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "dtype": {"type": "string"},
            "tensor_shape": {
                "type": "object",
                "properties": {
                    "dim": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"size": {"type": "string"}, "name": {"type": "string"}},
                        },
                    },
                    "unknown_rank": {"type": "boolean"},
                },
            },
        },
    }
    signature_def = {
        "type": "object",
        "required": ["inputs", "outputs", "method_name"],
        "properties": {
            "inputs": {"type": "object", "additionalProperties": tensor_info},
            "outputs": {"type": "object", "additionalProperties": tensor_info},
            "method_name": {"type": "string"},
            "defaults": {"type": "object"},
        },
    }
    feature = {"oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, ref("Base64")]}
    return {
        "Error": closed({"error": {"type": "string"}}),
        "Base64": closed({"b64": {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}}),
        "Example": {
            "type": "object",
            "description": "A tf.Example: a string or {b64} is a bytes feature, an integer int64, a number float",
            "additionalProperties": {"anyOf": [feature, {"type": "array", "items": feature}]},
        },
        "ModelStatus": closed(
            {
                "model_version_status": {
                    "type": "array",
                    "items": closed(
                        {
                            "version": {"type": "string", "pattern": "^[0-9]+$"},
                            "state": {
                                "enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
                            },
                            "status": closed(
                                {"error_code": {"type": "string"}, "error_message": {"type": "string"}}
                            ),
                        }
                    ),
                }
            }
        ),
        "ModelMetadata": closed(
            {
                "model_spec": closed(
                    {
                        "name": {"type": "string"},
                        "signature_name": {"type": "string"},
                        "version": {"type": "string"},
                    }
                ),
                "metadata": closed(
                    {
                        "signature_def": closed(
                            {"signature_def": {"type": "object", "additionalProperties": signature_def}}
                        )
                    }
                ),
            }
        ),
    }
