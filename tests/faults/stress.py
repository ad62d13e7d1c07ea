"""A writer that commits many marketplace changes, and the exactly-once check that reads what
must have been enqueued back from the rows themselves (see test_exactly_once's docstring)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import datetime

import psycopg
from support import wait_until

BASE_PRICE = 10**18


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
    # every listing is on one name, and nothing works the ens-sync queue: its queueing lock
    # (sync-ens-data:<ens_name_id>) leaves exactly one pending sync
    assert syncs == (1 if listings else 0)
    assert set(new_listing) == {lid for lid, _ in listings}
    return {"listings": len(listings), "price_changes": sum(price_change.values()),
            "jobs": len(jobs)}
