"""The physical floor of the serving benchmark: bare grpc.aio echo servers, nothing else.

    .venv/bin/python bench/echo_server.py --port 0 --ready-file /tmp/echo.json

Two services on one port:
- `bench.Echo`: /bench.Echo/Call (unary) and /bench.Echo/Stream (stream-stream), bytes in, the
  same bytes out, no protobuf at all: the floor for the Python load generator.
- `inference.GRPCInferenceService` reduced to an echo, so that perf_analyzer can drive the floor
  too (the same client on both sides of a ratio): ModelInfer/ModelStreamInfer parse the request
  and answer its raw input bytes as the raw output (no validation, no model, no metrics);
  ServerMetadata, ModelMetadata and ModelConfig answer constants describing one model "mlp"
  with an FP32 [-1, 64] input. That is the least any Open Inference Protocol server does.
The ready file gets {"pid", "grpc_port"} once bound. Exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protos import inference_pb2 as pb
from protos import model_config_pb2 as mc

SERVICE = "bench.Echo"
INFERENCE = "inference.GRPCInferenceService"
MODEL, INPUT, OUTPUT, WIDTH = "mlp", "input", "output", 64


async def _call(request: bytes, context) -> bytes:
    return request


async def _stream(request_iterator, context):
    async for request in request_iterator:
        yield request


def _echo(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
    for tensor, raw in zip(request.inputs, request.raw_input_contents):
        response.outputs.add(name=OUTPUT, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(raw)
    return response


async def _infer(request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
    return _echo(request)


async def _stream_infer(request_iterator, context):
    async for request in request_iterator:
        yield pb.ModelStreamInferResponse(infer_response=_echo(request))


async def _server_metadata(request, context) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name="echo", version="0", extensions=[])


async def _model_metadata(request, context) -> pb.ModelMetadataResponse:
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(name=MODEL, versions=["1"], platform="onnxruntime_onnx",
                                    inputs=[tensor(name=INPUT, datatype="FP32", shape=[-1, WIDTH])],
                                    outputs=[tensor(name=OUTPUT, datatype="FP32", shape=[-1, WIDTH])])


async def _model_config(request, context) -> pb.ModelConfigResponse:
    config = mc.ModelConfig(name=MODEL, platform="onnxruntime_onnx", max_batch_size=64)
    config.input.add(name=INPUT, data_type=mc.TYPE_FP32, dims=[WIDTH])
    config.output.add(name=OUTPUT, data_type=mc.TYPE_FP32, dims=[WIDTH])
    return pb.ModelConfigResponse(config=config)


def _unary(fn, request_type):
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_type.FromString,
                                               response_serializer=lambda m: m.SerializeToString())


async def serve(host: str, port: int, ready_file: Path | None) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, {
            "Call": grpc.unary_unary_rpc_method_handler(_call),
            "Stream": grpc.stream_stream_rpc_method_handler(_stream),
        }),
        grpc.method_handlers_generic_handler(INFERENCE, {
            "ModelInfer": _unary(_infer, pb.ModelInferRequest),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                _stream_infer, request_deserializer=pb.ModelInferRequest.FromString,
                response_serializer=lambda m: m.SerializeToString()),
            "ServerMetadata": _unary(_server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": _unary(_model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": _unary(_model_config, pb.ModelConfigRequest),
        }),
    ))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "grpc_port": bound}))
        os.replace(tmp, ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.ready_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
