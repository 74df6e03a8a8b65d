"""Property-based fuzzing of a real server on loopback: malformed input never crashes it.

Hypothesis builds PredictRequests around arbitrary TensorProtos (any dtype
number, shapes from empty to absurd, typed values, raw `tensor_content`),
Classify/Regress requests with arbitrary Examples, raw bytes posing as
protobuf messages, and REST bodies (JSON of any shape aimed at every route,
invalid UTF-8, NaN tokens, deep nesting). Every answer must be an answer: a
success, or a client error — never INTERNAL/UNKNOWN over gRPC nor a 5xx over
REST — the process must stay up, and its RSS must stay bounded.

The example counts are bounded so the file runs in well under a minute (plus
the server's start-up); for a long run set `TEXTSERVE_FUZZ_EXAMPLES` (default
200; each property runs a multiple of it). Examples are derandomized: a
failure reproduces on every run.
"""

from __future__ import annotations

import http.client
import json
import os

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.serving.conftest import copy_model, running_server

# Each property runs a multiple of this many examples.
_N = int(os.environ.get("TEXTSERVE_FUZZ_EXAMPLES", "200"))
_FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

MODEL = "hp2"
# A client error, not a server fault; INTERNAL/UNKNOWN/DATA_LOSS would be.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# RSS growth allowed over one fuzzing test (decoded tensors are capped at 16 MiB
# each; glibc keeps some freed memory).
MAX_RSS_GROWTH_KIB = 256 * 1024


@pytest.fixture(scope="module")
def server(tfs_testdata, tmp_path_factory):
    base = copy_model(tfs_testdata, "saved_model_half_plus_two_cpu", tmp_path_factory.mktemp("fuzz") / "hp2")
    with running_server([f"--model_name={MODEL}", f"--model_base_path={base}"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_send_message_length", 64 << 20)]
    ) as opened:
        yield opened


@pytest.fixture
def bounded(server):
    """Checks the process is alive and its RSS grew less than the bound over the test."""
    before = _rss_kib(server.proc.pid)
    yield
    assert server.proc.poll() is None, "the server died:\n" + server.stderr_text()[-3000:]
    grown = _rss_kib(server.proc.pid) - before
    assert grown < MAX_RSS_GROWTH_KIB, f"RSS grew by {grown} KiB"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _assert_answered(call, request, what: str) -> None:
    try:
        call(request, timeout=60)
    except grpc.RpcError as e:
        assert e.code() in CLIENT_ERRORS, f"{what} answered {e.code().name}: {e.details()}"


# ---- strategies: gRPC ----------------------------------------------------------------------------

# Each dtype with the typed field TensorFlow reads it from, and values for that field.
# Integers near the narrow types' ranges as often as anywhere in int32.
_I32 = st.integers(-70000, 70000) | st.integers(-(2**31), 2**31 - 1)
_FIELDS = {
    "float_val": st.floats(width=32),
    "double_val": st.floats(),
    "int_val": _I32,
    "int64_val": st.integers(-(2**63), 2**63 - 1),
    "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
    "bool_val": st.booleans(),
    "string_val": st.binary(max_size=40),
    "half_val": _I32,
    "scomplex_val": st.floats(width=32),
    "dcomplex_val": st.floats(),
}
_FIELD_OF = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}
# Mostly the dtypes requests carry; sometimes any enum value, or none at all.
_DTYPES = st.one_of(
    st.sampled_from(sorted(_FIELD_OF)),
    st.sampled_from(sorted(_FIELD_OF)),
    st.sampled_from(sorted(types_pb2.DataType.values())),
    st.integers(-5, 400),
)
# Shapes: none (a scalar), small, or wild — negative, absurd (a tiny message
# declaring terabytes), overflowing int64.
_SMALL_DIMS = st.lists(st.integers(0, 4), max_size=4)
_WILD_DIMS = st.lists(
    st.integers(0, 4) | st.integers(0, 1 << 40) | st.integers(-3, -1) | st.just((1 << 63) - 1), max_size=5
)
_SHAPES = st.one_of(st.just([]), _SMALL_DIMS, _SMALL_DIMS, _WILD_DIMS)


