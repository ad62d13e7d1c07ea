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
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from support import ConsumerProcess, Server, consumer_env, wait_until

from wal_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.faults
BASE_PRICE = 10**18
TARGET_CHANGES = 20_000


class Writer(threading.Thread):
    """Commits transactions of random listing inserts, price bumps and no-job updates."""

    def __init__(self, dsn: str, target_changes: int, seed: int):
        super().__init__(daemon=True)
        self.dsn = dsn
        self.target = target_changes
        self.rng = random.Random(seed)
        self.committed_changes = 0
        self.failures = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc

    def _connect(self) -> psycopg.Connection:
        def attempt() -> psycopg.Connection | None:
            try:
                return psycopg.connect(self.dsn, connect_timeout=2)
            except psycopg.OperationalError:
                return None
        return wait_until(attempt, timeout=60, what="writer reconnect")

    def _run(self) -> None:
        conn = self._connect()
        name_row = conn.execute(
            "INSERT INTO ens_names (name, owner_address) VALUES ('stress.eth', '0x1') RETURNING id"
        ).fetchone()
        assert name_row is not None
        name_id = name_row[0]
        conn.commit()
        expires = datetime(2035, 1, 1)
        while self.committed_changes < self.target:
            inserts = self.rng.randint(0, 15)
            bumps = self.rng.randint(0, 15)
            touches = self.rng.randint(0, 15)
            try:
                with conn.transaction():
                    if inserts:
                        conn.execute(
                            "INSERT INTO listings (ens_name_id, seller_address, price_wei,"
                            " expires_at) SELECT %s, '0xseller', %s, %s + g * interval '1 s'"
                            " FROM generate_series(1, %s) g",
                            [name_id, str(BASE_PRICE), expires, inserts],
                        )
                    if bumps:
                        conn.execute(
                            "UPDATE listings SET price_wei = (price_wei::numeric + 1)::text"
                            " WHERE id IN (SELECT id FROM listings ORDER BY random() LIMIT %s)",
                            [bumps],
                        )
                    if touches:
                        conn.execute(
                            "UPDATE listings SET updated_at = now()"
                            " WHERE id IN (SELECT id FROM listings ORDER BY random() LIMIT %s)",
                            [touches],
                        )
                self.committed_changes += inserts + bumps + touches
            except psycopg.OperationalError:
                self.failures += 1
                conn.close()
                conn = self._connect()
            time.sleep(0.002)  # spread the writes over the fault window
        conn.close()


def verify_exactly_once(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        duplicates = conn.execute(
            "SELECT args->>'event_key', task_name, count(*) FROM procrastinate_jobs"
            " GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5"
        ).fetchall()
        assert not duplicates, f"doubled jobs: {duplicates}"
        listings = conn.execute(
            "SELECT id, price_wei::numeric - %s FROM listings", [BASE_PRICE]
        ).fetchall()
        jobs = conn.execute(
            "SELECT task_name, args->>'event', (args->>'listing_id')::int, (args->>'id')::int"
            " FROM procrastinate_jobs"
        ).fetchall()
    new_listing = Counter(lid for t, e, lid, _ in jobs if e == "new-listing")
    price_change = Counter(lid for t, e, lid, _ in jobs if e == "price-change")
    expiry = Counter(oid for t, _, _, oid in jobs if t == "expire-orders")
    syncs = sum(1 for t, *_ in jobs if t == "sync-ens-data")
    missing = [lid for lid, _ in listings if new_listing[lid] != 1 or expiry[lid] != 1]
    assert not missing, f"{len(missing)} listings without exactly one job set, e.g. {missing[:5]}"
    wrong_price = [(lid, int(b), price_change[lid]) for lid, b in listings
                   if price_change[lid] != int(b)]
    assert not wrong_price, f"price-change jobs != committed bumps: {wrong_price[:5]}"
    assert syncs == len(listings)
    assert set(new_listing) == {lid for lid, _ in listings}
    return {"listings": len(listings), "price_changes": sum(price_change.values()),
            "jobs": len(jobs)}


def wait_caught_up(dsn: str, slot: str, timeout: float = 120) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert target is not None
        wait_until(
            lambda: conn.execute(
                "SELECT greatest(end_lsn, advanced_lsn) >= %s FROM"
                " grails_workers.consumer_checkpoint WHERE slot_name = %s",
                [target[0], slot],
            ).fetchone() == (True,),
            timeout=timeout, interval=0.2, what="consumer to catch up with the writer",
        )


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
        wait_caught_up(ready_db.database_url, ready_db.slot)
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


