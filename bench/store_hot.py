"""What the trainer's sample store costs per captured record, in a hot loop (no server, no network):
`SampleStore.add_captured` of CaptureBatches as the collector receives them (built by the service's
own conversion, serialized and parsed again), into a real SQLite store file (WAL,
`synchronous=FULL`, one transaction per batch).

    .venv/bin/python bench/store_hot.py [--batches 100] [--batch-size 256] [--repeats 3] [--no-store]

The records are the capture benchmark's: one FP32 [1, 64] input (256 raw bytes) and 10 float32
probabilities each, unique request ids. Every batch is built before the clock starts. Prints the
median over `--repeats` of the thread CPU time and the wall time per stored record (the wall time
includes the fsync per batch). In the trainer process the same code costs more (caches, the
gRPC stream, the executor hop; docs/benchmarks.md section 2); this is its repeatable part.

`--no-store` builds the batches and stops: under `valgrind --tool=callgrind`, the instructions of
a run with the store minus those of a run without it are the store's own.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from protos import collector_pb2
from service.capture import build_batch, queue_item
from service.domain import InferInput
from trainer.store import SampleStore


def batches(count: int, size: int) -> list[collector_pb2.CaptureBatch]:
    """`count` parsed CaptureBatches of `size` distinct records each."""
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 64), dtype=np.float32) for _ in range(size)]
    inputs = [[InferInput("input", "FP32", (1, 64), x, x.tobytes())] for x in xs]
    probs = [rng.dirichlet(np.ones(10)).astype(np.float32)[None, :] for _ in range(size)]
    out = []
    for b in range(count):
        items = [queue_item(time.time_ns(), f"{b:08x}{i:024x}", "mlp", "1", inputs[i], probs[i], 1) for i in range(size)]
        batch = collector_pb2.CaptureBatch(batch_id=b + 1, sender="bench")
        build_batch(items, 1 << 20, batch.groups)
        out.append(collector_pb2.CaptureBatch.FromString(batch.SerializeToString()))
    return out


def measure(count: int, size: int) -> dict[str, float]:
    todo = batches(count, size)
    with tempfile.TemporaryDirectory(prefix="pseudoserve-store-hot-") as tmp, \
            SampleStore(Path(tmp) / "store.db") as store:
        cpu, wall = time.thread_time(), time.perf_counter()
        for batch in todo:
            stored, _ = store.add_captured(batch.groups)
            assert stored == size, stored
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    records = count * size
    return {"cpu": cpu / records * 1e6, "wall": wall / records * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-store", action="store_true", help="only build the batches (callgrind baseline)")
    args = parser.parse_args()
    if args.no_store:
        batches(args.batches, args.batch_size)
        return 0
    runs = [measure(args.batches, args.batch_size) for _ in range(args.repeats)]
    print(f"add_captured: thread CPU {statistics.median(r['cpu'] for r in runs):.2f} µs, wall "
          f"{statistics.median(r['wall'] for r in runs):.2f} µs per record (median of {args.repeats}, "
          f"{args.batches} batches of {args.batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