@st.composite
def tensor_protos(draw) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto()
    tensor.dtype = draw(_DTYPES)
    for size in draw(_SHAPES):
        tensor.tensor_shape.dim.add().size = size
    tensor.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    fill = draw(st.sampled_from(["own", "own", "own", "other", "content", "none"]))
    if fill == "content":
        tensor.tensor_content = draw(st.binary(max_size=64))
    elif fill != "none":
        field = _FIELD_OF.get(tensor.dtype, "float_val")
        if fill == "other":
            field = draw(st.sampled_from(sorted(_FIELDS)))
        getattr(tensor, field).extend(draw(st.lists(_FIELDS[field], min_size=1, max_size=8)))
    return tensor


@st.composite
def predict_requests(draw) -> predict_pb2.PredictRequest:
    """Mostly well-addressed requests (so the tensors reach decoding and the model), some wild."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    aliases = ["x"]
    if draw(st.integers(0, 4)) == 0:
        request.model_spec.name = draw(st.sampled_from([MODEL, "", "missing", "h\np2"]))
        choice = draw(st.sampled_from(["none", "version", "label"]))
        if choice == "version":
            request.model_spec.version.value = draw(st.integers(-(2**63), 2**63 - 1))
        elif choice == "label":
            request.model_spec.version_label = draw(st.text(max_size=10))
        request.model_spec.signature_name = draw(
            st.sampled_from(["", "serving_default", "regress_x_to_y", "classify_x_to_y", "nope"])
        )
        aliases = draw(st.lists(st.sampled_from(["x", "y", "inputs", "", "x2"]), max_size=3, unique=True))
        request.output_filter.extend(draw(st.lists(st.sampled_from(["y", "nope", ""]), max_size=2)))
    for alias in aliases:
        request.inputs[alias].CopyFrom(draw(tensor_protos()))
    return request


_FEATURE_VALUES = st.one_of(
    st.lists(st.floats(width=32), max_size=4).map(lambda v: ("float_list", v)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(lambda v: ("int64_list", v)),
    st.lists(st.binary(max_size=16), max_size=4).map(lambda v: ("bytes_list", v)),
)


@st.composite
def examples(draw) -> example_pb2.Example:
    example = example_pb2.Example()
    for key in draw(st.lists(st.sampled_from(["x", "x2", "y", "", "é"]), max_size=3, unique=True)):
        kind, values = draw(_FEATURE_VALUES)
        getattr(example.features.feature[key], kind).value.extend(values)
    return example


@st.composite
def example_requests(draw, request_class):
    request = request_class()
    request.model_spec.name = draw(st.sampled_from([MODEL, MODEL, "missing"]))
    request.model_spec.signature_name = draw(
        st.sampled_from(
            ["", "regress_x_to_y", "classify_x_to_y", "regress_x2_to_y3", "serving_default", "nope"]
        )
    )
    rows = draw(st.lists(examples(), max_size=4))
    if draw(st.booleans()):
        request.input.example_list.examples.extend(rows)
    else:
        request.input.example_list_with_context.examples.extend(rows)
        request.input.example_list_with_context.context.CopyFrom(draw(examples()))
    return request


# ---- gRPC properties ------------------------------------------------------------------------------


@settings(_FUZZ, max_examples=_N * 3 // 2)
@given(request=predict_requests())
def test_grpc_predict_never_fails_as_a_server_fault(channel, bounded, request):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    _assert_answered(stub.Predict, request, f"Predict {request}")


@settings(_FUZZ, max_examples=_N * 2 // 5)
@given(
    classify=example_requests(classification_pb2.ClassificationRequest),
    regress=example_requests(regression_pb2.RegressionRequest),
)
def test_grpc_classify_and_regress_never_fail_as_a_server_fault(channel, bounded, classify, regress):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    _assert_answered(stub.Classify, classify, f"Classify {classify}")
    _assert_answered(stub.Regress, regress, f"Regress {regress}")


@settings(_FUZZ, max_examples=_N * 2 // 5)
@given(
    method=st.sampled_from(["Predict", "Classify", "Regress", "GetModelMetadata", "MultiInference"]),
    payload=st.binary(max_size=200),
)
def test_grpc_raw_bytes_never_crash_the_server(channel, bounded, method, payload):
    call = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
    try:
        call(payload, timeout=60)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.INTERNAL:
            # What every gRPC server (TF Serving's C++ one too) answers for bytes
            # that do not parse as the request message.
            assert "deserializ" in (e.details() or "").lower(), e.details()
        else:
            assert e.code() in CLIENT_ERRORS, f"{method} answered {e.code().name}: {e.details()}"


# ---- REST ---------------------------------------------------------------------------------------

_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.builds(lambda t: {"b64": t}, st.text(max_size=12))
)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
_KEYS = st.sampled_from(["instances", "inputs", "signature_name", "examples", "context", "outputs", "x"])
_BODIES = st.one_of(
    st.dictionaries(_KEYS, _JSON, max_size=3).map(lambda d: json.dumps(d).encode()),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=80),
    st.sampled_from(
        [
            b'{"instances": [NaN, Infinity, -Infinity]}',
            b'{"instances": [1.0e999]}',
            b'{"inputs": {"x": [[[[1.0]]]]}}',
            b'{"instances": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
            b'{"instances": "\xff\xfe"}',
            b'{"examples": [{"x": [1.0, "a"]}]}',
            b'{"examples": [{"x": {"b64": "!!"}}], "context": []}',
            b"",
        ]
    ),
)
_PATHS = st.sampled_from(
    [
        f"/v1/models/{MODEL}:predict",
        f"/v1/models/{MODEL}:classify",
        f"/v1/models/{MODEL}:regress",
        f"/v1/models/{MODEL}/versions/123:predict",
        f"/v1/models/{MODEL}/versions/99999999999999999999:predict",
        f"/v1/models/{MODEL}/labels/x%0a:predict",
        "/v1/models/missing:predict",
        f"/v1/models/{MODEL}/metadata",
        f"/v1/models/{MODEL}:explain",
    ]
)


@pytest.fixture(scope="module")
def rest(server):
    connection = _Rest(server.rest_port)
    yield connection
    connection.close()


class _Rest:
    """One kept-alive HTTP connection, reopened when the server closes it."""

    def __init__(self, port: int):
        self._port = port
        self._connection: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, gzip: bool = False) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        for attempt in range(2):
            if self._connection is None:
                self._connection = http.client.HTTPConnection("127.0.0.1", self._port, timeout=60)
            try:
                self._connection.request("POST", path, body=body, headers=headers)
                response = self._connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


@settings(_FUZZ, max_examples=_N * 3 // 2)
@given(path=_PATHS, body=_BODIES, gzip=st.booleans())
def test_rest_bodies_never_get_a_5xx(rest, bounded, path, body, gzip):
    status, raw = rest.post(path, body, gzip=gzip)
    assert status < 500, f"POST {path} {body[:200]!r} (gzip header: {gzip}) answered {status}: {raw[:500]!r}"
    if status >= 400 and raw:  # an int64-overflowing version is a 400 with no body, as in TF Serving
        assert set(json.loads(raw)) == {"error"}, raw[:500]


# ---- what the fuzzing and the soak benchmark found, pinned ----------------------------------------


def test_unparseable_grpc_requests_do_not_grow_the_server(server, channel):
    # grpcio's server keeps ~19 KiB per call whose request deserializer raises
    # (reproduced without TensorFlow on grpcio 1.85); a server must not let
    # garbage requests grow it: 5,000 of them would add ~95 MiB.
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
    payload = b"\xff" * 100  # not a protobuf: a field tag no PredictRequest has, truncated
    for _ in range(200):  # warm-up: thread pools, allocator arenas
        with pytest.raises(grpc.RpcError):
            call(payload, timeout=30)
    before = _rss_kib(server.proc.pid)
    for _ in range(5000):
        with pytest.raises(grpc.RpcError):
            call(payload, timeout=30)
    grown = _rss_kib(server.proc.pid) - before
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB over 5,000 unparseable requests"


def test_rest_connection_survives_a_body_that_fails_to_gunzip(server):
    # A 400 must either say `Connection: close` or leave the kept-alive
    # connection usable: a pooled client's next request must not be reset.
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    connection.request("POST", f"/v1/models/{MODEL}:predict", body=b'{"instances": [1.0]}', headers=headers)
    response = connection.getresponse()
    assert response.status == 400
    response.read()
    closes = (response.getheader("Connection") or "").lower() == "close"
    connection.request("POST", f"/v1/models/{MODEL}:predict", body=b'{"instances": [1.0]}')
    try:
        follow_up = connection.getresponse()
    except (ConnectionError, http.client.HTTPException) as e:
        assert closes, f"kept-alive connection reset after the 400 without `Connection: close`: {e!r}"
        return
    assert follow_up.status == 200
    connection.close()
