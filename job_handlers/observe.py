"""The worker's operations endpoint: /metrics (Prometheus), /healthz, /readyz.

A small HTTP server in a daemon thread beside the worker's event loop, on ``JOB_METRICS_PORT``
(0: none), so a slow scrape never blocks a job. The handlers' own counters live in `metrics`;
queue depth is read from the database when Prometheus scrapes, at most once per
``JOB_METRICS_DB_INTERVAL_S``, on a connection of this server's own (not the job pool).

- ``/healthz``: 200 while the process answers (liveness).
- ``/readyz``: 200 when the database answers and this process's worker is registered in
  ``procrastinate_workers`` with a heartbeat younger than ``JOB_STALLED_AFTER_S``; else 503.
  The body says which check failed, as JSON.

`wal_consumer` has its own twin of this module: the two packages never import each other.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import psycopg
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from job_handlers.settings import WorkerSettings

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3  # connect and statement timeout of the server's own connection

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class DatabaseProbe:
    """One autocommit connection for readiness and scrape-time queries, made on first use and
    made again after an error (a restarted server is answered on the first probe after it)."""

    def __init__(self, dsn: str, application_name: str):
        self.dsn = dsn
        self.application_name = application_name
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=PROBE_TIMEOUT_S,
                               application_name=self.application_name)
        conn.execute(f"SET statement_timeout = {PROBE_TIMEOUT_S * 1000}")
        return conn

    def query(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()
              ) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = self._connect()
                    return self._conn.execute(query.encode(), params).fetchall()
                except psycopg.OperationalError:
                    self._close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:  # pragma: no cover - closing a broken connection
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()


# todo jobs split by whether they are due: thousands of expiries scheduled days ahead are not
# a backlog. Succeeded jobs are not counted (a week of them is kept): todo and doing jobs are
# read through procrastinate's partial index on those states, failed ones through ours
# (`wal-consumer setup` creates it). Measured: 13 ms with 20,000 queued jobs among 1,000,000
# succeeded ones, 0.2 s with 500,000 queued.
QUEUE_QUERY = """
SELECT queue_name, task_name,
       CASE WHEN status = 'todo' AND scheduled_at > now() THEN 'scheduled'
            ELSE status::text END AS state,
       count(*)::float8
  FROM (SELECT queue_name, task_name, status, scheduled_at FROM procrastinate_jobs
         WHERE status = ANY ('{todo,doing}'::procrastinate_job_status[])
        UNION ALL
        SELECT queue_name, task_name, status, NULL FROM procrastinate_jobs
         WHERE status = 'failed') AS j
 GROUP BY 1, 2, 3
"""
WORKERS_QUERY = """
SELECT count(*)::float8 FROM procrastinate_workers
 WHERE last_heartbeat > now() - make_interval(secs => %s)
