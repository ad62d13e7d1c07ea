"""Keeps a procrastinate Worker running through database outages.

procrastinate stops its worker when a side task (the LISTEN connection, the heartbeat) or a
fetch loses the database, and its `run()` then returns or raises. Left alone, the process
would exit while the server restarts; this runner starts a new Worker after a jittered,
capped backoff instead, until SIGTERM/SIGINT asks it to stop. A new Worker registers itself
again, so `/readyz` follows: not ready while the database is away, ready once the new worker
has registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable

import psycopg
from procrastinate.exceptions import ConnectorException
from procrastinate.worker import Worker

from job_handlers import metrics

log = logging.getLogger(__name__)
RESTART_MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that ran this long starts the backoff from the beginning


class WorkerRunner:
    def __init__(self, make_worker: Callable[[], Worker], stop_requested: threading.Event,
                 base_delay_s: float = 0.5, max_delay_s: float = RESTART_MAX_DELAY_S):
        self.make_worker = make_worker
        self.stop_requested = stop_requested
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.worker: Worker | None = None
        self.state = "starting"  # starting | running | restarting | stopped
        self._wake: asyncio.Event | None = None

    @property
    def worker_id(self) -> int | None:
        """The current worker's row in procrastinate_workers (None before it registered)."""
        worker = self.worker
        worker_id = getattr(worker, "worker_id", None) if worker is not None else None
        return int(worker_id) if worker_id is not None else None

    def stop(self) -> None:
        """Ask the current worker to finish its jobs and the runner not to start another.
        Call it on the event loop (a signal handler installed with add_signal_handler)."""
        self.stop_requested.set()
        if self.worker is not None:
            self.worker.stop()  # type: ignore[no-untyped-call]
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = asyncio.Event()
        attempt = 0
        while not self.stop_requested.is_set():
            worker = self.worker = self.make_worker()
            self.state = "running"
            started = time.monotonic()
            try:
                await worker.run()  # type: ignore[no-untyped-call]
                reason = "the worker stopped by itself"
            except (ConnectorException, psycopg.OperationalError) as exc:
                cause = exc.__cause__ or exc
                text = str(cause).strip()
                reason = text.splitlines()[0] if text else type(cause).__name__
            finally:
                self.worker = None
            if self.stop_requested.is_set():
                break
            attempt = 1 if time.monotonic() - started >= STABLE_AFTER_S else attempt + 1
            metrics.WORKER_RESTARTS.inc()
            self.state = "restarting"
            delay = min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt, 10))
            delay *= random.uniform(0.5, 1.0)
            log.warning("worker lost the database (%s); starting a new worker in %.1f s "
                        "(attempt %d)", reason, delay, attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        self.state = "stopped"
