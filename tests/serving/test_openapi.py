"""The OpenAPI document: one route table with the router, schemas from signatures, schemathesis.

One server for the module, on loopback, serving two kinds of model so the
schemas are checked generically: the tiny text classifier (string in; label,
score, probabilities out; a classify signature; labels `stable`/`canary`) and
TF Serving's half_plus_two (floats, several predict/classify/regress signatures).
schemathesis then sends property-based requests built from the served document
and checks every answer against it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from serving import openapi, rest, routes
from tests.serving.conftest import copy_model, running_server

pytestmark = pytest.mark.timeout(600)

REPO_ROOT = Path(__file__).resolve().parents[2]
STATIC_COPY = REPO_ROOT / "docs" / "openapi.json"
# Requests per operation: ~30 operations, so a few hundred requests in all.
EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openapi_models")


@pytest.fixture(scope="module")
def served(tiny_run, tfs_testdata, models_root):
    root = models_root
    hp2 = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", root / "hp2")
    tiny = tiny_run.version_dir.parent.resolve()
    config = root / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{
    name: "tiny" base_path: "{tiny}" model_platform: "tensorflow"
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 1 }}
  }}
  config {{ name: "half_plus_two" base_path: "{hp2}" model_platform: "tensorflow" }}
}}
"""
    )
    args = [
        f"--model_config_file={config}",
        "--file_system_poll_wait_seconds=0",
        "--allow_version_labels_for_unavailable_models",  # labels in the startup config (as in TF Serving)
        # The request log is named but its rate is 0 (the default): nothing may be written.
        f"--request_log_file={root / 'requests.jsonl'}",
        "--request_log_sample_rate=0",
    ]
    with running_server(args) as server:
        yield server


