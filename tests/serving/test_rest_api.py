"""REST front end against a real `python -m serving` process (TFS_CONTRACT.md §3, §4, §6, §7).

One server per module, on loopback, serving TF Serving's own test models:

  half_plus_two   saved_model_half_plus_two_cpu        y = 0.5x + 2 (+ classify/regress signatures)
  hp2_versions    saved_model_half_plus_two_2_versions versions 123 and 124, labels stable/canary
  half_plus_three saved_model_half_plus_three          y = 0.5x + 3
  tf2             saved_model_half_plus_two_tf2_cpu    TF2 SavedModel

Requests go through urllib, whose default POST Content-Type is form data, as in
TF Serving's own Python tests: the server must not care.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import contract_server, copy_model, ours_only

pytestmark = pytest.mark.timeout(300)

HEADERS_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def server(tfs_testdata: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("rest_models")
    hp2 = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", root / "hp2")
    two = copy_model(tfs_testdata, "saved_model_half_plus_two_2_versions", root / "two")
    hp3 = copy_model(tfs_testdata, "saved_model_half_plus_three", root / "hp3")
    tf2 = copy_model(tfs_testdata, "saved_model_half_plus_two_tf2_cpu", root / "tf2")
    config = root / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "half_plus_two" base_path: "{hp2}" model_platform: "tensorflow" }}
  config {{
    name: "hp2_versions" base_path: "{two}" model_platform: "tensorflow"
    model_version_policy {{ all {{}} }}
    version_labels {{ key: "stable" value: 123 }}
    version_labels {{ key: "canary" value: 124 }}
  }}
  config {{ name: "half_plus_three" base_path: "{hp3}" model_platform: "tensorflow" }}
  config {{ name: "tf2" base_path: "{tf2}" model_platform: "tensorflow" }}
}}
"""
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true, path: "{PROMETHEUS_PATH}" }}\n')
    args = [
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        f"--monitoring_config_file={monitoring}",
        "--rest_api_enable_cors_support",
        "--file_system_poll_wait_seconds=0",
    ]
    with contract_server(args) as srv:
        yield srv


