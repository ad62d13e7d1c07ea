"""Every row of DESIGN.md's event -> job table, through a real server and a real consumer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from marketplace import (
    NEW_OWNER,
    SELLER,
    add_listing,
    add_name,
    add_offer,
    job_count,
    jobs,
)
from support import wait_caught_up, wait_until

from wal_consumer.consumer import Consumer
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings


@pytest.fixture(params=["superuser", "grails_consumer"])
def consumer(ready_db: ConsumerSettings, request: pytest.FixtureRequest) -> Iterator[Consumer]:
    """The consumer as the test server's superuser, and as the least-privileged role."""
    settings = ready_db
    if request.param != "superuser":
        setup(ready_db, roles=(request.param, "grails_worker"))
        settings = ready_db.model_copy(update={
            "database_url": ready_db.database_url.replace("postgres@", f"{request.param}@", 1)
        })
    stop = threading.Event()
    consumer = Consumer(settings, stop)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # surfaced by the fixture's teardown
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield consumer
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "consumer did not stop within 30 s"
    assert not errors, errors


def test_listing_insert_makes_notify_sync_and_expiry(
    consumer: Consumer, conn: psycopg.Connection, ready_db: ConsumerSettings
) -> None:
    name_id = add_name(conn, "alice.eth")
    expires = datetime(2031, 1, 2, 3, 4, 5, 123456)
    listing_id = add_listing(conn, name_id, "1230000000000000000", expires_at=expires)
    found = wait_until(lambda: len(jobs(conn)) >= 3 and jobs(conn), what="3 jobs")
    by_task = {j["task_name"]: j for j in found}
    assert set(by_task) == {"notify-watchers", "sync-ens-data", "expire-orders"}
    notify = by_task["notify-watchers"]
    assert notify["queue_name"] == "notifications"
    assert notify["args"]["event"] == "new-listing"
    assert notify["args"]["listing_id"] == listing_id
    assert notify["args"]["ens_name_id"] == name_id
    assert notify["args"]["price_wei"] == "1230000000000000000"
    assert notify["args"]["seller_address"] == SELLER.lower()
    sync = by_task["sync-ens-data"]
    assert sync["queue_name"] == "ens-sync" and sync["priority"] > 0
    assert sync["args"] == {
        "ens_name_id": name_id, "reason": "new-listing", "event_key": notify["args"]["event_key"]
    }
    expire = by_task["expire-orders"]
    assert expire["queue_name"] == "expiry"
    assert expire["scheduled_at"] == expires.replace(tzinfo=UTC)
    assert expire["args"]["type"] == "listing" and expire["args"]["id"] == listing_id
    assert len({j["args"]["event_key"] for j in found}) == 1


def test_listing_without_expiry_and_inactive_listing(
    consumer: Consumer, conn: psycopg.Connection, ready_db: ConsumerSettings
) -> None:
    name_id = add_name(conn, "bob.eth")
    add_listing(conn, name_id, status="draft")
    add_listing(conn, name_id, expires_at=None)
    wait_caught_up(conn, ready_db.slot)
    assert sorted(j["task_name"] for j in jobs(conn)) == ["notify-watchers", "sync-ens-data"]


def test_listing_updates(
    consumer: Consumer, conn: psycopg.Connection, ready_db: ConsumerSettings
) -> None:
    name_id = add_name(conn, "carol.eth")
    expires = datetime(2030, 5, 5, 12, 0, 0)
    listing_id = add_listing(conn, name_id, "1000", expires_at=expires)
    wait_caught_up(conn, ready_db.slot)
    baseline = job_count(conn)
    # no route reads these columns / values did not change
    conn.execute("UPDATE listings SET updated_at = now(), order_data = '{\"x\": 1}' WHERE id = %s",
                 [listing_id])
    conn.execute("UPDATE listings SET price_wei = '1000' WHERE id = %s", [listing_id])
    wait_caught_up(conn, ready_db.slot)
    assert job_count(conn) == baseline
    conn.execute("UPDATE listings SET price_wei = '2500' WHERE id = %s", [listing_id])
    new_expiry = expires + timedelta(days=3)
    conn.execute("UPDATE listings SET expires_at = %s WHERE id = %s", [new_expiry, listing_id])
    conn.execute("UPDATE listings SET status = 'sold' WHERE id = %s", [listing_id])
    wait_caught_up(conn, ready_db.slot)
    new = jobs(conn)[baseline:]
    assert [(j["task_name"], j["args"].get("event")) for j in new] == [
        ("notify-watchers", "price-change"),
        ("expire-orders", None),
        ("notify-watchers", "sale"),
    ]
    assert new[0]["args"]["previous_price_wei"] == "1000"
    assert new[0]["args"]["price_wei"] == "2500"
    assert new[1]["scheduled_at"] == new_expiry.replace(tzinfo=UTC)
    assert new[2]["args"]["listing_id"] == listing_id
    assert new[2]["args"]["price_wei"] == "2500"
    # a sold listing changing again makes nothing; neither does cancel
    other = add_listing(conn, name_id, "7")
    wait_caught_up(conn, ready_db.slot)
    before = job_count(conn)
    conn.execute("UPDATE listings SET price_wei = '9' WHERE id = %s", [listing_id])
    conn.execute("UPDATE listings SET status = 'cancelled' WHERE id = %s", [other])
    wait_caught_up(conn, ready_db.slot)
    assert job_count(conn) == before


