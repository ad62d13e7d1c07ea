"""Exactly-once enqueue under faults: the consumer SIGKILLed at random moments, the server
restarted fast and immediate, while a writer commits >= 20,000 changes.

What is expected is read back from the marketplace rows themselves, so the writer may lose its
own connection mid-commit without the test guessing what committed: every listing must have
exactly one new-listing notification, one ENS sync and one expiry job; every price change
adds exactly 1 wei to the listing's price, so a listing's final price minus its first price is
the number of price-change jobs it must have.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import psycopg
import pytest
from stress import Writer, verify_exactly_once
from support import ConsumerProcess, Server, consumer_env, wait_caught_up, wait_until

from wal_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.faults
TARGET_CHANGES = 20_000


def run_writer_with_faults(
    ready_db: ConsumerSettings, tmp_path: Path, fault: str, pg_server: Server
) -> dict[str, int]:
    env = consumer_env(ready_db.database_url, WAL_STATUS_INTERVAL_S="1")
    log = tmp_path / "consumer.log"
    consumer = ConsumerProcess(env, log).start()
    writer = Writer(ready_db.database_url, TARGET_CHANGES, seed=hash(fault) & 0xFFFF)
    writer.start()
    rng = random.Random(7)
    faults = 0
    try:
        while writer.is_alive() or faults < (10 if fault == "sigkill" else 1):
            time.sleep(rng.uniform(0.3, 1.2))  # the fault lands at a random moment
            if fault == "sigkill":
                consumer.kill()
                consumer = ConsumerProcess(env, log).start()
            elif faults == 0:
                assert pg_server.local is not None
                # restart mid-stream: the consumer is streaming and the writer is under way
                wait_until(lambda c=consumer: "streaming slot" in c.output(), what="streaming")
                wait_until(lambda: writer.committed_changes > 2000, what="writer progress")
                pg_server.local.restart(mode=fault)
            faults += 1
            if fault != "sigkill" and faults >= 1 and not writer.is_alive():
                break
        writer.join(300)
        assert writer.error is None, writer.error
        assert writer.committed_changes >= TARGET_CHANGES
        with psycopg.connect(ready_db.database_url, autocommit=True) as conn:
            wait_caught_up(conn, ready_db.slot, timeout=120)
        assert consumer.stop() == 0, consumer.output()[-3000:]
    finally:
        if consumer.proc and consumer.proc.poll() is None:
            consumer.proc.send_signal(signal.SIGKILL)
    counts = verify_exactly_once(ready_db.database_url)
    counts["faults"] = faults
    return counts


def test_sigkill_at_random_moments(
    ready_db: ConsumerSettings, tmp_path: Path, pg_server: Server
) -> None:
    counts = run_writer_with_faults(ready_db, tmp_path, "sigkill", pg_server)
    assert counts["faults"] >= 10
    assert counts["listings"] > 1000 and counts["price_changes"] > 1000


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_stream(
    ready_db: ConsumerSettings, tmp_path: Path, pg_server: Server, mode: str
) -> None:
    if pg_server.local is None:
        pytest.skip("the server is not ours to restart (TEST_DATABASE_URL or a container)")
    counts = run_writer_with_faults(ready_db, tmp_path, mode, pg_server)
    assert counts["listings"] > 1000
    log = (tmp_path / "consumer.log").read_text()
    assert "reconnecting in" in log, "the consumer never saw the restart"


