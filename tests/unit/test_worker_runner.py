"""The worker runner starts a new procrastinate Worker when one stops on a database error,
and stops for good when asked (no database here: the workers are stand-ins)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
from procrastinate.exceptions import ConnectorException
from prometheus_client import REGISTRY

from job_handlers.runner import WorkerRunner


class FakeWorker:
    """Fails as procrastinate's Worker does when the database goes: raises, or returns."""

    def __init__(self, behaviour: str, runs: list[str]):
        self.behaviour = behaviour
        self.runs = runs
        self.worker_id: int | None = None
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        self.runs.append(self.behaviour)
        if self.behaviour == "raise":
            raise ConnectorException("database error") from psycopg.OperationalError("gone")
        if self.behaviour == "return":
            return
        self.worker_id = 42
        await self.stopped.wait()

    def stop(self) -> None:
        self.stopped.set()


def restarts() -> float:
    return REGISTRY.get_sample_value("job_handlers_worker_restarts_total") or 0.0


def test_a_worker_that_loses_the_database_is_replaced_until_stop() -> None:
    runs: list[str] = []
    plan = iter(["raise", "return", "serve"])

    async def scenario() -> WorkerRunner:
        runner = WorkerRunner(lambda: FakeWorker(next(plan), runs),  # type: ignore[arg-type,return-value]
                              threading.Event(), base_delay_s=0.001)
        task = asyncio.create_task(runner.run())
        while runner.worker_id != 42:
            await asyncio.sleep(0.001)
        assert runner.state == "running"
        runner.stop()
        await asyncio.wait_for(task, 5)
        return runner

    before = restarts()
    runner = asyncio.run(scenario())
    assert runs == ["raise", "return", "serve"]
    assert restarts() - before == 2
    assert runner.state == "stopped" and runner.worker_id is None


def test_stop_during_the_backoff_returns_at_once() -> None:
    runs: list[str] = []

    async def scenario() -> float:
        runner = WorkerRunner(lambda: FakeWorker("raise", runs),  # type: ignore[arg-type,return-value]
                              threading.Event(), base_delay_s=60)
        task = asyncio.create_task(runner.run())
        while runner.state != "restarting":
            await asyncio.sleep(0.001)
        started = time.monotonic()
        runner.stop()
        await asyncio.wait_for(task, 5)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1
    assert runs == ["raise"]


def test_a_stop_requested_before_the_start_runs_no_worker() -> None:
    made: list[Any] = []
    stop = threading.Event()
    stop.set()
    asyncio.run(WorkerRunner(lambda: made.append(1), stop).run())  # type: ignore[arg-type,func-returns-value]
    assert made == []