"""


class QueueCollector(Collector):
    """Queue depth by queue, task and state, and live workers, read at scrape time. A series
    seen once stays at 0 when its jobs are gone rather than vanishing."""

    def __init__(self, probe: DatabaseProbe, min_interval_s: float, stalled_after_s: float):
        self.probe = probe
        self.min_interval_s = min_interval_s
        self.stalled_after_s = stalled_after_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._cached: list[Metric] = []
        self._seen: set[tuple[str, str, str]] = set()

    def describe(self) -> Iterable[Metric]:
        return self._families(None, None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.min_interval_s:
                try:
                    rows = self.probe.query(QUEUE_QUERY)
                    workers = self.probe.query(WORKERS_QUERY, [self.stalled_after_s])[0][0]
                except psycopg.Error as exc:
                    log.debug("metrics: cannot read the queue: %s", _first_line(exc))
                    self._cached = self._families(None, None, up=False)
                else:
                    self._cached = self._families(rows, workers)
                self._read_at = now
            return list(self._cached)

    def _families(self, rows: list[tuple[Any, ...]] | None, workers: float | None,
                  up: bool = True) -> list[Metric]:
        up_family = GaugeMetricFamily(
            "job_handlers_database_up", "1 when the last scrape-time query answered, else 0")
        up_family.add_metric([], 1.0 if up else 0.0)
        depth = GaugeMetricFamily(
            "job_handlers_queue_jobs",
            "Jobs in the queue by queue, task and state: todo (due now), scheduled (due "
            "later), doing, failed (the dead-letter queue)",
            labels=["queue", "task", "state"])
        alive = GaugeMetricFamily(
            "job_handlers_workers_alive",
            "Workers registered in procrastinate_workers with a recent heartbeat")
        if rows is None:
            return [up_family, depth, alive]
        counts = {(str(q), str(t), str(s)): float(n) for q, t, s, n in rows}
        self._seen.update(counts)
        for labels in sorted(self._seen):
            depth.add_metric(list(labels), counts.get(labels, 0.0))
        alive.add_metric([], float(workers or 0))
        return [up_family, depth, alive]


class _Handler(BaseHTTPRequestHandler):
    server: OpsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(REGISTRY), content_type)
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            try:
                ready, checks = self.server.readiness()
            except Exception as exc:  # a failing check must answer, not hang up
                ready, checks = False, {"error": _first_line(exc)}
            self._json(200 if ready else 503,
                       {"status": "ok" if ready else "unavailable", "checks": checks})
        else:
            self._json(404, {"error": "not found: try /metrics, /healthz or /readyz"})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class OpsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, readiness: Readiness):
        super().__init__((host, port), _Handler)
        self.readiness = readiness
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> OpsServer:
        self._thread = threading.Thread(target=self.serve_forever, name="ops-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class WorkerState(Protocol):
    """What readiness needs from the worker runner."""

    state: str

    @property
    def worker_id(self) -> int | None: ...


class WorkerOps:
    """The server, the probe connection and the queue collector, started and stopped together."""

    def __init__(self, settings: WorkerSettings, runner: WorkerState):
        self.settings = settings
        self.runner = runner
        self.probe = DatabaseProbe(settings.database_url, "job-handlers-metrics")
        self.collector = QueueCollector(self.probe, settings.metrics_db_interval_s,
                                        settings.stalled_after_s)
        REGISTRY.register(self.collector)
        try:
            self.server = OpsServer(settings.metrics_host, settings.metrics_port,
                                    self.readiness).start()
        except BaseException:
            REGISTRY.unregister(self.collector)
            raise
        log.info("serving /metrics, /healthz and /readyz on http://%s:%d",
                 settings.metrics_host, self.server.port)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        worker_id = self.runner.worker_id
        checks: dict[str, Any] = {"worker": self.runner.state}
        try:
            rows = self.probe.query(
                "SELECT extract(epoch FROM now() - last_heartbeat)::float8"
                " FROM procrastinate_workers WHERE id = %s", [worker_id or 0])
        except psycopg.Error as exc:
            checks["database"] = f"unreachable: {_first_line(exc)}"
            return False, checks
        checks["database"] = "ok"
        if worker_id is None:
            checks["registration"] = "no worker registered yet (starting or restarting)"
            return False, checks
        if not rows:
            checks["registration"] = f"worker {worker_id} is not in procrastinate_workers"
            return False, checks
        age = float(rows[0][0])
        fresh = age < self.settings.stalled_after_s
        checks["registration"] = (f"worker {worker_id}, last heartbeat {age:.1f} s ago"
                                  + ("" if fresh else " (stalled)"))
        return fresh, checks

    def close(self) -> None:
        self.server.close()
        REGISTRY.unregister(self.collector)
        self.probe.close()


class MetricsPortError(Exception):
    exit_code = 2


def start(settings: WorkerSettings, runner: WorkerState) -> WorkerOps | None:
    """Serve the endpoints when ``JOB_METRICS_PORT`` is set; None when it is 0."""
    if not settings.metrics_port:
        return None
    try:
        return WorkerOps(settings, runner)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{exc.strerror or exc} (set JOB_METRICS_PORT to a free port, or 0 for none)"
        ) from exc
