"""gRPC `tensorflow.serving.PredictionService`: a thin front end over the data plane.

Each method resolves the request's `ModelSpec` with the `ModelManager`, hands the
request proto to the `DataPlane`, and turns a `ServingError` into a gRPC status
with TF Serving's code and message (TFS_CONTRACT.md §5). The client deadline
becomes the run deadline (DEADLINE_EXCEEDED when it passes while queued).

    server = grpc.server(...)
    add_prediction_service(server, manager, dataplane, metrics)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    prediction_service_pb2_grpc,
)

from serving.dataplane import DataPlane, make_model_spec
from serving.errors import ServingError, invalid_argument

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"
# A gRPC call without a deadline reports a remaining time of years; treat it as none.
_NO_DEADLINE_S = 1e8

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


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE_S:
        return None
    return time.monotonic() + remaining


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress, MultiInference and GetModelMetadata.

    Args:
      manager: the `ModelManager` resolving model specs to servables.
      dataplane: the `DataPlane` running requests.
      metrics: `Metrics` for request counts and latencies (None: not recorded).
    """

    def __init__(self, manager: Any, dataplane: DataPlane, metrics: Any = None):
        self.manager = manager
        self.dataplane = dataplane
        self.metrics = metrics

    def _serve(
        self,
        api: str,
        model_name: str,
        context: grpc.ServicerContext,
        body: Callable[[float | None], Response],
        record: bool = True,
    ) -> Response:
        """Runs `body(deadline)`, maps a `ServingError` to a gRPC status, records metrics."""
        start = time.perf_counter()
        status = grpc.StatusCode.OK
        try:
            return body(_deadline(context))
        except ServingError as e:
            status = e.code
            context.abort(e.code, e.grpc_message())
        except Exception as e:
            log.exception("%s on model %r failed unexpectedly", api, model_name)
            status = grpc.StatusCode.INTERNAL
            context.abort(grpc.StatusCode.INTERNAL, f"{api} failed: {e}")
        finally:
            if record and self.metrics is not None:
                self.metrics.record_request(model_name, api, "GRPC", status.name, time.perf_counter() - start)
        raise AssertionError("unreachable: context.abort() raises")

    def _servable_for(self, request: Any) -> Any:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return resolve_model_spec(self.manager, request.model_spec)

    def Predict(self, request, context):
        """PredictionService.Predict: run a signature on input tensors."""
        return self._serve(
            "Predict",
            request.model_spec.name,
            context,
            lambda deadline: self.dataplane.predict_request(self._servable_for(request), request, deadline),
        )

    def Classify(self, request, context):
        """PredictionService.Classify: run a classification signature on tf.Examples."""
        return self._serve(
            "Classify",
            request.model_spec.name,
            context,
            lambda deadline: self.dataplane.classify_request(self._servable_for(request), request, deadline),
        )

    def Regress(self, request, context):
        """PredictionService.Regress: run a regression signature on tf.Examples."""
        return self._serve(
            "Regress",
            request.model_spec.name,
            context,
            lambda deadline: self.dataplane.regress_request(self._servable_for(request), request, deadline),
        )

    def MultiInference(self, request, context):
        """PredictionService.MultiInference: several classify/regress tasks on one input."""

        def body(deadline):
            if not request.tasks:
                raise invalid_argument("MultiInferenceRequest must specify at least one task.")
            # The model comes from the first task; the data plane checks the others name it too.
            servable = resolve_model_spec(self.manager, request.tasks[0].model_spec)
            return self.dataplane.multi_inference_request(servable, request, deadline)

        model_name = request.tasks[0].model_spec.name if request.tasks else ""
        return self._serve("MultiInference", model_name, context, body)

    def GetModelMetadata(self, request, context):
        """PredictionService.GetModelMetadata: the model's SignatureDefMap (only field supported)."""

        def body(_deadline):
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

        return self._serve("GetModelMetadata", request.model_spec.name, context, body, record=False)


def add_prediction_service(
    server: grpc.Server, manager: Any, dataplane: DataPlane, metrics: Any = None
) -> PredictionServicer:
    """Registers the PredictionService on a `grpc.Server` and returns the servicer."""
    servicer = PredictionServicer(manager, dataplane, metrics)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    return servicer
