"""Test support: the PostgreSQL server for the session, fresh databases, waiting, processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

from wal_consumer.localpg import LocalPostgres, LocalPostgresError, find_bindir

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class Server:
    """Where test databases live. ``local`` is set when we own the server and can fault it."""

    def __init__(self, admin_dsn: str, local: LocalPostgres | None = None, closer: Any = None):
        self.admin_dsn = admin_dsn
        self.local = local
        self._closer = closer

    def dsn(self, dbname: str) -> str:
        parts = urlsplit(self.admin_dsn)
        return urlunsplit(parts._replace(path=f"/{dbname}"))

    def close(self) -> None:
        if self.local is not None:
            self.local.destroy()
        if self._closer is not None:
            self._closer()


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    return result.returncode == 0


def start_server() -> Server:
    """TEST_DATABASE_URL, else a local throwaway cluster, else testcontainers when Docker runs."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return Server(url)
    try:
        find_bindir()
    except LocalPostgresError:
        if not _docker_answers():
            raise
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:15", driver=None)
        container.with_command("postgres -c wal_level=logical -c max_replication_slots=20")
        container.start()
        return Server(container.get_connection_url(), closer=container.stop)
    local = LocalPostgres.create()
    local.start()
    return Server(local.dsn(), local=local)


def create_database(server: Server) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(server: Server, name: str) -> None:
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        for (slot, pid) in conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s", [name]
        ).fetchall():
            if pid:
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
            wait_until(lambda s=slot: conn.execute(
                "SELECT active_pid IS NULL FROM pg_replication_slots WHERE slot_name = %s", [s]
            ).fetchone() in (None, (True,)), timeout=10, what=f"slot {slot} released")
            conn.execute("SELECT pg_drop_replication_slot(%s) WHERE EXISTS (SELECT 1 FROM"
                         " pg_replication_slots WHERE slot_name = %s)", [slot, slot])
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_until(
    predicate: Callable[[], T], *, timeout: float = 30, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (psycopg.OperationalError, ConnectionError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}"
                         + (f" (last error: {last_exc})" if last_exc else ""))


def wait_caught_up(conn: psycopg.Connection, slot: str, timeout: float = 30) -> None:
    """Wait until the consumer's checkpoint covers everything committed so far."""
    target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert target is not None
    wait_until(
        lambda: conn.execute(
            "SELECT greatest(end_lsn, advanced_lsn) >= %s FROM grails_workers.consumer_checkpoint"
            " WHERE slot_name = %s", [target[0], slot],
        ).fetchone() == (True,),
        timeout=timeout, what="the consumer's checkpoint to pass the last write",
    )


@dataclass
class ConsumerProcess:
    """A daemon in a subprocess (`wal-consumer run` by default), so tests can SIGTERM or
    SIGKILL it."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    command: tuple[str, ...] = ("wal_consumer", "run")

    def start(self) -> ConsumerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.command], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, cwd=ROOT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_consumer(env: dict[str, str], log_path: Path,
                     command: tuple[str, ...] = ("wal_consumer", "run"),
                     ) -> Iterator[ConsumerProcess]:
    consumer = ConsumerProcess(env, log_path, command=command).start()
    try:
        yield consumer
    finally:
        if consumer.proc is not None and consumer.proc.poll() is None:
            consumer.proc.kill()
            consumer.proc.wait(10)


WORKER = ("job_handlers", "worker")


TEST_UNSUBSCRIBE_SECRET = "test-unsubscribe-secret"


def consumer_env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WAL_", "JOB_")) and k != "SMTP_URL"}
    env.update({"DATABASE_URL": dsn, "PYTHONUNBUFFERED": "1",
                "JOB_UNSUBSCRIBE_SECRET": TEST_UNSUBSCRIBE_SECRET, **extra})
    return env