@pytest.fixture(scope="module")
def live_document(served):
    with urllib.request.urlopen(f"{served.rest_url}{routes.OPENAPI_PATH}", timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


def _route_of(method: str, path: str) -> tuple[str, str, str | None, str | None] | None:
    """What the REST router makes of a request: (operation, model, version, label), or None."""
    if method == "POST":
        match = rest._PREDICTION_PATH.fullmatch(path)
        if match:
            name, version, label, verb = match.groups()
            return verb, name, version, label
        return None
    match = rest._MODEL_PATH.fullmatch(path)
    if match:
        name, version, label, metadata = match.groups()
        return metadata or "status", name, version, label
    return None


def test_router_uses_the_route_table():
    assert rest._PREDICTION_PATH is routes.PREDICTION_PATH
    assert rest._MODEL_PATH is routes.MODEL_PATH
    assert rest._V1_PATH is routes.V1_PATH


@pytest.mark.parametrize("route", routes.MODEL_ROUTES, ids=lambda r: r.operation)
@pytest.mark.parametrize("target", routes.TARGETS)
def test_every_documented_route_is_routed_to_its_operation(route, target):
    template = routes.model_path("m", target, route)
    path = template.replace("{version}", "7").replace("{label}", "canary")
    version = "7" if "{version}" in target else None
    label = "canary" if "{label}" in target else None
    assert _route_of(route.method, path) == (route.operation, "m", version, label)
    # The other method never reaches the operation (TF Serving: 400 Malformed request).
    other = "GET" if route.method == "POST" else "POST"
    assert _route_of(other, path) is None or _route_of(other, path)[0] != route.operation


def test_every_routed_path_shape_is_in_the_table():
    # Paths the router accepts that the table does not list would be undocumented routes.
    table = {routes.model_path("m", t, r) for t in routes.TARGETS for r in routes.MODEL_ROUTES}
    for method, path in [
        ("GET", "/v1/models/m"),
        ("GET", "/v1/models/m/versions/{version}/metadata"),
        ("GET", "/v1/models/m/labels/{label}"),
        ("POST", "/v1/models/m/labels/{label}:regress"),
    ]:
        concrete = path.replace("{version}", "3").replace("{label}", "x")
        assert _route_of(method, concrete) is not None
        assert path in table


def test_live_document_lists_every_route_for_every_model(live_document):
    paths = live_document["paths"]
    assert live_document["openapi"].startswith("3.1")
    assert [tag["name"] for tag in live_document["tags"]] == ["half_plus_two", "tiny"]
    for model, verbs in [
        ("tiny", {"predict", "classify"}),
        ("half_plus_two", {"predict", "classify", "regress"}),
    ]:
        for target in routes.TARGETS:
            for route in routes.MODEL_ROUTES:
                path = routes.model_path(model, target, route)
                if route.operation in ("status", "metadata") or route.operation in verbs:
                    assert route.method.lower() in paths[path], path
                else:
                    assert path not in paths  # no regress signature: not documented
    assert routes.PLAYGROUND_PATH not in paths  # the playground is off here
    assert routes.OPENAPI_PATH in paths


def test_text_model_schema_comes_from_its_signature(live_document):
    predict = live_document["paths"]["/v1/models/tiny:predict"]["post"]
    request = predict["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    rows = next(r for r in request if "instances" in r["properties"])
    assert rows["properties"]["instances"]["items"] == {
        "oneOf": [{"type": "string"}, {"$ref": "#/components/schemas/Base64"}]
    }
    answer = predict["responses"]["200"]["content"]["application/json"]["schema"]["oneOf"]
    predictions = next(a for a in answer if "predictions" in a["properties"])["properties"]["predictions"]
    row = predictions["items"]
    assert sorted(row["required"]) == ["class_id", "label", "probabilities", "score"]
    assert row["properties"]["label"] == {"type": "string"}
    assert row["properties"]["score"] == {"type": "number"}
    # Four classes in the tiny corpus: the probabilities row is exactly four numbers.
    probabilities = row["properties"]["probabilities"]
    assert (probabilities["minItems"], probabilities["maxItems"]) == (4, 4)
    label_parameter = live_document["paths"]["/v1/models/tiny/labels/{label}:predict"]["parameters"][0]
    assert label_parameter["schema"]["enum"] == ["canary", "stable"]
    version_parameter = live_document["paths"]["/v1/models/tiny/versions/{version}"]["parameters"][0]
    assert version_parameter["schema"]["examples"] == [1]


def test_numeric_model_schema_comes_from_its_signatures(live_document):
    paths = live_document["paths"]
    predict = paths["/v1/models/half_plus_two:predict"]["post"]
    variants = predict["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    # One row and one columnar variant per predict-method signature.
    assert len(variants) == 2
    rows = next(v for v in variants if "instances" in v["properties"])
    # x is float [-1, 1]: each row is a list of exactly one number.
    row = rows["properties"]["instances"]["items"]
    assert (row["type"], row["minItems"], row["maxItems"]) == ("array", 1, 1)
    assert row["items"]["type"] == "number"
    regress = paths["/v1/models/half_plus_two:regress"]["post"]["requestBody"]["content"]
    names = regress["application/json"]["schema"]["properties"]["signature_name"]["enum"]
    assert "regress_x_to_y" in names and "serving_default" not in names
    assert regress["application/json"]["schema"]["required"] == ["examples", "signature_name"]


def test_static_copy_is_current(bbc_run):
    """docs/openapi.json is what scripts/regenerate_openapi.py writes for the BBC export."""
    expected = openapi.saved_model_document("bbc_news", bbc_run.version_dir)
    assert STATIC_COPY.is_file(), "docs/openapi.json is missing: run scripts/regenerate_openapi.py"
    assert json.loads(STATIC_COPY.read_text("utf-8")) == expected, (
        "docs/openapi.json is stale: run python scripts/regenerate_openapi.py --export RUN/export"
    )


def test_live_document_matches_the_offline_one(served, live_document, tiny_run):
    offline = openapi.saved_model_document("tiny", tiny_run.version_dir, server_url="/")
    tiny_paths = {p: v for p, v in live_document["paths"].items() if p.startswith("/v1/models/tiny")}
    offline_paths = {p: v for p, v in offline["paths"].items() if p.startswith("/v1/models/tiny")}
    # Same routes and schemas; only the label parameters differ (the offline copy has no config).
    assert tiny_paths.keys() == offline_paths.keys()
    for path in tiny_paths:
        if "{label}" not in path:
            assert tiny_paths[path] == offline_paths[path], path


def test_playground_is_off_by_default(served):
    for path in (routes.PLAYGROUND_PATH, routes.PLAYGROUND_ASSET_PREFIX + "playground.js"):
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(f"{served.rest_url}{path}", timeout=30)
        assert raised.value.code == 404
        assert raised.value.headers["Content-Type"] != "application/json"  # TF Serving's plain 404


def test_schemathesis_finds_no_failure(served, live_document):
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extra")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_dict(live_document)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    statuses: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,  # the same requests every run
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case):
            response = case.call_and_validate(base_url=served.rest_url, checks=checks, timeout=30)
            statuses.setdefault(case.operation.label, []).append(response.status_code)

        check()
    assert len(statuses) == 27 + 1  # tiny 12, half_plus_two 15, the document itself
    # Requests the document calls valid are answered, not only refused. (half_plus_two's
    # classify/regress need a feature `x` that no signature names, so they may all be 400.)
    for label in [
        "GET /v1/models/tiny",
        "GET /v1/models/tiny/metadata",
        "GET /v1/models/tiny/labels/{label}/metadata",
        "POST /v1/models/tiny:predict",
        "POST /v1/models/tiny/labels/{label}:predict",
        "POST /v1/models/tiny:classify",
        "GET /v1/models/half_plus_two/metadata",
        "POST /v1/models/half_plus_two:predict",
    ]:
        assert 200 in statuses[label], (label, statuses[label])


def test_sample_rate_zero_logged_none_of_these_requests(served, models_root):
    # Runs after schemathesis' few hundred requests to the same server.
    assert (models_root / "models.config").is_file()
    assert not (models_root / "requests.jsonl").exists()
