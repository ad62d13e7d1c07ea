"""The daemons' /metrics, /healthz and /readyz, scraped from real subprocesses while they work:
a consumer and its hot standby (as grails_consumer), a worker (as grails_worker)."""

from __future__ import annotations

import contextlib
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from marketplace import NEW_OWNER, SELLER, add_listing, add_name
from scrape import has, probe, scrape, value
from support import WORKER, consumer_env, running_consumer, wait_until

from wal_consumer.localpg import free_port
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

# the worker serves every queue but notifications and ens-sync, whose jobs stay queued
QUEUES = ("--queue", "expiry", "--queue", "ownership", "--queue", "maintenance")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_role(url: str, role: str) -> str:
    return url.replace("postgres@", f"{role}@", 1)


def moved(before: float, after: float, by: float = 1) -> bool:
    return after - before >= by


def test_scraped_metrics_move_as_the_daemons_work(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    setup(ready_db, roles=("grails_consumer", "grails_worker"))
    url = ready_db.database_url
    leader_port, standby_port, worker_port = free_port(), free_port(), free_port()

    def consumer_env_on(port: int) -> dict[str, str]:
        return consumer_env(as_role(url, "grails_consumer"), WAL_METRICS_PORT=str(port),
                            WAL_METRICS_HOST="127.0.0.1", WAL_METRICS_DB_INTERVAL_S="0")

    worker_env = consumer_env(
        as_role(url, "grails_worker"), JOB_METRICS_PORT=str(worker_port),
        JOB_METRICS_HOST="127.0.0.1", JOB_METRICS_DB_INTERVAL_S="0", JOB_POLL_INTERVAL_S="0.1",
        JOB_RETRY_BASE_S="0.05", JOB_RETRY_CAP_S="0.1", JOB_BATCH_EXPIRE_CRON="* * * * * *",
        JOB_EXPIRE_GRACE_S="2")

    # a listing whose cancellation always fails: update-ownership retries, then fails
    name_id = add_name(conn, "observed.eth", owner=SELLER)
    frozen = add_listing(conn, name_id, seller=SELLER)
    conn.execute("CREATE FUNCTION freeze_row() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                 " RAISE EXCEPTION 'listing % is frozen by the test', NEW.id; END $$")
    conn.execute(f"CREATE TRIGGER freeze_row BEFORE UPDATE ON listings FOR EACH ROW"
                 f" WHEN (OLD.id = {frozen}) EXECUTE FUNCTION freeze_row()")

    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(
            running_consumer(consumer_env_on(leader_port), tmp_path / "leader.log"))
        wait_until(lambda: probe(leader_port, "/readyz") == (200, {"status": "ok", "checks": {
            "consumer": "streaming", "database": "ok",
            "slot": "grails_workers: active, wal_status reserved"}}),
            what="the leader to be ready")
        standby = stack.enter_context(
            running_consumer(consumer_env_on(standby_port), tmp_path / "standby.log"))
        worker = stack.enter_context(
            running_consumer(worker_env, tmp_path / "worker.log", (*WORKER, *QUEUES)))
        wait_until(lambda: probe(standby_port, "/readyz")[1]["checks"].get("consumer")
                   == "standby", what="the standby to wait")
        assert probe(standby_port, "/readyz")[0] == 200
        assert probe(standby_port, "/healthz") == (200, {"status": "ok"})
        _, ready = wait_until(lambda: (r := probe(worker_port, "/readyz"))[0] == 200 and r,
                              what="the worker to be ready")
        assert ready["checks"]["registration"].startswith("worker ")
        c0, w0 = scrape(leader_port), scrape(worker_port)
        assert value(c0, "wal_consumer_leader") == 1
        assert value(scrape(standby_port), "wal_consumer_leader") == 0

        # the marketplace writes: an expiring listing, a bad one, one far ahead, an owner change
        due = add_listing(conn, name_id, expires_at=utcnow() + timedelta(seconds=1))
        add_listing(conn, name_id, price_wei="12abc")  # dead letter
        later = add_listing(conn, name_id, expires_at=utcnow() + timedelta(hours=1))
        conn.execute("UPDATE listings SET updated_at = now() WHERE id = %s", [later])  # no job
        conn.execute("UPDATE ens_names SET owner_address = %s WHERE id = %s",
                     [NEW_OWNER, name_id])

        def consumer_moved() -> bool:
            c = scrape(leader_port)
            return (moved(value(c0, "wal_consumer_changes_total", table="listings",
                                operation="insert"),
                          value(c, "wal_consumer_changes_total", table="listings",
                                operation="insert"), 3)
                    and moved(value(c0, "wal_consumer_changes_total", table="ens_names",
                                    operation="update"),
                              value(c, "wal_consumer_changes_total", table="ens_names",
                                    operation="update"))
                    and moved(value(c0, "wal_consumer_jobs_enqueued_total", task="expire-orders"),
                              value(c, "wal_consumer_jobs_enqueued_total", task="expire-orders"),
                              2)
                    and moved(value(c0, "wal_consumer_jobs_enqueued_total",
                                    task="update-ownership"),
                              value(c, "wal_consumer_jobs_enqueued_total",
                                    task="update-ownership"))
                    and moved(value(c0, "wal_consumer_unrouted_changes_total", table="listings",
                                    operation="update"),
                              value(c, "wal_consumer_unrouted_changes_total", table="listings",
                                    operation="update"))
                    and moved(value(c0, "wal_consumer_dead_letters_total"),
                              value(c, "wal_consumer_dead_letters_total"))
                    and moved(value(c0, "wal_consumer_batch_commit_seconds_count"),
                              value(c, "wal_consumer_batch_commit_seconds_count"))
                    and value(c, "wal_consumer_dead_letters_pending") == 1)

        wait_until(consumer_moved, timeout=15, what="the consumer's counters to move")

        def worker_moved() -> bool:
            w = scrape(worker_port)
            return (moved(value(w0, "job_handlers_jobs_total", task="expire-orders",
                                outcome="succeeded"),
                          value(w, "job_handlers_jobs_total", task="expire-orders",
                                outcome="succeeded"))
                    and value(w, "job_handlers_jobs_total", task="update-ownership",
                              outcome="retried") == 3
                    and value(w, "job_handlers_jobs_total", task="update-ownership",
                              outcome="failed") == 1
                    and moved(value(w0, "job_handlers_job_duration_seconds_count",
                                    task="expire-orders"),
                              value(w, "job_handlers_job_duration_seconds_count",
                                    task="expire-orders"))
                    and value(w, "job_handlers_expiry_lateness_seconds_count",
                              type="listing") >= 1
                    and moved(value(w0, "job_handlers_queue_jobs", queue="notifications",
                                    task="notify-watchers", state="todo"),
                              value(w, "job_handlers_queue_jobs", queue="notifications",
                                    task="notify-watchers", state="todo"), 2)
                    and value(w, "job_handlers_queue_jobs", queue="expiry",
                              task="expire-orders", state="scheduled") == 1
                    and value(w, "job_handlers_queue_jobs", queue="ownership",
                              task="update-ownership", state="failed") == 1)

        wait_until(worker_moved, timeout=20, what="the worker's counters and queue depth")
        w = scrape(worker_port)
        assert value(w, "job_handlers_workers_alive") == 1
        assert value(w, "job_handlers_database_up") == 1
        lateness = value(w, "job_handlers_expiry_lateness_seconds_sum", type="listing")
        assert 0 <= lateness < 2, lateness
        cursor = conn.execute("SELECT status FROM listings WHERE id = %s", [due])
        assert cursor.fetchone() == ("expired",)

        # lag: the leader freezes while the marketplace writes; the standby's scrape shows lag
        # in bytes and seconds grow, and the safety net expires what has no job meanwhile
        c1 = scrape(standby_port)
        leader.signal(signal.SIGSTOP)
        conn.execute("INSERT INTO ens_names (name, token_id, owner_address)"
                     " SELECT 'bulk' || g || '.eth', g::text, %s FROM generate_series(1, 3000) g",
                     [SELLER])
        missed = add_listing(conn, name_id, expires_at=utcnow() - timedelta(minutes=1))
        wait_until(lambda: value(s := scrape(standby_port), "wal_consumer_lag_bytes")
                   > value(c1, "wal_consumer_lag_bytes") + 200_000
                   and value(s, "wal_consumer_lag_seconds") >= 2
                   and value(s, "wal_consumer_retained_wal_bytes") > 200_000,
                   timeout=15, what="lag to grow while the leader is frozen")
        wait_until(lambda: value(scrape(worker_port), "job_handlers_batch_expire_caught_total",
                                 type="listing") >= 1,
                   timeout=15, what="the safety net to catch the listing that has no job")
        assert conn.execute("SELECT status FROM listings WHERE id = %s",
                            [missed]).fetchone() == ("expired",)

        # the leader dies; the standby takes over, catches up and its lag falls back
        leader.kill()
        wait_until(lambda: value(s := scrape(standby_port), "wal_consumer_leader") == 1
                   and value(s, "wal_consumer_lag_bytes") < 100_000
                   and value(s, "wal_consumer_lag_seconds") < 2
                   and value(s, "wal_consumer_changes_total", table="ens_names",
                             operation="insert") >= 3000,
                   timeout=20, what="the standby to take over and catch up")
        assert probe(standby_port, "/readyz")[1]["checks"]["consumer"] == "streaming"

        # a lost replication session is counted and resumed
        conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                     " WHERE slot_name = %s", [ready_db.slot])
        wait_until(lambda: value(s := scrape(standby_port), "wal_consumer_reconnects_total") >= 1
                   and value(s, "wal_consumer_leader") == 1,
                   timeout=20, what="the standby to reconnect")
        s = scrape(standby_port)
        for name in ("wal_consumer_slot_active", "wal_consumer_slot_wal_status",
                     "process_start_time_seconds"):
            assert has(s, name), name
        assert value(s, "wal_consumer_slot_wal_status", wal_status="reserved") == 1

        assert standby.stop() == 0, standby.output()[-3000:]
        assert worker.stop() == 0, worker.output()[-3000:]
    assert "could not record the failure" not in worker.output()