def call(srv, method: str, path: str, body: bytes | str | dict | None = None, headers=None):
    """One HTTP request; returns (status, headers, body bytes) for any status."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    request = urllib.request.Request(srv.rest_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def call_json(srv, method: str, path: str, body=None, headers=None):
    status, response_headers, raw = call(srv, method, path, body, headers)
    assert response_headers["Content-Type"] == "application/json", (path, raw)
    return status, json.loads(raw)


def expect_error(srv, method, path, body, status, *fragments):
    """Asserts a `{"error": ...}` answer with `status` whose message holds every fragment."""
    got_status, doc = call_json(srv, method, path, body)
    assert got_status == status, doc
    assert list(doc) == ["error"], doc
    for fragment in fragments:
        assert fragment in doc["error"], doc["error"]
    return doc["error"]


def example_b64(x: float) -> str:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    example.features.feature["x"].float_list.value.append(x)
    return base64.b64encode(example.SerializeToString()).decode("ascii")


# ---------------------------------------------------------------------------- status


def test_status_is_proto3_json_with_defaults(server):
    status, doc = call_json(server, "GET", "/v1/models/half_plus_two")
    assert status == 200
    assert doc == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert call_json(server, "GET", "/v1/models/half_plus_two/versions/123") == (status, doc)


def test_status_lists_versions_newest_first_and_label_route_lists_all(server):
    status, doc = call_json(server, "GET", "/v1/models/hp2_versions")
    assert status == 200
    assert [v["version"] for v in doc["model_version_status"]] == ["124", "123"]
    # GetModelStatus ignores labels: the label route lists every version.
    assert call_json(server, "GET", "/v1/models/hp2_versions/labels/stable") == (200, doc)
    _, one = call_json(server, "GET", "/v1/models/hp2_versions/versions/123")
    assert [v["version"] for v in one["model_version_status"]] == ["123"]


def test_status_errors(server):
    expect_error(server, "GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope")
    expect_error(
        server,
        "GET",
        "/v1/models/half_plus_two/versions/999",
        None,
        404,
        "Could not find version 999 of model half_plus_two",
    )
    expect_error(server, "GET", "/v1/models", None, 400, "Missing model name in request.")


# ---------------------------------------------------------------------------- routing


def test_routes_are_case_insensitive_and_names_percent_decoded(server):
    assert call_json(server, "GET", "/V1/MODELS/half_plus_two")[0] == 200
    assert call_json(server, "GET", "/v1/models/half%5Fplus%5Ftwo/Versions/123")[0] == 200
    status, doc = call_json(server, "POST", "/v1/models/half_plus_two:PREDICT", {"instances": [1.0]})
    assert (status, doc) == (200, {"predictions": [2.5]})
    status, doc = call_json(server, "GET", "/v1/models/hp2_versions/labels/%63anary/metadata")
    assert (status, doc["model_spec"]["version"]) == (200, "124")


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v1/models/half_plus_two:predict"),
        ("POST", "/v1/models/half_plus_two/metadata"),
        ("POST", "/v1/models/half_plus_two"),
        ("GET", "/v1/models/half_plus_two/version/123"),
        ("GET", "/v1/models/half_plus_two/label/stable"),
        ("GET", "/v1/models/half_plus_two/versions/abc"),
        ("GET", "/v1/models/half_plus_two/versions/123/labels/stable"),
        ("POST", "/v1/models/half_plus_two:explain"),
        ("PUT", "/v1/models/half_plus_two:predict"),
        ("DELETE", "/v1/models/half_plus_two"),
        ("GET", "/v1/models/"),
        ("GET", "/v1/other"),
    ],
)
def test_unmatched_v1_paths_are_malformed_requests(server, method, path):
    body = b"{}" if method in ("POST", "PUT") else None
    status, doc = call_json(server, method, path, body)
    assert status == 400
    assert doc == {"error": f"Malformed request: {method} {path}"}


def test_version_beyond_int64_is_400_with_empty_body(server):
    status, _headers, raw = call(server, "GET", "/v1/models/half_plus_two/versions/18446744073709551615")
    assert (status, raw) == (400, b"")
    status, _, raw = call(
        server,
        "POST",
        "/v1/models/half_plus_two/versions/9223372036854775808:predict",
        b'{"instances": [1.0]}',
    )
    assert (status, raw) == (400, b"")


def test_paths_outside_v1_are_plain_404(server):
    status, headers, _ = call(server, "GET", "/foo")
    assert status == 404
    assert headers["Content-Type"] != "application/json"
    assert call(server, "GET", "/v2/models/half_plus_two")[0] == 404


def test_every_v1_answer_is_json_with_cors_headers(server):
    for method, path, body in [
        ("GET", "/v1/models/half_plus_two", None),
        ("GET", "/v1/models/nope", None),
        ("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}'),
        ("POST", "/v1/models/half_plus_two:predict", b"not json"),
        ("GET", "/v1/nonsense", None),
    ]:
        _, headers, _ = call(server, method, path, body)
        assert headers["Content-Type"] == "application/json", path
        for name, value in HEADERS_CORS.items():
            assert headers[name] == value, (path, name)


def test_request_content_type_does_not_matter_and_gzip_bodies_are_read(server):
    body = b'{"instances": [1.0, 2.0]}'
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/json"):
        status, doc = call_json(
            server, "POST", "/v1/models/half_plus_two:predict", body, {"Content-Type": content_type}
        )
        assert (status, doc) == (200, {"predictions": [2.5, 3.0]})
    status, doc = call_json(
        server, "POST", "/v1/models/half_plus_two:predict", gzip.compress(body), {"Content-Encoding": "gzip"}
    )
    assert (status, doc) == (200, {"predictions": [2.5, 3.0]})
    status, doc = call_json(
        server, "POST", "/v1/models/half_plus_two:predict", b"not gzip at all", {"Content-Encoding": "gzip"}
    )
    assert status == 400 and "error" in doc


# ---------------------------------------------------------------------------- metadata


def _reference(tfs_testdata: Path, name: str) -> dict:
    return json.loads((tfs_testdata / "reference" / name).read_text())


def test_metadata_equals_tf_serving_reference(server, tfs_testdata):
    status, doc = call_json(server, "GET", "/v1/models/half_plus_two/metadata")
    assert status == 200
    expected = _reference(tfs_testdata, "half_plus_two_model_metadata.json")
    expected["model_spec"]["name"] = "half_plus_two"
    assert doc == expected

    status, doc = call_json(server, "GET", "/v1/models/hp2_versions/versions/123/metadata")
    expected = _reference(tfs_testdata, "saved_model_half_plus_two_2_versions_metadata.json")
    expected["model_spec"]["name"] = "hp2_versions"
    assert (status, doc) == (200, expected)


def test_metadata_latest_label_and_tf2_init_op(server):
    _, doc = call_json(server, "GET", "/v1/models/hp2_versions/metadata")
    assert doc["model_spec"] == {"name": "hp2_versions", "signature_name": "", "version": "124"}
    _, doc = call_json(server, "GET", "/v1/models/hp2_versions/labels/stable/metadata")
    assert doc["model_spec"]["version"] == "123"
    _, doc = call_json(server, "GET", "/v1/models/tf2/metadata")
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    assert "__saved_model_init_op" in signatures and "serving_default" in signatures
    # Default fields are printed for every signature: empty maps and strings too.
    assert all("defaults" in sig and "method_name" in sig for sig in signatures.values())
    assert signatures["__saved_model_init_op"]["inputs"] == {}


def test_metadata_errors(server):
    expect_error(
        server, "GET", "/v1/models/nope/metadata", None, 404, "Servable not found for request: Latest(nope)"
    )
    expect_error(
        server,
        "GET",
        "/v1/models/half_plus_two/versions/999/metadata",
        None,
        404,
        "Servable not found for request: Specific(half_plus_two, 999)",
    )
    expect_error(
        server,
        "GET",
        "/v1/models/hp2_versions/labels/nope/metadata",
        None,
        400,
        "Unrecognized servable version label: nope",
    )


# ---------------------------------------------------------------------------- predict


def test_predict_row_and_columnar(server):
    path = "/v1/models/half_plus_two:predict"
    assert call_json(server, "POST", path, {"instances": [1.0, 2.0, 5.0]}) == (
        200,
        {"predictions": [2.5, 3.0, 4.5]},
    )
    assert call_json(server, "POST", path, {"instances": [{"x": 1.0}, {"x": 3.0}]}) == (
        200,
        {"predictions": [2.5, 3.5]},
    )
    assert call_json(server, "POST", path, {"inputs": {"x": [[1.0], [2.0]]}}) == (
        200,
        {"outputs": [[2.5], [3.0]]},
    )
    assert call_json(server, "POST", path, {"inputs": [1.0, 2.0]}) == (200, {"outputs": [2.5, 3.0]})
    assert call_json(server, "POST", path, {"inputs": 3.0}) == (200, {"outputs": 3.5})
    # Extra names in the columnar object are ignored, as TF Serving does.
    assert call_json(server, "POST", path, {"inputs": {"x": [1.0], "extra": "?"}}) == (
        200,
        {"outputs": [2.5]},
    )


def test_predict_versions_labels_and_other_models(server):
    for path in (
        "/v1/models/hp2_versions/versions/123:predict",
        "/v1/models/hp2_versions/labels/canary:predict",
        "/v1/models/tf2:predict",
    ):
        assert call_json(server, "POST", path, {"instances": [1.0]}) == (200, {"predictions": [2.5]})
    assert call_json(server, "POST", "/v1/models/half_plus_three:predict", {"instances": [1.0]}) == (
        200,
        {"predictions": [3.5]},
    )


def test_predict_floats_look_like_floats_and_ints_are_accepted(server):
    status, _, raw = call(server, "POST", "/v1/models/half_plus_two:predict", b'{"instances": [2, 0]}')
    assert status == 200
    assert raw.replace(b" ", b"") == b'{"predictions":[3.0,2.0]}'
    # float32 results are written in their shortest float32 form, not as the double
    # they widen to (0.100000024, not 0.10000002384185791).
    status, _, raw = call(server, "POST", "/v1/models/half_plus_two:predict", b'{"instances": [-3.8, 0.2]}')
    results = [np.float32(v) * np.float32(0.5) + np.float32(2.0) for v in (-3.8, 0.2)]
    expected = "[" + ",".join(str(r) for r in results) + "]"
    assert raw.replace(b" ", b"").decode() == '{"predictions":' + expected + "}"


def test_predict_nan_and_infinity_tokens(server):
    status, _, raw = call(
        server, "POST", "/v1/models/half_plus_two:predict", b'{"instances": [NaN, Infinity, -Infinity, 1.0]}'
    )
    assert status == 200
    assert raw.replace(b" ", b"") == b'{"predictions":[NaN,Infinity,-Infinity,2.5]}'


def test_predict_b64_string_input(server):
    body = {"signature_name": "classify_x_to_y", "instances": [{"b64": example_b64(2.0)}]}
    assert call_json(server, "POST", "/v1/models/half_plus_two:predict", body) == (
        200,
        {"predictions": [[3.0]]},
    )
    bad = {"signature_name": "classify_x_to_y", "instances": [{"b64": "not base64!"}]}
    expect_error(server, "POST", "/v1/models/half_plus_two:predict", bad, 400, "Unable to base64 decode")


@pytest.mark.parametrize(
    "body,fragments",
    [
        (b"{not json", ["JSON Parse error"]),
        (b"", ["JSON Parse error: The document is empty"]),
        (b"[1.0]", ["Is not object"]),
        (b'{"signature_name": 5, "instances": [1.0]}', ["'signature_name' key must be a string value."]),
        (b'{"foo": [1.0]}', ["Missing 'inputs' or 'instances' key"]),
        (b'{"instances": [1.0], "inputs": [1.0]}', ["only one of 'inputs' or 'instances'"]),
        (b'{"instances": []}', ["No values in 'instances' array"]),
        (b'{"instances": 1.0}', ["to be an list/array"]),
        (b'{"instances": ["a"]}', ['"a" Type: String is not of expected type: float']),
        (b'{"instances": [true]}', ["is not of expected type: float"]),
        (b'{"instances": [null]}', ["Type: Null is not of expected type: float"]),
        (b'{"instances": [[1.0], [1.0, 2.0]]}', ["Expecting tensor size: 1 but got: 2"]),
        (b'{"inputs": [[1.0], [1.0, 2.0]]}', ["Encountered list at unexpected size: 2"]),
        (b'{"inputs": [[1.0], 2.0]}', ["found at incorrect level"]),
        (b'{"instances": [{"y": 1.0}]}', ["does not have named input: y"]),
        (b'{"instances": [{"x": 1.0}, 2.0]}', ["Expecting object but got list at item 1"]),
        (b'{"inputs": {"y": [1.0]}}', ["Missing named input: x in 'inputs' object."]),
        (b'{"instances": [16777217]}', ["without loss of precision"]),
        (
            b'{"signature_name": "nope", "instances": [1.0]}',
            ['Serving signature name: "nope" not found in signature def'],
        ),
    ],
)
def test_predict_bad_requests_are_400(server, body, fragments):
    expect_error(server, "POST", "/v1/models/half_plus_two:predict", body, 400, *fragments)


def test_predict_unknown_model_version_label(server):
    body = {"instances": [1.0]}
    expect_error(
        server, "POST", "/v1/models/nope:predict", body, 404, "Servable not found for request: Latest(nope)"
    )
    expect_error(
        server,
        "POST",
        "/v1/models/half_plus_two/versions/7:predict",
        body,
        404,
        "Servable not found for request: Specific(half_plus_two, 7)",
    )
    expect_error(
        server,
        "POST",
        "/v1/models/hp2_versions/labels/nope:predict",
        body,
        400,
        "Unrecognized servable version label: nope",
    )


def test_predict_error_precedence(server):
    # JSON parsing and the signature_name type come before the model lookup...
    expect_error(server, "POST", "/v1/models/nope:predict", b"{bad", 400, "JSON Parse error")
    expect_error(
        server,
        "POST",
        "/v1/models/nope:predict",
        b'{"signature_name": 1}',
        400,
        "'signature_name' key must be a string value.",
    )
    # ...the body's shape and types after it (and after the signature lookup).
    expect_error(server, "POST", "/v1/models/nope:predict", b'{"instances": []}', 404, "Latest(nope)")
    expect_error(
        server,
        "POST",
        "/v1/models/half_plus_two:predict",
        b'{"signature_name": "nope", "instances": []}',
        400,
        "Serving signature name",
    )


def test_predict_strings_that_are_not_utf8(server):
    # Bytes that are not UTF-8 reach the model unchanged (as in TF Serving); a float
    # input rejects the string by type.
    expect_error(
        server,
        "POST",
        "/v1/models/half_plus_two:predict",
        b'{"instances": ["\xff\xfe"]}',
        400,
        "is not of expected type: float",
    )


def test_predict_non_utf8_serialized_example_is_400(server):
    expect_error(
        server,
        "POST",
        "/v1/models/half_plus_two:predict",
        b'{"signature_name": "classify_x_to_y", "instances": ["\xff\xfe"]}',
        400,
    )


# ---------------------------------------------------------------------------- classify / regress


def test_classify_and_regress(server):
    base = "/v1/models/half_plus_two"
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}, {"x": 4.0}]}
    assert call_json(server, "POST", base + ":classify", body) == (
        200,
        {"results": [[["", 3.0]], [["", 4.0]]]},
    )
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert call_json(server, "POST", base + ":regress", body) == (200, {"results": [3.0]})
    body = {"signature_name": "regress_x_to_y2", "examples": [{"x": 2.0}]}
    assert call_json(server, "POST", base + ":regress", body) == (200, {"results": [4.0]})
    # half_plus_three's regress input is declared DT_FLOAT but is the Example placeholder.
    body = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 2.0}]}
    assert call_json(server, "POST", "/v1/models/half_plus_three:regress", body) == (200, {"results": [4.0]})


def test_classify_context_is_merged_under_each_example(server):
    path = "/v1/models/half_plus_two:regress"
    body = {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}, {"x": 4.0}]}
    assert call_json(server, "POST", path, body) == (200, {"results": [3.0, 4.0]})
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": {"b64": ""}}]}
    assert call_json(server, "POST", path, body)[0] == 400  # bytes feature for a float model


def test_classify_integer_features_are_int64(server):
    # JSON 2 is an int64 feature: the float-parsing model rejects it; 2.0 works.
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]}
    status, doc = call_json(server, "POST", "/v1/models/half_plus_two:regress", body)
    assert status == 400 and "error" in doc


@pytest.mark.parametrize(
    "body,fragments",
    [
        (b'{"signature_name": "regress_x_to_y"}', ["key 'examples' is expected and was not found"]),
        (b'{"examples": {"x": 1.0}}', ["Expecting 'examples' value to be an list/array"]),
        (b'{"examples": []}', ["'examples' value is an empty array"]),
        (b'{"examples": [1.0]}', ["Example must be JSON object but got JSON Number"]),
        (b'{"examples": [{"x": null}]}', ["Feature: x has element with unexpected JSON type: Null"]),
        (b'{"examples": [{"x": [[1.0]]}]}', ["Feature: x has element with unexpected JSON type: Array"]),
        (b'{"examples": [{"x": {"a": 1}}]}', ["unexpected JSON type: Object"]),
        (
            b'{"examples": [{"x": [1.0, "a"]}]}',
            ["Unexpected element type in feature: x expecting type: float"],
        ),
        (b'{"examples": [{"x": [1, 2.0]}]}', ["Unexpected element type in feature: x expecting type: int64"]),
        (b'{"examples": [{"x": {"b64": "%%%"}}]}', ["Unable to base64 decode"]),
        (b'{"context": [1], "examples": [{"x": 1.0}]}', ["Example must be JSON object but got JSON Array"]),
        (
            b'{"signature_name": "nope", "examples": [{"x": 1.0}]}',
            ["No signature was found with the name: nope"],
        ),
        (b"{nope", ["JSON Parse error"]),
    ],
)
@pytest.mark.parametrize("verb", ["classify", "regress"])
def test_classify_regress_bad_requests_are_400(server, verb, body, fragments):
    expect_error(server, "POST", f"/v1/models/half_plus_two:{verb}", body, 400, *fragments)


def test_classify_examples_are_built_before_model_lookup(server):
    expect_error(server, "POST", "/v1/models/nope:classify", b'{"examples": []}', 400, "empty array")
    expect_error(
        server, "POST", "/v1/models/nope:classify", b'{"examples": [{"x": 1.0}]}', 404, "Latest(nope)"
    )


def test_classify_non_utf8_feature_bytes_pass_through(server):
    body = b'{"signature_name": "classify_x_to_y", "examples": [{"x": 2.0, "note": "\xff\xfe"}]}'
    assert call_json(server, "POST", "/v1/models/half_plus_two:classify", body) == (
        200,
        {"results": [[["", 3.0]]]},
    )


# ---------------------------------------------------------------------------- size


def test_ten_thousand_instances(server):
    values = [float(i) for i in range(10_000)]
    status, doc = call_json(server, "POST", "/v1/models/half_plus_two:predict", {"instances": values})
    assert status == 200
    assert doc["predictions"] == [0.5 * v + 2 for v in values]
    examples = [{"x": float(i)} for i in range(10_000)]
    status, doc = call_json(
        server,
        "POST",
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "examples": examples},
    )
    assert status == 200 and len(doc["results"]) == 10_000 and doc["results"][10] == 7.0


def test_ten_megabyte_documents(server):
    text = "lorem ipsum " * (10 * 1024 * 1024 // 12)
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0, "text": text}]}
    assert call_json(server, "POST", "/v1/models/half_plus_two:classify", body) == (
        200,
        {"results": [[["", 3.0]]]},
    )
    values = [1.25] * (10 * 1024 * 1024 // 6)
    status, doc = call_json(server, "POST", "/v1/models/half_plus_two:predict", {"inputs": values})
    assert status == 200 and len(doc["outputs"]) == len(values) and doc["outputs"][0] == 2.625


def test_body_over_the_limit_is_413_and_server_keeps_serving(server):
    ours_only(server)  # TF Serving sets no body limit; 413 above 256 MiB is textserve's own guard
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    connection.putrequest("POST", "/v1/models/half_plus_two:predict")
    connection.putheader("Content-Length", str(300 * 1024 * 1024))
    connection.endheaders()
    connection.send(b'{"instances": [')
    response = connection.getresponse()
    doc = json.loads(response.read())
    connection.close()
    assert response.status == 413
    assert response.getheader("Content-Type") == "application/json"
    assert "larger than the REST limit" in doc["error"]
    assert call_json(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]}) == (
        200,
        {"predictions": [2.5]},
    )


# ---------------------------------------------------------------------------- monitoring


def test_prometheus_page_counts_rest_requests(server):
    call_json(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    call_json(server, "POST", "/v1/models/nope:predict", {"instances": [1.0]})
    status, headers, raw = call(server, "GET", PROMETHEUS_PATH)
    assert status == 200
    assert headers["Content-Type"] == "text/plain"
    page = raw.decode("utf-8")
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}' in page
    assert ':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"}' in page
    assert 'request_latency_count{model_name="half_plus_two",API="predict",entrypoint="REST"}' in page


def test_server_still_serves_after_bad_requests(server):
    assert call_json(server, "GET", "/v1/models/half_plus_two")[0] == 200
    assert call_json(server, "POST", "/v1/models/half_plus_two:predict", {"instances": [3.0]}) == (
        200,
        {"predictions": [3.5]},
    )
    if hasattr(server, "proc"):
        assert server.proc.poll() is None


def test_expect_100_continue_is_answered_before_the_body(server):
    # curl sends `Expect: 100-continue` for large bodies and waits for this line.
    import socket

    body = b'{"instances": [1.0]}'
    with socket.create_connection(
        (urllib.parse.urlsplit(server.rest_url).hostname, server.rest_port), timeout=30
    ) as sock:
        sock.sendall(
            b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(b'{"predictions":[2.5]}')


def test_cors_preflight(server):
    status, headers, _raw = call(server, "OPTIONS", "/v1/models/half_plus_two:predict")
    assert status == 200
    for name, value in HEADERS_CORS.items():
        assert headers[name] == value
