"""The consumer's behaviour beyond the route table: idle slots, schema changes, replica
identity, dead letters, set-up idempotence and clean shutdown. The consumer runs as a real
subprocess (`python -m wal_consumer run`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
from marketplace import add_listing, add_name, job_count, jobs
from support import ROOT, consumer_env, running_consumer, wait_caught_up, wait_until

from wal_consumer.protocol import parse_lsn
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wal_consumer", *args], env=env, capture_output=True, text=True,
        cwd=ROOT, timeout=120,
    )


def slot_confirmed(conn: psycopg.Connection, slot: str) -> int:
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", [slot]
    ).fetchone()
    assert row is not None
    return parse_lsn(row[0])


def test_idle_slot_advances_while_only_unpublished_tables_change(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url, WAL_STATUS_INTERVAL_S="0.5")
    with running_consumer(env, tmp_path / "c.log"):
        conn.execute("CREATE TABLE noise (id serial primary key, v text)")
        start = slot_confirmed(conn, ready_db.slot)
        for _ in range(20):
            conn.execute("INSERT INTO noise (v) SELECT md5(g::text) FROM generate_series(1, 500) g")
        written = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert written is not None
        wait_until(lambda: slot_confirmed(conn, ready_db.slot) >= parse_lsn(written[0]),
                   timeout=30, what="slot confirmed_flush_lsn to pass the unpublished writes")
        assert slot_confirmed(conn, ready_db.slot) > start
    assert job_count(conn) == 0


def test_alter_table_mid_stream_needs_no_restart(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url)
    with running_consumer(env, tmp_path / "c.log") as consumer:
        name_id = add_name(conn, "schema.eth")
        add_listing(conn, name_id)
        wait_until(lambda: job_count(conn) == 2, what="first listing's jobs")
        conn.execute("ALTER TABLE listings ADD COLUMN note text DEFAULT 'n/a'")
        conn.execute("ALTER TABLE listings DROP COLUMN order_hash")
        listing = add_listing(conn, name_id, "5")
        conn.execute("UPDATE listings SET price_wei = '6', note = 'cheaper' WHERE id = %s",
                     [listing])
        # 2 + new-listing + price-change: the second listing's sync of the same name is not
        # queued while the first one is pending (queueing lock sync-ens-data:<ens_name_id>)
        wait_until(lambda: job_count(conn) == 4, what="jobs after ALTER TABLE")
        assert consumer.proc is not None and consumer.proc.poll() is None
    events = [j["args"].get("event") for j in jobs(conn, "notify-watchers")]
    assert events == ["new-listing", "new-listing", "price-change"]
    assert "reconnecting" not in consumer.output()
    assert "table public.listings changed" in consumer.output()


def test_missing_replica_identity_is_reported_and_setup_fixes_it(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    conn.execute("ALTER TABLE offers REPLICA IDENTITY DEFAULT")
    env = consumer_env(ready_db.database_url)
    with running_consumer(env, tmp_path / "c.log") as consumer:
        wait_until(lambda: "REPLICA IDENTITY FULL" in consumer.output(), what="start-up warning")
        assert consumer.stop() == 0
    out = consumer.output()
    assert "table public.offers does not have REPLICA IDENTITY FULL" in out
    assert "wal-consumer setup" in out and "ALTER TABLE public.offers REPLICA IDENTITY FULL" in out
    result = cli(env, "setup")
    assert result.returncode == 0, result.stderr
    assert "set REPLICA IDENTITY FULL on public.offers" in result.stdout
    row = conn.execute("SELECT relreplident FROM pg_class WHERE relname = 'offers'").fetchone()
    assert row == ("f",)


def test_setup_is_idempotent(settings: ConsumerSettings, conn: psycopg.Connection) -> None:
    first = setup(settings, dev_schema=True)
    assert any("created logical replication slot" in a for a in first.actions)
    assert any("created publication" in a for a in first.actions)
    slot_before = conn.execute("SELECT * FROM pg_replication_slots").fetchall()
    second = setup(settings, dev_schema=True)
    assert second.actions == []
    assert conn.execute("SELECT * FROM pg_replication_slots").fetchall() == slot_before
    result = cli(consumer_env(settings.database_url), "setup")
    assert result.returncode == 0 and "nothing to do" in result.stdout


def test_setup_refuses_without_marketplace_tables(settings: ConsumerSettings) -> None:
    result = cli(consumer_env(settings.database_url), "setup")
    assert result.returncode == 4
    assert "public.listings" in result.stderr and "do not exist" in result.stderr


def test_missing_database_url_is_a_clear_error() -> None:
    env = {k: v for k, v in consumer_env("x").items() if k != "DATABASE_URL"}
    result = cli(env, "run")
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr


def test_unroutable_change_is_dead_lettered_and_stream_goes_on(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url)
    with running_consumer(env, tmp_path / "c.log"):
        name_id = add_name(conn, "bad.eth")
        bad_price = add_listing(conn, name_id, "12abc")
        bad_expiry = add_listing(conn, name_id, "1", expires_at="infinity")
        add_listing(conn, name_id, "7")
        wait_caught_up(conn, ready_db.slot)
    assert [j["args"]["listing_id"] for j in jobs(conn, "notify-watchers")] == [bad_price + 2]
    listed = cli(env, "dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    letters = json.loads(listed.stdout)
    assert [json.loads(json.dumps(x["new_values"]))["id"] for x in letters] == [
        str(bad_price), str(bad_expiry)
    ]
    assert "price_wei" in letters[0]["error"] and "12abc" in letters[0]["error"]
    assert "expires_at" in letters[1]["error"] and "infinity" in letters[1]["error"]
    assert letters[0]["new_values"]["price_wei"] == "12abc"
    assert letters[0]["commit_lsn"] and letters[0]["event_key"].startswith(letters[0]["commit_lsn"])

    still_bad = cli(env, "dead-letters", "replay", str(letters[0]["id"]))
    assert still_bad.returncode == 1 and "still failing" in still_bad.stdout
    fixed = cli(env, "dead-letters", "replay", str(letters[0]["id"]), "--set", "price_wei=12")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    # its sync-ens-data is not queued: bad.eth's sync from the third listing is still pending
    assert "1 job(s) enqueued" in fixed.stdout
    replayed = [j for j in jobs(conn) if j["args"]["event_key"] == letters[0]["event_key"]]
    assert sorted(j["task_name"] for j in replayed) == ["notify-watchers"]
    again = cli(env, "dead-letters", "replay", "--all", "--set", "expires_at=")
    assert f"dead letter {letters[1]['id']}: replayed" in again.stdout
    assert str(letters[0]["id"]) + ":" not in again.stdout
    assert json.loads(cli(env, "dead-letters", "list", "--json").stdout) == []


def test_sigterm_finishes_the_batch_confirms_and_exits_zero(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url)
    with running_consumer(env, tmp_path / "c.log") as consumer:
        name_id = add_name(conn, "term.eth")
        for _ in range(50):
            add_listing(conn, name_id)
        wait_until(lambda: job_count(conn) > 0, what="some jobs")
        consumer.signal(signal.SIGTERM)
        assert consumer.wait(30) == 0
    assert "shut down cleanly" in consumer.output()
    row = conn.execute(
        "SELECT greatest(end_lsn, advanced_lsn)::text FROM grails_workers.consumer_checkpoint"
        " WHERE slot_name = %s",
        [ready_db.slot],
    ).fetchone()
    assert row is not None
    assert slot_confirmed(conn, ready_db.slot) == parse_lsn(row[0])
    committed_jobs = job_count(conn)
    with running_consumer(env, tmp_path / "c2.log"):
        wait_caught_up(conn, ready_db.slot)
    # 50 notify-watchers and one sync-ens-data: a name has one pending sync (queueing lock)
    assert job_count(conn) == 51 and committed_jobs <= 51
