"""`wal-consumer demo`: the whole path on a throwaway database, in about ten seconds.

Starts a local PostgreSQL (unless DATABASE_URL is set), runs setup with the development copy of
the marketplace tables, starts the consumer, then writes as the marketplace's API and indexer
would: a listing, an offer, a price change, a sale, an owner change. After each write it waits
for the jobs that write calls for and prints how long they took to appear, then lists them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import psycopg

from wal_consumer.consumer import Consumer
from wal_consumer.localpg import LocalPostgres
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

SELLER = "0x1111111111111111111111111111111111111111"
BUYER = "0x2222222222222222222222222222222222222222"
NEW_OWNER = "0x3333333333333333333333333333333333333333"
Step = Callable[[psycopg.Connection], None]


def _progress(conn: psycopg.Connection) -> tuple[int, int]:
    """(jobs in the queue, source transactions the consumer has checkpointed)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM procrastinate_jobs),"
        " (SELECT coalesce(sum(transactions), 0) FROM grails_workers.consumer_checkpoint)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _wait_for(conn: psycopg.Connection, jobs: int, transactions: int, timeout: float = 15) -> float:
    started = time.monotonic()
    while _progress(conn) < (jobs, transactions):
        if time.monotonic() - started > timeout:
            raise RuntimeError(
                f"demo: expected {jobs} jobs and {transactions} transactions within {timeout}s,"
                f" have {_progress(conn)}"
            )
        time.sleep(0.002)
    return time.monotonic() - started


def _steps(ids: dict[str, int]) -> list[tuple[str, int, Step]]:
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)

    def insert(sql: str, params: list[object], key: str) -> Step:
        def run(conn: psycopg.Connection) -> None:
            row = conn.execute(sql + " RETURNING id", params).fetchone()
            assert row is not None
            ids[key] = int(row[0])
        return run

    def update(sql: str, key: str, *values: object) -> Step:
        def run(conn: psycopg.Connection) -> None:
            conn.execute(sql.encode(), [*values, ids[key]])
        return run

    return [
        ("indexer: register alice.eth", 0, insert(
            "INSERT INTO ens_names (name, owner_address) VALUES ('alice.eth', %s)", [SELLER],
            "name")),
        ("API: list alice.eth for 1.5 ETH", 3, lambda c: insert(
            "INSERT INTO listings (ens_name_id, seller_address, price_wei, expires_at)"
            " VALUES (%s, %s, '1500000000000000000', %s)", [ids["name"], SELLER, expires],
            "listing")(c)),
        ("API: offer 1.2 ETH on alice.eth", 2, lambda c: insert(
            "INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei, expires_at)"
            " VALUES (%s, %s, '1200000000000000000', %s)", [ids["name"], BUYER, expires],
            "offer")(c)),
        ("API: price change to 1.4 ETH", 1, update(
            "UPDATE listings SET price_wei = %s, updated_at = now() WHERE id = %s", "listing",
            "1400000000000000000")),
        ("API: listing sold", 1, update(
            "UPDATE listings SET status = 'sold', updated_at = now() WHERE id = %s", "listing")),
        ("API: list alice.eth again", 3, lambda c: insert(
            "INSERT INTO listings (ens_name_id, seller_address, price_wei, expires_at)"
            " VALUES (%s, %s, '2000000000000000000', %s)", [ids["name"], SELLER, expires],
            "listing2")(c)),
        ("indexer: alice.eth transferred", 1, update(
            "UPDATE ens_names SET owner_address = %s, updated_at = now() WHERE id = %s", "name",
            NEW_OWNER)),
        ("API: touch a listing (no job)", 0, update(
            "UPDATE listings SET updated_at = now() WHERE id = %s", "listing2")),
        ("indexer: register bob.eth", 0, insert(
            "INSERT INTO ens_names (name, owner_address) VALUES ('bob.eth', %s)", [BUYER],
            "name2")),
        ("API: list bob.eth, expiring in 3 s", 3, lambda c: insert(
            "INSERT INTO listings (ens_name_id, seller_address, price_wei, expires_at)"
            " VALUES (%s, %s, '900000000000000000', (now() at time zone 'UTC')"
            " + interval '3 s')", [ids["name2"], BUYER], "short")(c)),
    ]


