"""A million-row transaction and a 200,000-job transaction stream through in bounded memory."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from support import consumer_env, running_consumer, wait_until

from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.slow
PEAK_RSS_LIMIT = 150 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_huge_transactions_stream_in_bounded_memory(
    settings: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    # The rows exist before the slot does, so only the two big updates are streamed.
    setup(settings, dev_schema=True)
    conn.execute("INSERT INTO ens_names (name, owner_address) VALUES ('big.eth', '0x1')")
    conn.execute(
        "INSERT INTO listings (ens_name_id, seller_address, price_wei, status)"
        " SELECT 1, '0xseller', '1000', CASE WHEN g <= 200000 THEN 'active' ELSE 'sold' END"
        " FROM generate_series(1, 1000000) g"
    )
    conn.execute("SELECT pg_drop_replication_slot(%s)", [settings.slot])
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [settings.slot])

    with running_consumer(consumer_env(settings.database_url), tmp_path / "c.log") as consumer:
        conn.execute("UPDATE listings SET updated_at = now()")  # 1,000,000 changes, no job
        conn.execute(
            "UPDATE listings SET price_wei = (price_wei::numeric + 1)::text"
            " WHERE status = 'active'"
        )  # 200,000 changes, one job each
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert target is not None
        wait_until(
            lambda: conn.execute(
                "SELECT end_lsn >= %s FROM grails_workers.consumer_checkpoint"
                " WHERE slot_name = %s", [target[0], settings.slot],
            ).fetchone() == (True,),
            timeout=240, interval=0.5, what="both big transactions to be consumed",
        )
        peak = peak_rss(consumer.pid)
        assert consumer.stop() == 0
    jobs = conn.execute(
        "SELECT count(*), count(DISTINCT args->>'event_key') FROM procrastinate_jobs"
        " WHERE task_name = 'notify-watchers' AND args->>'event' = 'price-change'"
    ).fetchone()
    assert jobs == (200_000, 200_000)
    row = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
    assert row == (200_000,)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB >= 150 MiB"
    print(f"consumer peak RSS: {peak / 2**20:.1f} MiB")
