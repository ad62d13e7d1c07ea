"""The handler worker (`job-handlers worker`, a real subprocess) on expiry and ownership, with
the consumer running where the marketplace's writes must become jobs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from marketplace import NEW_OWNER, SELLER, add_listing, add_name, add_offer, add_user, jobs
from support import (
    ROOT,
    WORKER,
    ConsumerProcess,
    consumer_env,
    running_consumer,
    wait_until,
)

from wal_consumer.enqueue import BatchWriter
from wal_consumer.routes import EXPIRE_ORDERS, UPDATE_OWNERSHIP, JobRequest
from wal_consumer.settings import ConsumerSettings

FAST = {"JOB_POLL_INTERVAL_S": "0.1", "JOB_RETRY_BASE_S": "0.1", "JOB_RETRY_CAP_S": "0.5"}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def defer(dsn: str, *requests: JobRequest) -> None:
    with psycopg.connect(dsn) as conn:
        BatchWriter(conn, "grails_workers").write_jobs(list(requests))
        conn.commit()


def row(conn: psycopg.Connection, table: str, row_id: int) -> tuple[Any, ...]:
    result = conn.execute(f"SELECT status, updated_at, expires_at FROM {table} WHERE id = %s",  # noqa: S608
                          [row_id]).fetchone()
    assert result is not None
    return tuple(result)


def job_status(conn: psycopg.Connection, task: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT status::text FROM procrastinate_jobs WHERE task_name = %s ORDER BY id", [task])]


@pytest.fixture
def daemons(ready_db: ConsumerSettings, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = consumer_env(ready_db.database_url, **FAST)
    with running_consumer(env, tmp_path / "consumer.log"), \
            running_consumer(env, tmp_path / "worker.log", WORKER):
        yield env


def test_listing_and_offer_expire_at_expires_at_not_before(
    daemons: dict[str, str], conn: psycopg.Connection
) -> None:
    name_id = add_name(conn, "expiry.eth")
    expires = utcnow() + timedelta(seconds=2)
    listing = add_listing(conn, name_id, expires_at=expires)
    offer = add_offer(conn, name_id, expires_at=expires)
    assert row(conn, "listings", listing)[0] == "active"
    wait_until(lambda: row(conn, "listings", listing)[0] == "expired"
               and row(conn, "offers", offer)[0] == "expired", timeout=15,
               what="listing and offer to expire")
    for table, order in (("listings", listing), ("offers", offer)):
        _, updated_at, expires_at = row(conn, table, order)
        assert updated_at >= expires_at, f"{table} expired before expires_at"
        assert updated_at - expires_at < timedelta(seconds=3), updated_at - expires_at

    # idempotent: the same job again changes nothing
    before = row(conn, "listings", listing)
    defer(daemons["DATABASE_URL"], JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": listing}))
    wait_until(lambda: job_status(conn, EXPIRE_ORDERS).count("succeeded") == 3,
               what="repeated job to run")
    assert row(conn, "listings", listing) == before

    # a job that runs early does nothing
    later = add_listing(conn, name_id, expires_at=utcnow() + timedelta(hours=1))
    defer(daemons["DATABASE_URL"], JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": later}))
    wait_until(lambda: job_status(conn, EXPIRE_ORDERS).count("succeeded") == 4,
               what="early job to run")
    assert row(conn, "listings", later)[0] == "active"


def test_listing_whose_expiry_moved_later_is_not_expired_at_the_old_time(
    daemons: dict[str, str], conn: psycopg.Connection
) -> None:
    name_id = add_name(conn, "moved.eth")
    first = utcnow() + timedelta(seconds=1)
    listing = add_listing(conn, name_id, expires_at=first)
    moved = utcnow() + timedelta(seconds=5)
    conn.execute("UPDATE listings SET expires_at = %s WHERE id = %s", [moved, listing])
    wait_until(lambda: job_status(conn, EXPIRE_ORDERS)[:1] == ["succeeded"], timeout=10,
               what="the job for the old time to run")
    assert row(conn, "listings", listing)[0] == "active"
    wait_until(lambda: row(conn, "listings", listing)[0] == "expired", timeout=15,
               what="expiry at the new time")
    _, updated_at, _ = row(conn, "listings", listing)
    assert updated_at >= moved


def test_batch_net_expires_orders_whose_jobs_were_missed(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    # No consumer: these orders have no scheduled jobs at all.
    name_id = add_name(conn, "net.eth")
    overdue = utcnow() - timedelta(minutes=2)
    listings = [add_listing(conn, name_id, expires_at=overdue) for _ in range(3)]
    offers = [add_offer(conn, name_id, expires_at=overdue) for _ in range(2)]
    recent = add_listing(conn, name_id, expires_at=utcnow() - timedelta(seconds=1))
    future = add_listing(conn, name_id, expires_at=utcnow() + timedelta(hours=1))
    env = consumer_env(ready_db.database_url, **FAST, JOB_BATCH_EXPIRE_CRON="* * * * * *")
    with running_consumer(env, tmp_path / "worker.log", WORKER) as worker:
        wait_until(lambda: all(row(conn, "listings", i)[0] == "expired" for i in listings)
                   and all(row(conn, "offers", i)[0] == "expired" for i in offers),
                   timeout=20, what="safety net")
        wait_until(lambda: "safety net expired 2 offer(s)" in worker.output(), what="log")
    assert "safety net expired 3 listing(s) overdue by more than 30 s" in worker.output()
    assert row(conn, "listings", future)[0] == "active"
    assert row(conn, "listings", recent)[0] == "active"  # within the grace: its job's business


def test_ownership_cascade(daemons: dict[str, str], conn: psycopg.Connection) -> None:
    previous = "0x00000000000000000000000000000000000000b9"
    add_user(conn, SELLER, "seller@example.com")
    add_user(conn, previous, "previous@example.com")
    name_id = add_name(conn, "owned.eth", owner=SELLER)
    mine = [add_listing(conn, name_id, seller=SELLER) for _ in range(2)]
    stale = add_listing(conn, name_id, seller=previous)
    new_owners = add_listing(conn, name_id, seller=NEW_OWNER.upper().replace("0X", "0x"))
    sold = add_listing(conn, name_id, seller=SELLER, status="sold")
    conn.execute("UPDATE ens_names SET owner_address = %s WHERE id = %s", [NEW_OWNER, name_id])
    wait_until(lambda: job_status(conn, UPDATE_OWNERSHIP) == ["succeeded"], timeout=15,
               what="update-ownership to run")
    statuses = {i: row(conn, "listings", i)[0] for i in [*mine, stale, new_owners, sold]}
    assert statuses == {mine[0]: "cancelled", mine[1]: "cancelled", stale: "cancelled",
                        new_owners: "active", sold: "sold"}
    notes = sorted((j["args"]["recipient_address"], j["args"]["listing_ids"])
                   for j in jobs(conn, "send-notification"))
    assert notes == sorted([(SELLER.lower(), sorted(mine)), (previous, [stale])])
    notification = jobs(conn, "send-notification")[0]
    assert notification["args"]["event"] == "listing-cancelled-ownership-change"
    assert notification["args"]["channel"] == "email"
    assert notification["queue_name"] == "notifications"

    # the same job again, and a stale one (its new owner is not the owner any more)
    url = daemons["DATABASE_URL"]
    defer(url, JobRequest(UPDATE_OWNERSHIP, {"ens_name_id": name_id, "new_owner": NEW_OWNER,
                                             "previous_owner": SELLER}))
    defer(url, JobRequest(UPDATE_OWNERSHIP, {"ens_name_id": name_id, "new_owner": previous,
                                             "previous_owner": SELLER}))
    wait_until(lambda: job_status(conn, UPDATE_OWNERSHIP) == ["succeeded"] * 3,
               what="repeated and stale jobs to run")
    assert row(conn, "listings", new_owners)[0] == "active"
    assert len(jobs(conn, "send-notification")) == 2


def dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "job_handlers", "dlq", *args], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_failing_jobs_end_in_the_dlq_with_their_error_and_can_be_retried(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    name_id = add_name(conn, "frozen.eth")
    frozen = add_listing(conn, name_id, expires_at=utcnow() - timedelta(seconds=1))
    conn.execute("CREATE FUNCTION freeze_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                 " RAISE EXCEPTION 'listing % is frozen by the test', NEW.id; END $$")
    conn.execute(f"CREATE TRIGGER freeze_row BEFORE UPDATE ON listings FOR EACH ROW"
                 f" WHEN (OLD.id = {frozen}) EXECUTE FUNCTION freeze_row()")
    url = ready_db.database_url
    defer(url,
          JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": frozen}),
          JobRequest(EXPIRE_ORDERS, {"type": "auction", "id": frozen}),
          JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": 999999}))
    env = consumer_env(url, **FAST)
    with running_consumer(env, tmp_path / "worker.log", WORKER):
        wait_until(lambda: job_status(conn, EXPIRE_ORDERS) == ["failed"] * 3, timeout=30,
                   what="all three jobs to fail")
        failed = {j["args"]["id"] if j["args"]["type"] != "auction" else "bad": j
                  for j in json.loads(dlq(env, "list", "--json").stdout)}
        assert failed[frozen]["attempts"] == 4 and failed[frozen]["errors"] == 4
        assert "frozen by the test" in failed[frozen]["error"]
        assert failed["bad"]["errors"] == 1 and "auction" in failed["bad"]["error"]
        assert failed[999999]["errors"] == 1
        assert "listing 999999 does not exist" in failed[999999]["error"]
        human = dlq(env, "list").stdout
        assert "frozen by the test" in human and "PermanentJobError" in human

        conn.execute("DROP TRIGGER freeze_row ON listings")
        retried = dlq(env, "retry", str(failed[frozen]["id"]))
        assert retried.returncode == 0 and "retried 1 job(s)" in retried.stdout
        wait_until(lambda: row(conn, "listings", frozen)[0] == "expired", timeout=15,
                   what="retried job to expire the listing")
    purged = dlq(env, "purge", "--all")
    assert "purged 2 failed job(s)" in purged.stdout
    assert json.loads(dlq(env, "list", "--json").stdout) == []


def test_job_of_a_killed_worker_is_rescued_and_completed(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    name_id = add_name(conn, "rescue.eth")
    listing = add_listing(conn, name_id, expires_at=utcnow() - timedelta(seconds=1))
    env = consumer_env(ready_db.database_url, **FAST, JOB_HEARTBEAT_S="1",
                       JOB_STALLED_AFTER_S="4", JOB_RESCUE_CRON="* * * * * *")
    blocker = psycopg.connect(ready_db.database_url)
    blocker.execute("SELECT 1 FROM listings WHERE id = %s FOR UPDATE", [listing])
    first = ConsumerProcess(env, tmp_path / "w1.log", command=WORKER).start()
    try:
        defer(ready_db.database_url, JobRequest(EXPIRE_ORDERS, {"type": "listing",
                                                                "id": listing}))
        wait_until(lambda: job_status(conn, EXPIRE_ORDERS) == ["doing"], what="job running")
        first.kill()
        killed_at = datetime.now(UTC)
        blocker.rollback()
        with running_consumer(env, tmp_path / "w2.log", WORKER) as second:
            wait_until(lambda: row(conn, "listings", listing)[0] == "expired", timeout=60,
                       what="rescued job to complete")
            wait_until(lambda: job_status(conn, EXPIRE_ORDERS) == ["succeeded"], timeout=10,
                       what="the rescued job to be marked succeeded")
            assert datetime.now(UTC) - killed_at < timedelta(seconds=60)
            assert "rescuing job" in second.output()
    finally:
        blocker.close()
        if first.proc and first.proc.poll() is None:
            first.proc.kill()


def test_retention_removes_old_finished_jobs(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    url = ready_db.database_url
    defer(url, *[JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": 10**6 + i})
                 for i in range(3)])
    defer(url, JobRequest(EXPIRE_ORDERS, {"type": "offer", "id": 1}))  # will fail
    conn.execute("INSERT INTO ens_names (name) VALUES ('x.eth')")
    conn.execute("INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei) "
                 "VALUES (1, '0x1', '1')")
    env = consumer_env(url, **FAST)
    with running_consumer(env, tmp_path / "w.log", WORKER):
        wait_until(lambda: sorted(job_status(conn, EXPIRE_ORDERS)) ==
                   ["failed"] * 3 + ["succeeded"], what="jobs to finish")
    ids = {r[1]: r[0] for r in conn.execute(
        "SELECT id, args->>'id' FROM procrastinate_jobs WHERE task_name = %s", [EXPIRE_ORDERS])}
    ages = {ids["1"]: "8 days", ids[str(10**6)]: "8 days", ids[str(10**6 + 1)]: "31 days"}
    for job_id, age in ages.items():
        conn.execute("UPDATE procrastinate_events SET at = now() - %s::interval"
                     " WHERE job_id = %s", [age, job_id])
    env["JOB_RETENTION_CRON"] = "* * * * * *"
    with running_consumer(env, tmp_path / "w2.log", WORKER):
        wait_until(lambda: ids["1"] not in {r[0] for r in conn.execute(
            "SELECT id FROM procrastinate_jobs")}, timeout=20, what="retention to run")
    left = {r[0] for r in conn.execute("SELECT id FROM procrastinate_jobs")}
    assert ids[str(10**6)] in left            # failed 8 days ago: kept (30 days for failed)
    assert ids[str(10**6 + 1)] not in left    # failed 31 days ago: removed
    assert ids[str(10**6 + 2)] in left        # failed just now: kept


def test_sigterm_stops_the_worker_cleanly(ready_db: ConsumerSettings, tmp_path: Path) -> None:
    env = consumer_env(ready_db.database_url, **FAST)
    early = ConsumerProcess(env, tmp_path / "early.log", command=WORKER).start()
    wait_until(lambda: "worker for queues" in early.output(), what="worker starting")
    early.signal(signal.SIGTERM)  # before procrastinate's worker runs: still a clean exit
    assert early.wait(30) == 0, early.output()

    worker = ConsumerProcess(env, tmp_path / "w.log", command=WORKER).start()
    wait_until(lambda: "Starting worker on" in worker.output(), what="worker started")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert "worker stopped" in worker.output()


def test_due_expiry_jobs_are_claimed_in_batches_and_a_poisoned_one_fails_alone(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    name_id = add_name(conn, "batch.eth")
    overdue = utcnow() - timedelta(seconds=5)
    conn.execute(
        "INSERT INTO listings (ens_name_id, seller_address, price_wei, expires_at)"
        " SELECT %s, '0xs', '1', %s FROM generate_series(1, 300)", [name_id, overdue])
    listing_ids = [r[0] for r in conn.execute("SELECT id FROM listings ORDER BY id")]
    poisoned = listing_ids[10]
    conn.execute("CREATE FUNCTION freeze_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                 " RAISE EXCEPTION 'listing % is frozen by the test', NEW.id; END $$")
    conn.execute(f"CREATE TRIGGER freeze_row BEFORE UPDATE ON listings FOR EACH ROW"
                 f" WHEN (OLD.id = {poisoned}) EXECUTE FUNCTION freeze_row()")
    defer(ready_db.database_url,
          *[JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": i}) for i in listing_ids],
          JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": 10**9}),
          JobRequest(EXPIRE_ORDERS, {"type": "listing", "id": "x"}))
    env = consumer_env(ready_db.database_url, **FAST, JOB_EXPIRE_BATCH="50")
    with running_consumer(env, tmp_path / "w.log", WORKER) as worker:
        wait_until(lambda: not {"todo", "doing"} & set(job_status(conn, EXPIRE_ORDERS)),
                   timeout=60, what="every job to finish")
    statuses = dict(conn.execute(
        "SELECT args->>'id', status::text FROM procrastinate_jobs WHERE task_name = %s",
        [EXPIRE_ORDERS]).fetchall())
    assert statuses.pop(str(poisoned)) == "failed"
    assert statuses.pop(str(10**9)) == "failed" and statuses.pop("x") == "failed"
    assert set(statuses.values()) == {"succeeded"}
    assert {r[0] for r in conn.execute("SELECT status FROM listings WHERE id <> %s",
                                       [poisoned])} == {"expired"}
    events = conn.execute(
        "SELECT count(*) FILTER (WHERE e.type = 'started'),"
        " count(*) FILTER (WHERE e.type = 'succeeded') FROM procrastinate_events e"
        " JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.status = 'succeeded'"
        " AND j.task_name = %s", [EXPIRE_ORDERS]).fetchone()
    assert events == (299, 299)  # each job started and succeeded once, batched or not
    assert "due sibling job(s)" in worker.output()
