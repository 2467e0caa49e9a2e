"""The thin gRPC layer: `InferenceServicer` implements `inference.GRPCInferenceService` by converting
protobuf to domain types (`service.converters`), calling the `DataPlane` and converting back.

Errors are mapped to gRPC status in ONE place, `_map_errors`: a `ServingError` aborts with its own
code and message; anything else is logged with its traceback and reaches the client as INTERNAL
"internal error". ModelStreamInfer reports per-request errors in `error_message` and keeps the
stream open, like Triton; requests on one stream are processed concurrently (so the batcher can
merge them) and answered in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from protos import inference_pb2 as pb
from protos import inference_pb2_grpc as pb_grpc
from service import converters
from service.dataplane import DataPlane
from service.errors import ServingError

log = logging.getLogger(__name__)

STREAM_WINDOW = 64  # requests of one stream being processed at once


def _map_errors(method):
    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Open Inference Protocol over gRPC, delegating everything to a DataPlane."""

    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    @_map_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self._dp.live())

    @_map_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self._dp.ready)

    @_map_errors
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    @_map_errors
    async def ServerMetadata(self, request, context):
        name, version, extensions = self._dp.server_metadata()
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @_map_errors
    async def ModelMetadata(self, request, context):
        versions, platform, inputs, outputs = self._dp.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=request.name, versions=versions, platform=platform,
            inputs=[converters.tensor_metadata(s.name, s.datatype, s.shape) for s in inputs],
            outputs=[converters.tensor_metadata(s.name, s.datatype, s.shape) for s in outputs])

    @_map_errors
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self._dp.model_config(request.name, request.version))

    @_map_errors
    async def ModelStatistics(self, request, context):
        return converters.statistics_to_proto(self._dp.statistics(request.name, request.version))

    @_map_errors
    async def RepositoryIndex(self, request, context):
        return converters.index_to_proto(self._dp.repository_index(request.ready))

    @_map_errors
    async def RepositoryModelLoad(self, request, context):
        await self._dp.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_map_errors
    async def RepositoryModelUnload(self, request, context):
        await self._dp.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_map_errors
    async def ModelInfer(self, request, context):
        response = await self._dp.infer(converters.infer_request_from_proto(request))
        return converters.infer_response_to_proto(response)

    async def ModelStreamInfer(self, request_iterator, context):
        window: asyncio.Queue = asyncio.Queue(STREAM_WINDOW)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.put(loop.create_task(self._stream_one(request)))
            finally:
                await window.put(None)

        reader = loop.create_task(read())
        try:
            while True:
                task = await window.get()
                if task is None:
                    break
                yield await task
            await reader
        finally:
            if not reader.done():
                reader.cancel()

    async def _stream_one(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        try:
            response = await self._dp.infer(converters.infer_request_from_proto(request))
            return pb.ModelStreamInferResponse(infer_response=converters.infer_response_to_proto(response))
        except ServingError as exc:
            return pb.ModelStreamInferResponse(error_message=exc.message)
        except Exception:
            log.exception("ModelStreamInfer request failed")
            return pb.ModelStreamInferResponse(error_message="internal error")
