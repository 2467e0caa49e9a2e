"""A capture collector that stores nothing: `pseudoserve.v1.Collector/Stream` answered by
acknowledging every batch as soon as it arrives, under SCHED_IDLE like `pseudoserve trainer`.

    .venv/bin/python bench/null_collector.py --ready-file /tmp/null.json

Used by `bench/capture.py --null-collector` to split capture's cost between the service (which
converts and sends exactly as it does to a real trainer) and the trainer's store. It sends its
initial metadata on accept, as the real collector does, so the service's sender writes at once.
The ready file gets {"pid", "grpc_port"} once bound. Exits on SIGTERM/SIGINT.
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

from protos import collector_pb2, collector_pb2_grpc


class NullCollector(collector_pb2_grpc.CollectorServicer):
    def __init__(self) -> None:
        self.samples = 0

    async def Stream(self, request_iterator, context):
        await context.send_initial_metadata(())
        async for batch in request_iterator:
            self.samples += sum(len(group.request_ids) for group in batch.groups)
            yield collector_pb2.CaptureAck(batch_id=batch.batch_id)


async def serve(ready_file: Path) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    collector = NullCollector()
    collector_pb2_grpc.add_CollectorServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ready_file.write_text(json.dumps({"pid": os.getpid(), "grpc_port": port}))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    print(f"null collector: {collector.samples} samples acknowledged", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    asyncio.run(serve(args.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
