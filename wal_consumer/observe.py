"""The consumer's operations endpoint: /metrics (Prometheus), /healthz, /readyz.

A small HTTP server in a daemon thread beside the consumer loop, on ``WAL_METRICS_PORT``
(0: none). The loop's own counters live in `metrics`; what only the database knows (slot lag
and retained WAL, wal_status, pending dead letters) is read when Prometheus scrapes, at most
once per ``WAL_METRICS_DB_INTERVAL_S``, on a connection of this server's own, so a scrape never
touches the replication or writer connections and a busy scraper costs one cheap query per
interval.

- ``/healthz``: 200 while the process answers (liveness).
- ``/readyz``: 200 when the database answers, the slot exists and is not lost, and this
  consumer is streaming or waiting as a hot standby; else 503. The body says which check
  failed, as JSON.

`job_handlers` has its own twin of this module: the two packages never import each other.
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

from wal_consumer.errors import ConfigurationError
from wal_consumer.settings import ConsumerSettings

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3  # connect and statement timeout of the server's own connection
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost", "missing")
READY_STATES = ("streaming", "standby")

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


SLOT_QUERY = """
SELECT s.wal_status, s.active,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::float8,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::float8,
       (SELECT extract(epoch FROM now() - greatest(c.last_commit_time, c.caught_up_at))::float8
          FROM grails_workers.consumer_checkpoint c WHERE c.slot_name = %(slot)s),
       (SELECT count(*) FROM grails_workers.dead_letters WHERE replayed_at IS NULL)
  FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = %(slot)s
"""


class SlotCollector(Collector):
    """Slot lag, retained WAL, wal_status and pending dead letters, read at scrape time."""

    def __init__(self, probe: DatabaseProbe, slot: str, min_interval_s: float):
        self.probe = probe
        self.slot = slot
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._cached: list[Metric] = []

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.min_interval_s:
                try:
                    row = self.probe.query(SLOT_QUERY, {"slot": self.slot})[0]
                except psycopg.Error as exc:
                    log.debug("metrics: cannot read the slot's figures: %s", _first_line(exc))
                    row = None
                self._cached = self._families(row, up=row is not None)
                self._read_at = now
            return list(self._cached)

    def _families(self, row: tuple[Any, ...] | None, up: bool = True) -> list[Metric]:
        slot = [self.slot]
        up_family = GaugeMetricFamily(
            "wal_consumer_database_up", "1 when the last scrape-time query answered, else 0")
        up_family.add_metric([], 1.0 if up else 0.0)
        lag_bytes = GaugeMetricFamily(
            "wal_consumer_lag_bytes", "WAL written since the slot's confirmed position",
            labels=["slot"])
        lag_seconds = GaugeMetricFamily(
            "wal_consumer_lag_seconds",
            "Seconds since the last processed source commit, 0 while idle and caught up",
            labels=["slot"])
        retained = GaugeMetricFamily(
            "wal_consumer_retained_wal_bytes", "WAL the server keeps for the slot (restart_lsn)",
            labels=["slot"])
        active = GaugeMetricFamily(
            "wal_consumer_slot_active", "1 when a consumer streams the slot", labels=["slot"])
        status = GaugeMetricFamily(
            "wal_consumer_slot_wal_status",
            "1 for the slot's current pg_replication_slots.wal_status (missing: no slot)",
            labels=["slot", "wal_status"])
        pending = GaugeMetricFamily(
            "wal_consumer_dead_letters_pending", "Dead letters not replayed yet")
        families: list[Metric] = [up_family, lag_bytes, lag_seconds, retained, active, status,
                                  pending]
        if row is None:
            return families
        wal_status, is_active, lag_b, retained_b, lag_s, dead = row
        current = wal_status or "missing"
        for value in WAL_STATUSES:
            status.add_metric([*slot, value], 1.0 if value == current else 0.0)
        pending.add_metric([], float(dead))
        if wal_status is not None:
            active.add_metric(slot, 1.0 if is_active else 0.0)
            for family, value in ((lag_bytes, lag_b), (retained, retained_b)):
                if value is not None:
                    family.add_metric(slot, max(0.0, float(value)))
        if lag_s is not None:
            lag_seconds.add_metric(slot, max(0.0, float(lag_s)))
        return families


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


class ConsumerState(Protocol):
    """What readiness needs from the consumer: its state word, set by the consumer loop."""

    state: str


class ConsumerOps:
    """The server, the probe connection and the slot collector, started and stopped together."""

    def __init__(self, settings: ConsumerSettings, consumer: ConsumerState):
        self.settings = settings
        self.consumer = consumer
        self.probe = DatabaseProbe(settings.database_url, "wal-consumer-metrics")
        self.collector = SlotCollector(self.probe, settings.slot, settings.metrics_db_interval_s)
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
        state = self.consumer.state
        checks: dict[str, Any] = {"consumer": state}
        try:
            rows = self.probe.query(
                "SELECT wal_status, active FROM pg_replication_slots WHERE slot_name = %s",
                [self.settings.slot])
        except psycopg.Error as exc:
            checks["database"] = f"unreachable: {_first_line(exc)}"
            return False, checks
        checks["database"] = "ok"
        slot_ok = bool(rows) and rows[0][0] != "lost"
        if not rows:
            checks["slot"] = f"slot {self.settings.slot} does not exist (wal-consumer setup)"
        else:
            checks["slot"] = (f"{self.settings.slot}: {'active' if rows[0][1] else 'inactive'}"
                              f", wal_status {rows[0][0]}")
        return slot_ok and state in READY_STATES, checks

    def close(self) -> None:
        self.server.close()
        REGISTRY.unregister(self.collector)
        self.probe.close()


def start(settings: ConsumerSettings, consumer: ConsumerState) -> ConsumerOps | None:
    """Serve the endpoints when ``WAL_METRICS_PORT`` is set; None when it is 0."""
    if not settings.metrics_port:
        return None
    try:
        return ConsumerOps(settings, consumer)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
            f"{exc.strerror or exc} (set WAL_METRICS_PORT to a free port, or 0 for none)"
        ) from exc