def test_offers(consumer: Consumer, conn: psycopg.Connection, ready_db: ConsumerSettings) -> None:
    name_id = add_name(conn, "dave.eth")
    expires = datetime(2029, 1, 1)
    offer_id = add_offer(conn, name_id, "42", expires_at=expires)
    add_offer(conn, name_id, status="accepted")
    wait_caught_up(conn, ready_db.slot)
    found = jobs(conn)
    assert [(j["task_name"], j["args"].get("event")) for j in found] == [
        ("notify-watchers", "new-offer"), ("expire-orders", None)
    ]
    assert found[0]["args"]["offer_id"] == offer_id
    assert found[0]["args"]["amount_wei"] == "42"
    assert found[1]["args"]["type"] == "offer"
    assert found[1]["scheduled_at"] == expires.replace(tzinfo=UTC)
    later = expires + timedelta(hours=1)
    conn.execute("UPDATE offers SET expires_at = %s WHERE id = %s", [later, offer_id])
    conn.execute("UPDATE offers SET offer_amount_wei = '43' WHERE id = %s", [offer_id])
    conn.execute("UPDATE offers SET status = 'accepted' WHERE id = %s", [offer_id])
    wait_caught_up(conn, ready_db.slot)
    new = jobs(conn)[2:]
    assert [j["task_name"] for j in new] == ["expire-orders"]
    assert new[0]["scheduled_at"] == later.replace(tzinfo=UTC)


def test_owner_change(consumer: Consumer, conn: psycopg.Connection,
                      ready_db: ConsumerSettings) -> None:
    name_id = add_name(conn, "erin.eth", owner=SELLER)
    conn.execute("UPDATE ens_names SET owner_address = lower(owner_address) WHERE id = %s",
                 [name_id])  # case only: no change
    conn.execute("UPDATE ens_names SET metadata = '{\"avatar\": \"x\"}' WHERE id = %s", [name_id])
    conn.execute("UPDATE ens_names SET owner_address = %s WHERE id = %s", [NEW_OWNER, name_id])
    wait_caught_up(conn, ready_db.slot)
    found = jobs(conn)
    assert len(found) == 1
    assert found[0]["task_name"] == "update-ownership"
    assert found[0]["queue_name"] == "ownership"
    args = found[0]["args"]
    assert (args["ens_name_id"], args["previous_owner"], args["new_owner"]) == (
        name_id, SELLER.lower(), NEW_OWNER.lower()
    )


def test_changes_outside_the_table_make_nothing(
    consumer: Consumer, conn: psycopg.Connection, ready_db: ConsumerSettings
) -> None:
    name_id = add_name(conn, "frank.eth")
    conn.execute("INSERT INTO users (address, email) VALUES ('0x1', 'a@example.com')")
    conn.execute("INSERT INTO watchlist (user_id, ens_name_id) SELECT id, %s FROM users",
                 [name_id])
    conn.execute("DELETE FROM ens_names WHERE id = %s", [name_id])
    wait_caught_up(conn, ready_db.slot)
    assert job_count(conn) == 0


def test_queue_tables_are_not_published(ready_db: ConsumerSettings,
                                        conn: psycopg.Connection) -> None:
    published = {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = %s", [ready_db.publication]
    )}
    assert published == {"listings", "offers", "ens_names"}


@pytest.mark.parametrize("price_type", ["numeric", "numeric(78,0)"])
@pytest.mark.parametrize("ts_type", ["timestamptz", "timestamp"])
def test_routes_work_with_other_column_types(
    settings: ConsumerSettings, conn: psycopg.Connection, price_type: str, ts_type: str
) -> None:
    setup(settings, dev_schema=True)
    conn.execute(f"ALTER TABLE listings ALTER COLUMN price_wei TYPE {price_type}"
                 " USING price_wei::numeric")
    conn.execute(f"ALTER TABLE listings ALTER COLUMN expires_at TYPE {ts_type}")
    conn.execute("SET TIME ZONE 'Asia/Kolkata'")
    stop = threading.Event()
    thread = threading.Thread(target=Consumer(settings, stop).run, daemon=True)
    thread.start()
    try:
        name_id = add_name(conn, "grace.eth")
        expires = datetime(2032, 3, 4, 5, 6, 7, tzinfo=UTC)
        listing_id = add_listing(conn, name_id, "1000000000000000000000", expires_at=expires)
        conn.execute("UPDATE listings SET price_wei = price_wei WHERE id = %s", [listing_id])
        conn.execute("UPDATE listings SET price_wei = %s WHERE id = %s",
                     [Decimal("2000000000000000000000"), listing_id])
        wait_caught_up(conn, settings.slot)
    finally:
        stop.set()
        thread.join(30)
    found = jobs(conn)
    assert [j["task_name"] for j in found] == [
        "notify-watchers", "sync-ens-data", "expire-orders", "notify-watchers"
    ]
    expected_expiry = expires if ts_type == "timestamptz" else expires.replace(
        tzinfo=None) + timedelta(hours=5, minutes=30)  # naive column stores Kolkata wall time
    assert found[2]["scheduled_at"] == (
        expected_expiry if ts_type == "timestamptz" else expected_expiry.replace(tzinfo=UTC)
    )
    assert found[3]["args"]["previous_price_wei"] == "1000000000000000000000"
    assert found[3]["args"]["price_wei"] == "2000000000000000000000"
