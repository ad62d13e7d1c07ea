"""Two `wal-consumer run` processes on one slot: one streams, the other waits on the slot's
advisory lock and takes over within 5 s of the active one being SIGKILLed; exactly-once holds."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from stress import Writer, verify_exactly_once
from support import ConsumerProcess, consumer_env, wait_caught_up, wait_until

from wal_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.faults




def test_standby_takes_over_within_5s_without_losing_or_doubling(
    ready_db: ConsumerSettings, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url, WAL_STATUS_INTERVAL_S="1")
    active = ConsumerProcess(env, tmp_path / "a.log").start()
    wait_until(lambda: "streaming slot" in active.output(), what="first consumer streaming")
    standby = ConsumerProcess(env, tmp_path / "b.log").start()
    try:
        wait_until(lambda: "standby: slot" in standby.output(), what="second consumer waiting")
        assert "streaming slot" not in standby.output()
        writer = Writer(ready_db.database_url, 20_000, seed=11)
        writer.start()
        wait_until(lambda: writer.committed_changes > 5000, timeout=60, what="writer progress")
        active.kill()
        killed_at = time.monotonic()
        wait_until(lambda: "streaming slot" in standby.output(), timeout=10,
                   interval=0.01, what="standby to take over")
        takeover = time.monotonic() - killed_at
        assert takeover < 5, f"takeover took {takeover:.2f} s"
        assert "taking over slot" in standby.output()
        writer.join(300)
        assert writer.error is None, writer.error
        with psycopg.connect(ready_db.database_url, autocommit=True) as conn:
            wait_caught_up(conn, ready_db.slot, timeout=120)
        assert standby.stop() == 0
    finally:
        for process in (active, standby):
            if process.proc and process.proc.poll() is None:
                process.proc.kill()
    counts = verify_exactly_once(ready_db.database_url)
    assert counts["listings"] > 1000
    print(f"takeover in {takeover:.2f} s; {counts}")
