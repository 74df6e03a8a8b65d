"""gRPC `tensorflow.serving.ModelService` on `grpc.aio`: GetModelStatus and HandleReloadConfigRequest.

A thin front end over the `ModelManager` (TFS_CONTRACT.md §2, §5): it checks the
request's envelope, delegates, and turns a failure into the gRPC status with TF
Serving's code and message (`serving.errors`). A reload waits for models to
load, so it runs on a worker thread, never on the event loop.

    add_model_service(server, manager)
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from serving.errors import abort_grpc, as_serving_error, escape_for_log, invalid_argument
from serving.model_manager import ModelManager

log = logging.getLogger("serving.model_service")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest on a ModelManager.

    Args:
      manager: the model store to report on and reconfigure.
    """

    def __init__(self, manager: ModelManager):
        self.manager = manager

    async def GetModelStatus(self, request, context):
        """Status of one version (model_spec.version) or of every known version.

        A version label is ignored, as in TF Serving: only an explicit version narrows.
        """
        try:
            if not request.HasField("model_spec"):
                raise invalid_argument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            return self.manager.model_status(spec.name, version)
        except Exception as e:
            error = as_serving_error(e, "GetModelStatus")
        await abort_grpc(context, error)

    async def HandleReloadConfigRequest(self, request, context):
        """Replaces the served models with `request.config` (a model_config_list only).

        Replies only once every added model is AVAILABLE. On failure the call
        fails with the error's code (the response `status` mirrors it for
        clients that read it).
        """
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported"
                )
            for index, model in enumerate(request.config.model_config_list.config):
                log.info(
                    "Reload config entry %d: name=%s base_path=%s platform=%s",
                    index,
                    escape_for_log(model.name),
                    escape_for_log(model.base_path),
                    escape_for_log(model.model_platform),
                )
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.manager.reload_config, request.config)
            return response
        except Exception as e:
            error = as_serving_error(e, "HandleReloadConfigRequest")
        log.error("ServerCore failed to reload config: %s", escape_for_log(error.message))
        await abort_grpc(context, error)


def add_model_service(server: grpc.aio.Server, manager: ModelManager) -> ModelServicer:
    """Registers the ModelService on a `grpc.aio.Server` and returns the servicer."""
    servicer = ModelServicer(manager)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(servicer, server)
    return servicer
