"""gRPC `tensorflow.serving.PredictionService` on `grpc.aio`: parse → data plane → answer.

Each method resolves the request's `ModelSpec` once with the `ModelManager`,
asks the `DataPlane` for a run plan (TF Serving's checks, decoding), awaits the
run on the event loop (no thread is held while the request waits for its
batch) and answers; a failure becomes a gRPC status through `serving.errors`
(TFS_CONTRACT.md §5). The client deadline becomes the run deadline: rows still
queued when it passes are not run, and a client that goes away takes its rows
out of the queue.

    server = grpc.aio.server(...)
    add_prediction_service(server, manager, dataplane, metrics, budget)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.dataplane import DataPlane, RunPlan, make_model_spec
from serving.errors import ServingError, abort_grpc, as_serving_error, invalid_argument, unavailable
from serving.memory import InputBudget

SIGNATURE_DEF_FIELD = "signature_def"
# A gRPC call without a deadline reports a remaining time of years; treat it as none.
_NO_DEADLINE_S = 1e8
# Requests larger than this are decoded on a worker thread, not on the event loop.
_DECODE_OFF_LOOP_BYTES = 1 << 20
SHUTTING_DOWN_MESSAGE = "Server is shutting down; send the request to another replica"

Response = TypeVar("Response")


def resolve_model_spec(manager: Any, spec: model_pb2.ModelSpec) -> Any:
    """Finds the servable a `ModelSpec` names (version, label, or latest).

    Raises:
      ServingError: INVALID_ARGUMENT for an empty name or unknown label,
        NOT_FOUND `Servable not found for request: ...` for unknown models/versions.
    """
    if not spec.name:
        raise invalid_argument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return manager.resolve(spec.name, version=spec.version.value)
    if choice == "version_label":
        return manager.resolve(spec.name, label=spec.version_label)
    return manager.resolve(spec.name)


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata.

    Args:
      manager: the `ModelManager` resolving model specs to servables.
      dataplane: the `DataPlane` planning and running requests.
      metrics: `Metrics` for request counts and latencies (None: not recorded).
      budget: the memory budget decoded inputs are reserved from (None: unbounded).
    """

    def __init__(
        self, manager: Any, dataplane: DataPlane, metrics: Any = None, budget: InputBudget | None = None
    ):
        self.manager = manager
        self.dataplane = dataplane
        self.metrics = metrics
        self.budget = budget
        self.refusing = False
        self.last_refusal = 0.0  # time.monotonic() of the last call refused while refusing

    def refuse_new_calls(self) -> None:
        """From now on every new call is answered UNAVAILABLE; calls already running finish.

        This is the first step of the drain: grpc core cancels (CANCELLED, not
        UNAVAILABLE) a call that has arrived but that the server has not picked up yet
        when `server.stop()` begins (grpc/grpc#41785), and a CANCELLED call is one
        that retry policies do not retry. Answering UNAVAILABLE first lets the clients
        go elsewhere before `stop()` runs.
        """
        self.refusing = True
        self.last_refusal = time.monotonic()

    async def wait_until_no_calls_arrive(self, quiet_s: float, timeout_s: float) -> None:
        """Returns once no call has been refused for `quiet_s`, or after `timeout_s`."""
        give_up = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            if now - self.last_refusal >= quiet_s or now >= give_up:
                return
            await asyncio.sleep(min(quiet_s, give_up - now))

    async def _serve(
        self,
        api: str,
        model_name: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[float | None], Awaitable[Response]],
        record: bool = True,
    ) -> Response:
        """Awaits `body(deadline)` (UNAVAILABLE while refusing); maps failures to a gRPC status; records metrics."""
        start = time.perf_counter()
        status = grpc.StatusCode.OK
        try:
            if self.refusing:
                self.last_refusal = time.monotonic()
                raise unavailable(SHUTTING_DOWN_MESSAGE)
            return await body(_deadline(context))
        except asyncio.CancelledError:
            status = grpc.StatusCode.CANCELLED  # the client went away; its rows left the queue
            raise
        except Exception as e:
            error = as_serving_error(e, f"{api} on model {model_name!r}")
            status = error.code
        finally:
            if record and self.metrics is not None:
                self.metrics.record_request(model_name, api, "GRPC", status.name, time.perf_counter() - start)
        await abort_grpc(context, error)

    async def _run(self, request: Any, plan_for: Callable[[Any], RunPlan], deadline: float | None) -> Any:
        """Resolves the model once, plans (off the loop for large messages), runs."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        servable = resolve_model_spec(self.manager, request.model_spec)
        size = request.ByteSize()
        with InputBudget.reserve_or_none(self.budget, size, "request"):
            if size > _DECODE_OFF_LOOP_BYTES:
                loop = asyncio.get_running_loop()
                plan = await loop.run_in_executor(self.dataplane.pool, plan_for, servable)
            else:
                plan = plan_for(servable)
            return await self.dataplane.run_async(plan, deadline)

    async def _serve_one(self, method: str, plan, request, context):
        """Serves a one-signature call: plans the request on its servable, runs it, answers."""
        return await self._serve(
            method,
            request.model_spec.name,
            context,
            lambda deadline: self._run(request, lambda servable: plan(servable, request), deadline),
        )

    async def Predict(self, request, context):
        """PredictionService.Predict: run a signature on input tensors."""
        return await self._serve_one("Predict", self.dataplane.plan_predict_request, request, context)

    async def Classify(self, request, context):
        """PredictionService.Classify: run a classification signature on tf.Examples."""
        return await self._serve_one("Classify", self.dataplane.plan_classify_request, request, context)

    async def Regress(self, request, context):
        """PredictionService.Regress: run a regression signature on tf.Examples."""
        return await self._serve_one("Regress", self.dataplane.plan_regress_request, request, context)

    async def MultiInference(self, request, context):
        """PredictionService.MultiInference: several classify/regress tasks on one input."""

        async def body(deadline):
            if not request.tasks:
                raise invalid_argument("MultiInferenceRequest must specify at least one task.")
            # The model comes from the first task; the data plane checks the others name it too.
            servable = resolve_model_spec(self.manager, request.tasks[0].model_spec)
            with InputBudget.reserve_or_none(self.budget, request.ByteSize(), "request"):
                plan = self.dataplane.plan_multi_inference_request(servable, request)
                return await self.dataplane.run_async(plan, deadline)

        model_name = request.tasks[0].model_spec.name if request.tasks else ""
        return await self._serve("MultiInference", model_name, context, body)

    async def GetModelMetadata(self, request, context):
        """PredictionService.GetModelMetadata: the model's SignatureDefMap (only field supported)."""

        async def body(_deadline):
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {field} is not supported")
                servable = resolve_model_spec(self.manager, request.model_spec)
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                for name, signature in servable.signature_defs.items():
                    signature_map.signature_def[name].CopyFrom(signature)
                make_model_spec(servable.name, None, servable.version, response.model_spec)
                response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response

        return await self._serve("GetModelMetadata", request.model_spec.name, context, body, record=False)


