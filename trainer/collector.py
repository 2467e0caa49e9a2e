"""The trainer's side of the capture stream: `pseudoserve.v1.Collector/Stream`.

The service sends CaptureBatches on one bidirectional stream; for each batch this servicer
commits the records to the `SampleStore` (one transaction, in the store's single writer thread)
and only then answers a CaptureAck with the batch id, how many records were new and how many
were duplicates of a resent batch. If the store fails, the ack carries the error and the sender
keeps the batch and resends it. Batches are handled in arrival order, one at a time.

The servicer sends its initial metadata as soon as the stream is accepted, before any batch:
the sender waits for it (or for the stream's refusal) before writing, so a refusal such as
UNAUTHENTICATED reaches it with its own status rather than as a failed write (grpc.aio reports a
write that races the server's early status as INTERNAL, grpc/grpc#36066).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor

import grpc

from protos import collector_pb2, collector_pb2_grpc
from trainer.store import SampleStore

log = logging.getLogger(__name__)


class CollectorServicer(collector_pb2_grpc.CollectorServicer):
    """Stores captured batches and acknowledges each after commit; `on_stored(n)` (optional) is
    told how many new samples arrived, e.g. for a new-sample round trigger."""

    def __init__(self, store: SampleStore, executor: Executor,
                 on_stored: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._executor = executor
        self._on_stored = on_stored

    async def Stream(self, request_iterator: AsyncIterator[collector_pb2.CaptureBatch],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[collector_pb2.CaptureAck]:
        loop = asyncio.get_running_loop()
        peer = context.peer()
        await context.send_initial_metadata(())  # accepted: the sender may write
        async for batch in request_iterator:
            try:
                stored, duplicates = await loop.run_in_executor(self._executor, self._store.add_captured,
                                                                batch.groups)
            except Exception as e:
                log.exception("capture batch %d from %s (%s) not stored", batch.batch_id, batch.sender, peer)
                yield collector_pb2.CaptureAck(batch_id=batch.batch_id, error=f"not stored: {type(e).__name__}: {e}")
                continue
            if stored and self._on_stored is not None:
                self._on_stored(stored)
            yield collector_pb2.CaptureAck(batch_id=batch.batch_id, stored=stored, duplicates=duplicates)
