"""Errors a person can act on: each names the setting or command that fixes it and exits with
its own code. Each case gets its own small server configured to be wrong in that way."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support import ROOT, Server, consumer_env, wait_until

from wal_consumer.localpg import LocalPostgres
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wal_consumer", *args], env=env, capture_output=True, text=True,
        cwd=ROOT, timeout=timeout,
    )


@pytest.fixture
def make_server(pg_server: Server) -> Iterator[object]:
    if pg_server.local is None:
        pytest.skip("needs local PostgreSQL binaries to build misconfigured servers")
    made: list[LocalPostgres] = []

    def make(**settings: str) -> LocalPostgres:
        cluster = LocalPostgres.create(settings)
        made.append(cluster)
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute((ROOT / "sql" / "marketplace_dev.sql").read_bytes())
        return cluster

    yield make
    for cluster in made:
        cluster.destroy()


def test_wal_level_not_logical(make_server) -> None:  # type: ignore[no-untyped-def]
    cluster = make_server(wal_level="replica")
    env = consumer_env(cluster.dsn())
    for command in ("setup", "run"):
        result = cli(env, command)
        assert result.returncode == 3, result.stderr
        assert "wal_level" in result.stderr and "logical" in result.stderr


def test_too_few_replication_slots(make_server) -> None:  # type: ignore[no-untyped-def]
    cluster = make_server(max_replication_slots="1")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
    result = cli(consumer_env(cluster.dsn()), "setup")
    assert result.returncode == 3
    assert "max_replication_slots" in result.stderr


def test_too_few_wal_senders(make_server) -> None:  # type: ignore[no-untyped-def]
    cluster = make_server(max_wal_senders="1")
    settings = ConsumerSettings(database_url=cluster.dsn())  # type: ignore[call-arg]
    setup(settings)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
    busy = psycopg.connect(cluster.dsn(), replication="database", autocommit=True)
    try:
        busy.execute("START_REPLICATION SLOT other LOGICAL 0/0 (proto_version '1', "
                     "publication_names 'grails_workers')")
        result = cli(consumer_env(cluster.dsn()), "run")
    finally:
        busy.close()
    assert result.returncode == 3
    assert "max_wal_senders" in result.stderr


def test_slot_held_by_a_foreign_client(make_server) -> None:  # type: ignore[no-untyped-def]
    cluster = make_server()
    settings = ConsumerSettings(database_url=cluster.dsn())  # type: ignore[call-arg]
    setup(settings)
    holder = psycopg.connect(cluster.dsn(), replication="database", autocommit=True)
    try:
        holder.execute(f"START_REPLICATION SLOT {settings.slot} LOGICAL 0/0 (proto_version '1',"
                       f" publication_names '{settings.publication}')")
        result = cli(consumer_env(cluster.dsn()), "run", timeout=60)
    finally:
        holder.close()
    assert result.returncode == 5
    assert "is active for PID" in result.stderr and "pg_terminate_backend" in result.stderr


def test_lost_slot(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster = make_server(max_slot_wal_keep_size="1MB", wal_keep_size="0", min_wal_size="32MB",
                          max_wal_size="64MB")
    settings = ConsumerSettings(database_url=cluster.dsn())  # type: ignore[call-arg]
    setup(settings)
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        def lost() -> bool:
            conn.execute("CREATE TABLE IF NOT EXISTS filler (v text)")
            conn.execute("INSERT INTO filler SELECT repeat(md5(g::text), 20)"
                         " FROM generate_series(1, 20000) g")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name"
                               " = %s", [settings.slot]).fetchone()
            return row == ("lost",)
        wait_until(lost, timeout=60, interval=0, what="slot to be lost")
    env = consumer_env(cluster.dsn())
    result = cli(env, "run")
    assert result.returncode == 6
    assert "is lost" in result.stderr and "wal-consumer slot rebuild" in result.stderr
    status = cli(env, "check")
    assert status.returncode == 1 and "lost" in status.stdout
    rebuilt = cli(env, "slot", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert cli(env, "check").returncode == 0
    del tmp_path
