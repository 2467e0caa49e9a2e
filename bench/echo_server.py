"""The physical floor of the serving benchmark: a bare grpc.aio unary (and bidi-streaming) echo
server with no protobuf work at all (bytes in, the same bytes out).

    .venv/bin/python bench/echo_server.py --port 0 --ready-file /tmp/echo.json

Method names: /bench.Echo/Call (unary) and /bench.Echo/Stream (stream-stream). The ready file
gets {"pid", "grpc_port"} once bound. Exits 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

import grpc

SERVICE = "bench.Echo"


async def _call(request: bytes, context) -> bytes:
    return request


async def _stream(request_iterator, context):
    async for request in request_iterator:
        yield request


async def serve(host: str, port: int, ready_file: Path | None) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Call": grpc.unary_unary_rpc_method_handler(_call),
        "Stream": grpc.stream_stream_rpc_method_handler(_stream),
    })
    server.add_generic_rpc_handlers((handler,))
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
