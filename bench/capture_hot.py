"""What capture costs the serving process per record, in a hot loop (no server, no network):
`Capture.offer_served` as the data plane calls it, then the sender's conversion of the queued
records into CaptureBatches (`_take_batch`: grouping, columns, the CaptureGroup) and their
serialization.

    .venv/bin/python bench/capture_hot.py [--records 20480] [--repeats 5]

The records are the capture benchmark's: one request of one row, one FP32 [1, 64] input (256 raw
bytes) and a 10-class `probabilities` output, offered with the serving benchmark's model version
(loaded by a real `InferenceServer`) as the data plane offers them. Prints the median over
`--repeats` of each cost in µs per record. In a live server the same code costs several times as much (caches, see
docs/benchmarks.md section 2); this is the repeatable part of that figure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from prometheus_client import CollectorRegistry

from bench.serving import CONFIG, MODEL
from service.capture import Capture
from service.domain import InferInput
from service.model import ModelVersion
from service.server import InferenceServer
from tests.fixtures.onnx_models import write_version
from tests.fixtures.servers import make_settings


async def _model_version() -> ModelVersion:
    """The serving benchmark's model version, as a server loads it (`offer_served` reads its specs)."""
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "models"
        write_version(repo, MODEL, 1, config=CONFIG)
        server = InferenceServer(make_settings(repo), CollectorRegistry())
        await server.start()
        try:
            return server.dataplane.manager.get(MODEL, "")
        finally:
            await server.stop()


async def _convert(capture: Capture) -> tuple[float, float, int]:
    """(conversion seconds, serialization seconds, batches) for everything queued."""
    convert = serialize = 0.0
    batches = 0
    while True:
        start = time.thread_time()
        batch = await capture._take_batch()
        convert += time.thread_time() - start
        if batch is None:
            return convert, serialize, batches
        start = time.thread_time()
        batch.SerializeToString()
        serialize += time.thread_time() - start
        batches += 1
        capture._unacked.clear()  # as if acknowledged
        capture._unacked_records = 0


def measure(records: int, source: ModelVersion) -> dict[str, float]:
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 64), dtype=np.float32) for _ in range(256)]
    inputs = [[InferInput("input", "FP32", (1, 64), x, x.tobytes())] for x in xs]
    outputs = [rng.dirichlet(np.ones(10)).astype(np.float32)[None, :] for _ in range(256)]
    ids = [f"{i:032x}" for i in range(records)]
    capture = Capture("127.0.0.1:1", registry=CollectorRegistry(), queue_size=records, batch_size=256,
                      flush_interval=0.0)
    start = time.thread_time()
    for i in range(records):
        capture.offer_served(ids[i], source, inputs[i % 256], [outputs[i % 256]], 1)
    offer = time.thread_time() - start
    capture._stopping = True  # take every queued record, however few
    convert, serialize, batches = asyncio.run(_convert(capture))
    assert batches * 256 >= records, (batches, records)
    return {"offer": offer / records * 1e6, "convert": convert / records * 1e6, "serialize": serialize / records * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20480)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    source = asyncio.run(_model_version())
    runs = [measure(args.records, source) for _ in range(args.repeats)]
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(" ".join(f"{key} {value:.2f}" for key, value in medians.items()),
          f"total {sum(medians.values()):.2f} µs per record (median of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
