"""/readyz follows the database: both daemons answer 503 while their PostgreSQL server is
stopped (and /healthz still 200), and 200 again once it is back, without being restarted.
On a server of its own, so stopping it disturbs no other test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scrape import probe, scrape, value
from support import WORKER, consumer_env, running_consumer, wait_until

from wal_consumer.localpg import LocalPostgres, LocalPostgresError, find_bindir, free_port
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

pytestmark = pytest.mark.faults
QUEUES = ("--queue", "expiry", "--queue", "maintenance")


@pytest.fixture
def own_server() -> Iterator[LocalPostgres]:
    try:
        find_bindir()
    except LocalPostgresError as exc:
        pytest.skip(f"needs local PostgreSQL server binaries to stop and start a server: {exc}")
    # A stop waits for every backend, also one still waiting for the startup packet of a
    # client that opened a connection and never spoke (the worker's async connects during the
    # outage leave one behind now and then): that wait is authentication_timeout, 60 s by
    # default, so keep it short here.
    server = LocalPostgres.create({"authentication_timeout": "2s"})
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def test_readyz_turns_unhealthy_while_the_database_is_down_and_recovers(
    own_server: LocalPostgres, tmp_path: Path
) -> None:
    url = own_server.dsn()
    setup(ConsumerSettings(database_url=url), dev_schema=True)  # type: ignore[call-arg]
    consumer_port, worker_port = free_port(), free_port()
    consumer_env_ = consumer_env(url, WAL_METRICS_PORT=str(consumer_port),
                                 WAL_METRICS_HOST="127.0.0.1", WAL_METRICS_DB_INTERVAL_S="0",
                                 WAL_RECONNECT_MAX_DELAY_S="2")
    worker_env = consumer_env(url, JOB_METRICS_PORT=str(worker_port),
                              JOB_METRICS_HOST="127.0.0.1", JOB_METRICS_DB_INTERVAL_S="0",
                              JOB_POLL_INTERVAL_S="0.2")
    ports = {"consumer": consumer_port, "worker": worker_port}

    def statuses() -> dict[str, int]:
        return {name: probe(port, "/readyz")[0] for name, port in ports.items()}

    with running_consumer(consumer_env_, tmp_path / "consumer.log") as consumer, \
            running_consumer(worker_env, tmp_path / "worker.log", (*WORKER, *QUEUES)) as worker:
        wait_until(lambda: statuses() == {"consumer": 200, "worker": 200}, timeout=30,
                   what="both daemons ready")

        own_server.stop("fast")
        wait_until(lambda: statuses() == {"consumer": 503, "worker": 503}, timeout=20,
                   what="both daemons unready while the database is down")
        for name, port in ports.items():
            _, body = probe(port, "/readyz")
            assert body["checks"]["database"].startswith("unreachable"), (name, body)
            assert probe(port, "/healthz") == (200, {"status": "ok"}), name
        assert value(scrape(consumer_port), "wal_consumer_database_up") == 0
        assert value(scrape(worker_port), "job_handlers_database_up") == 0
        assert consumer.proc is not None and consumer.proc.poll() is None
        assert worker.proc is not None and worker.proc.poll() is None

        own_server.start()
        wait_until(lambda: statuses() == {"consumer": 200, "worker": 200}, timeout=45,
                   what="both daemons ready again once the database is back")
        assert probe(consumer_port, "/readyz")[1]["checks"]["consumer"] == "streaming"
        assert value(scrape(consumer_port), "wal_consumer_reconnects_total") >= 1
        assert value(scrape(worker_port), "job_handlers_database_up") == 1

        assert consumer.stop() == 0, consumer.output()[-3000:]
        assert worker.stop() == 0, worker.output()[-3000:]
