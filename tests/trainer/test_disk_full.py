"""A full disk, produced for real: SQLite's `max_page_count` makes the store's file unable to
grow, and SQLite answers SQLITE_FULL exactly as on a full file system. A batch that cannot be
committed is answered with an error ack (so the service keeps it and resends it), nothing half
written is visible, the trainer keeps running, and the resend is stored once room is made."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc

from protos import collector_pb2, collector_pb2_grpc
from tests.trainer.conftest import batch, random_records
from tests.trainer.helpers import start_trainer


async def _send(port: int, capture_batch: collector_pb2.CaptureBatch) -> collector_pb2.CaptureAck:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        acks = [ack async for ack in collector_pb2_grpc.CollectorStub(channel).Stream(iter([capture_batch]), timeout=20)]
    assert len(acks) == 1
    return acks[0]


async def test_full_disk_refuses_the_batch_without_acking_and_the_resend_lands(tmp_path: Path) -> None:
    process = await start_trainer(tmp_path)
    try:
        first = await _send(process.grpc_port, batch(1, random_records(20)))
        assert (first.stored, first.error) == (20, "")
        con = process.store._con  # the store's own connection: cap the file at its current size
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {pages}")
        big = random_records(400, start=1000, features=256)
        ack = await _send(process.grpc_port, batch(2, big))
        assert ack.stored == 0 and "full" in ack.error.lower(), ack
        # nothing of the failed batch is visible; what was acknowledged before is intact
        reader = sqlite3.connect(tmp_path / "store.db")
        assert reader.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 20
        assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        reader.close()
        # room is made (retention, a bigger volume): the service's resend of the same batch lands
        con.execute("PRAGMA max_page_count = 1073741823")
        ack = await _send(process.grpc_port, batch(2, big))
        assert (ack.stored, ack.duplicates, ack.error) == (400, 0, "")
    finally:
        await process.stop(0.5)