def _print_jobs(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT id, task_name, queue_name, priority, scheduled_at, args"
        " FROM procrastinate_jobs ORDER BY id"
    ).fetchall()
    print(f"\n{len(rows)} jobs in procrastinate_jobs:")
    print(f"{'id':>3}  {'task':<17} {'queue':<14} {'prio':>4}  {'scheduled_at':<20} args")
    for job_id, task, queue, priority, scheduled_at, args in rows:
        when = scheduled_at.strftime("%Y-%m-%d %H:%M:%S") if scheduled_at else "now"
        print(f"{job_id:>3}  {task:<17} {queue:<14} {priority:>4}  {when:<20} "
              f"{json.dumps(args, separators=(',', ':'))}")


def _run_handlers(url: str, ids: dict[str, int], stack: ExitStack) -> None:
    """Start `job-handlers worker` and show what it does with the queued jobs."""
    env = {**os.environ, "DATABASE_URL": url, "JOB_POLL_INTERVAL_S": "0.2"}
    log = stack.enter_context(tempfile.TemporaryFile())
    worker = subprocess.Popen([sys.executable, "-m", "job_handlers", "worker"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)

    def stop_worker() -> None:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)

    stack.callback(stop_worker)
    print("\nstarted job-handlers worker (queues expiry, ownership, maintenance)")
    with psycopg.connect(url, autocommit=True) as conn:
        def status(listing: str) -> str:
            row = conn.execute("SELECT status FROM listings WHERE id = %s",
                               [ids[listing]]).fetchone()
            return str(row[0]) if row else "missing"

        deadline = time.monotonic() + 30
        while (status("listing2"), status("short")) != ("cancelled", "expired"):
            if time.monotonic() > deadline or worker.poll() is not None:
                log.seek(0)
                raise RuntimeError("demo: the worker did not finish in 30 s:\n"
                                   + log.read().decode(errors="replace")[-2000:])
            time.sleep(0.05)
        late = conn.execute(
            "SELECT extract(epoch FROM updated_at - expires_at) FROM listings WHERE id = %s",
            [ids["short"]]).fetchone()
        print("  update-ownership: alice.eth's relisting cancelled (seller is not the new "
              "owner); send-notification queued for the seller")
        print(f"  expire-orders:    bob.eth's listing expired "
              f"{float(late[0]) if late else 0:.2f} s after its expires_at")
        rows = conn.execute(
            "SELECT j.task_name, j.status::text, count(*),"
            " round(avg(extract(epoch FROM s.at - st.at)) * 1000, 1)"
            " FROM procrastinate_jobs j"
            " LEFT JOIN procrastinate_events st ON st.job_id = j.id AND st.type = 'started'"
            " LEFT JOIN procrastinate_events s ON s.job_id = j.id AND s.type = 'succeeded'"
            " GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        print("\njobs by task and status (avg run time of succeeded jobs):")
        for task, job_status, count, avg_ms in rows:
            run = f"{avg_ms} ms" if avg_ms is not None else "-"
            print(f"  {task:<20} {job_status:<10} {count:>3}  {run}")


def run_demo(keep_running: bool = False) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    with ExitStack() as stack:
        url = os.environ.get("DATABASE_URL")
        if url:
            print(f"using DATABASE_URL ({url.split('@')[-1]})")
        else:
            started = time.monotonic()
            cluster = LocalPostgres.create()
            stack.callback(cluster.destroy)
            cluster.start()
            url = cluster.dsn()
            print(f"started a throwaway PostgreSQL at {url} "
                  f"({time.monotonic() - started:.1f} s)")
        settings = ConsumerSettings(database_url=url)  # type: ignore[call-arg]
        report = setup(settings, dev_schema=True)
        print("setup:" + "".join(f"\n  - {a}" for a in report.actions) if report.actions
              else "setup: nothing to do")

        stop = threading.Event()
        thread = threading.Thread(target=Consumer(settings, stop).run, name="consumer")
        thread.start()
        stack.callback(thread.join, 30)
        stack.callback(stop.set)

        with psycopg.connect(url, autocommit=True) as conn:
            expected, transactions = _progress(conn)
            ids: dict[str, int] = {}
            print("\nmarketplace writes -> jobs (latency = commit until the jobs are visible)")
            for title, new_jobs, step in _steps(ids):
                step(conn)
                expected += new_jobs
                transactions += 1
                latency = _wait_for(conn, expected, transactions)
                print(f"  {title:<36} {new_jobs} job(s)  {latency * 1000:7.1f} ms")
            _print_jobs(conn)
        _run_handlers(url, ids, stack)
        print("\nnot yet handled: notify-watchers, send-notification and sync-ens-data wait for "
              "their handlers (issues 5 and 6)")
        if keep_running:
            print(f"\nconsumer still running on {url}; Ctrl-C to stop")
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    print("\ndemo finished: worker and consumer stopped cleanly")
    return 0
