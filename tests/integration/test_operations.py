"""Operator commands: status/check, slot and publication management, backfill, roles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from marketplace import add_listing, add_name, job_count
from support import ROOT, consumer_env, running_consumer, wait_caught_up, wait_until

from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wal_consumer", *args], env=env, capture_output=True, text=True,
        cwd=ROOT, timeout=300,
    )


def status_json(env: dict[str, str]) -> dict[str, Any]:
    result = cli(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_status_lag_grows_while_stopped_and_shrinks_after_catch_up(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url, WAL_STATUS_INTERVAL_S="0.5")
    name_id = add_name(conn, "lag.eth")
    with running_consumer(env, tmp_path / "a.log") as consumer:
        add_listing(conn, name_id)
        wait_caught_up(conn, ready_db.slot, timeout=60)
        assert consumer.stop() == 0
    before = status_json(env)["slot"]
    conn.execute(
        "INSERT INTO listings (ens_name_id, seller_address, price_wei)"
        " SELECT %s, '0xs', g::text FROM generate_series(1, 20000) g", [name_id])
    during = status_json(env)
    slot = during["slot"]
    assert slot["retained_bytes"] > before["retained_bytes"] + 1_000_000
    assert slot["lag_bytes"] > before["lag_bytes"] + 1_000_000
    assert slot["lag_seconds"] > before["lag_seconds"]
    assert slot["active"] is False and slot["wal_status"] == "reserved"
    with running_consumer(env, tmp_path / "b.log"):
        wait_caught_up(conn, ready_db.slot, timeout=60)
        after = wait_until(lambda: (s := status_json(env)["slot"])["lag_bytes"] < 100_000
                           and s["retained_bytes"] < slot["retained_bytes"] and s,
                           timeout=30, what="lag to shrink")
        assert after["lag_seconds"] < 3
        assert after["active"] is True
    assert {q["task"] for q in during["queue"]} == {"notify-watchers", "sync-ens-data"}


def test_check_exits_non_zero_past_thresholds(ready_db: ConsumerSettings,
                                              conn: psycopg.Connection) -> None:
    env = consumer_env(ready_db.database_url)
    conn.execute("INSERT INTO users (address) SELECT g::text FROM generate_series(1, 2000) g")
    bad = cli(env, "check", "--max-retained-bytes", "1000")
    assert bad.returncode == 1
    assert bad.stdout.startswith("CRITICAL: retained WAL bytes") and "> 1000" in bad.stdout
    assert len(bad.stdout.strip().splitlines()) == 1
    good = cli(env, "check", "--max-retained-bytes", str(10**12), "--max-dead-letters", "0")
    assert good.returncode == 0 and good.stdout.strip() == "OK"


def test_backfill_twice_over_pre_existing_rows(settings: ConsumerSettings,
                                               conn: psycopg.Connection) -> None:
    conn.execute(sqlfile("marketplace_dev.sql"))
    conn.execute("INSERT INTO ens_names (name) SELECT 'n' || g || '.eth' FROM"
                 " generate_series(1, 500) g")
    conn.execute(
        "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
        " SELECT 1 + g % 500, '0xs', '1', 'active', now() + g * interval '1 min'"
        " FROM generate_series(1, 10000) g")
    conn.execute(
        "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
        " SELECT 1, '0xs', '1', 'sold', now() FROM generate_series(1, 100) g")
    conn.execute(
        "INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei, expires_at)"
        " SELECT 1 + g % 500, '0xb', '1', now() + interval '1 day' FROM"
        " generate_series(1, 300) g")
    setup(settings)
    env = consumer_env(settings.database_url)
    first = cli(env, "backfill", "--chunk", "700")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == ("backfill: enqueued 10000 listing expiries, 300 offer "
                                    "expiries, 500 ENS syncs; 0 already enqueued")
    second = cli(env, "backfill")
    assert second.returncode == 0, second.stderr
    assert "enqueued 0 listing expiries, 0 offer expiries, 0 ENS syncs" in second.stdout
    per_listing = conn.execute(
        "SELECT l.id, count(j.id) FROM listings l LEFT JOIN procrastinate_jobs j ON"
        " j.task_name = 'expire-orders' AND j.args->>'type' = 'listing'"
        " AND (j.args->>'id')::int = l.id WHERE l.status = 'active' GROUP BY l.id"
        " HAVING count(j.id) <> 1").fetchall()
    assert per_listing == []
    per_name = conn.execute(
        "SELECT (args->>'ens_name_id')::int, count(*), min(priority) FROM procrastinate_jobs"
        " WHERE task_name = 'sync-ens-data' GROUP BY 1").fetchall()
    assert len(per_name) == 500 and {(n, p) for _, n, p in per_name} == {(1, 10)}
    assert job_count(conn) == 10000 + 300 + 500
    row = conn.execute(
        "SELECT count(*) FROM procrastinate_jobs j JOIN listings l ON l.id = (j.args->>'id')::int"
        " WHERE j.task_name = 'expire-orders' AND j.args->>'type' = 'listing'"
        " AND j.scheduled_at <> l.expires_at AT TIME ZONE 'UTC'").fetchone()
    assert row == (0,)


def sqlfile(name: str) -> bytes:
    return (ROOT / "sql" / name).read_bytes()


def test_slot_peek_advance_drop_rebuild(ready_db: ConsumerSettings, conn: psycopg.Connection,
                                        tmp_path: Path) -> None:
    env = consumer_env(ready_db.database_url)
    name_id = add_name(conn, "peek.eth")
    add_listing(conn, name_id)
    peeked = cli(env, "slot", "peek", "--json")
    assert peeked.returncode == 0, peeked.stderr
    changes = json.loads(peeked.stdout)
    kinds = [(c["kind"], c["table"]) for c in changes]
    assert ("INSERT", "public.listings") in kinds and ("INSERT", "public.ens_names") in kinds
    listing = next(c for c in changes if c["table"] == "public.listings")
    assert listing["jobs"] == ["notify-watchers", "sync-ens-data"]
    assert json.loads(cli(env, "slot", "peek", "--json").stdout) == changes  # nothing consumed

    listed = cli(env, "slot", "list")
    assert ready_db.slot in listed.stdout and "inactive" in listed.stdout
    target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert target is not None
    advanced = cli(env, "slot", "advance", "--to", target[0])
    assert advanced.returncode == 0, advanced.stderr
    assert json.loads(cli(env, "slot", "peek", "--json").stdout) == []

    with running_consumer(env, tmp_path / "c.log"):
        wait_until(lambda: json.loads(cli(env, "slot", "status", "--json").stdout)["active"],
                   what="consumer streaming")
        refused = cli(env, "slot", "drop")
        assert refused.returncode == 5
        assert "is active for PID" in refused.stderr and "--force" in refused.stderr
    dropped = cli(env, "slot", "drop")
    assert dropped.returncode == 0, dropped.stderr
    assert "released" in dropped.stdout and "retained WAL" in dropped.stdout
    missing = cli(env, "slot", "status")
    assert missing.returncode == 6 and "MISSING" in missing.stdout
    run = cli(env, "run")
    assert run.returncode == 6 and "does not exist" in run.stderr
    rebuilt = cli(env, "slot", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "created logical replication slot" in rebuilt.stdout
    assert "backfill: enqueued" in rebuilt.stdout and "1 ENS syncs" in rebuilt.stdout
    assert job_count(conn) == 1  # the listing has no expiry: one sync


def test_publication_show_and_sync(ready_db: ConsumerSettings) -> None:
    env = consumer_env(ready_db.database_url,
                       WAL_TABLES="public.listings,public.offers,public.ens_names,public.users")
    shown = json.loads(cli(env, "publication", "show", "--json").stdout)
    assert shown["in_sync"] is False and shown["missing"] == ["public.users"]
    synced = cli(env, "publication", "sync")
    assert synced.returncode == 0 and "public.users" in synced.stdout
    assert json.loads(cli(env, "publication", "show", "--json").stdout)["in_sync"] is True


@pytest.fixture
def roles_db(settings: ConsumerSettings) -> ConsumerSettings:
    setup(settings, dev_schema=True, roles=("grails_consumer", "grails_worker"))
    return settings


def as_role(url: str, role: str) -> str:
    return url.replace("postgres@", f"{role}@", 1)


def test_least_privilege_roles(roles_db: ConsumerSettings, conn: psycopg.Connection,
                               tmp_path: Path) -> None:
    consumer_url = as_role(roles_db.database_url, "grails_consumer")
    worker_url = as_role(roles_db.database_url, "grails_worker")
    with psycopg.connect(consumer_url) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("UPDATE listings SET status = 'x'")
    with psycopg.connect(worker_url) as w:
        w.execute("UPDATE listings SET status = status")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute("UPDATE grails_workers.consumer_checkpoint SET transactions = 0")
    refused = cli(consumer_env(worker_url), "run")
    assert refused.returncode == 7
    assert "REPLICATION" in refused.stderr
    again = setup(roles_db, roles=("grails_consumer", "grails_worker"))
    assert again.actions == []