SERVICE_NAME = "tensorflow.serving.PredictionService"
# Method → request message. Responses are serialized by their own SerializeToString.
_REQUESTS = {
    "Predict": predict_pb2.PredictRequest,
    "Classify": classification_pb2.ClassificationRequest,
    "Regress": regression_pb2.RegressionRequest,
    "MultiInference": inference_pb2.MultiInferenceRequest,
    "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest,
}


class _Undecodable:
    """Stands for request bytes that do not parse as the method's message."""

    __slots__ = ("error",)

    def __init__(self, error: message.DecodeError):
        self.error = error


def _lenient_parser(request_type: Any) -> Callable[[bytes], Any]:
    # grpc.aio answers a deserializer's exception with UNKNOWN "Unexpected <class ...>";
    # every gRPC server answers INTERNAL for bytes that are not the request message.
    def parse(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except message.DecodeError as e:
            return _Undecodable(e)

    return parse


def _refusing_undecodable(method: Callable, request_type: Any) -> Callable:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"Exception deserializing request: not a {request_type.DESCRIPTOR.full_name} ({request.error})",
            )
        return await method(request, context)

    return handle


def add_prediction_service(
    server: grpc.aio.Server,
    manager: Any,
    dataplane: DataPlane,
    metrics: Any = None,
    budget: InputBudget | None = None,
) -> PredictionServicer:
    """Registers the PredictionService on a `grpc.aio.Server` and returns the servicer.

    The methods are those of `prediction_service_pb2_grpc`, registered here so that
    request bytes that do not parse are answered INTERNAL naming the message type.
    """
    servicer = PredictionServicer(manager, dataplane, metrics, budget)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(getattr(servicer, name), request_type),
            request_deserializer=_lenient_parser(request_type),
            response_serializer=lambda response: response.SerializeToString(),
        )
        for name, request_type in _REQUESTS.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    return servicer


__all__ = ["PredictionServicer", "ServingError", "add_prediction_service", "resolve_model_spec"]
