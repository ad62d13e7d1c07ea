"""Expiry precision and throughput of the handler worker (`python -m job_handlers worker`).

Run: ``.venv/bin/python bench/expiry.py [--orders N] [--spread S] [--backlog N] [--parts 12]``.
It starts a throwaway PostgreSQL cluster (``LocalPostgres``), or, when ``DATABASE_URL`` is set,
creates a scratch database on that server; either is removed at the end. The schema is what
``wal_consumer.provision.setup(..., dev_schema=True)`` creates (its replication slot is dropped
at once: nothing streams here). ``JOB_*`` variables in the environment (``JOB_CONCURRENCY``,
``JOB_POLL_INTERVAL_S``...) and ``LOG_LEVEL`` reach the workers; ``DATABASE_URL`` is pinned.

1. Lateness. One worker is started and waits (registered in ``procrastinate_workers``). Then
   ``--orders`` orders (``--offer-share`` of them pending offers, the rest active listings) are
   committed with ``expires_at`` drawn uniformly from [t0, t0 + ``--spread``), t0 being the
   server's clock + 5 s, and one ``expire-orders`` job per order is deferred exactly as the WAL
   consumer does it: ``BatchWriter.write_jobs`` with ``JobRequest``s whose ``scheduled_at`` is
   ``expires_at`` and whose args are {type, id, expires_at (ISO), event_key}. When every job has
   finished, lateness = order ``updated_at`` - ``expires_at``. ``updated_at`` is ``now()`` of
   the handler's guarded UPDATE: the handler's own clock reading, taken in the transaction that
   expires the order, which commits a round trip later just before the handler returns. It is
   used rather than procrastinate's 'succeeded' event because that one is taken after the
   handler returned, procrastinate logged the outcome and ``finish_job`` checked out a pooled
   connection and began a new transaction, all on an event loop that may be busy; the event
   figure is printed too, with the median gap between the two. (A job claimed and run inside
   another expire-orders job's transaction, see ``JOB_EXPIRE_BATCH``, has its 'started' and
   'succeeded' events and its order's ``updated_at`` all at that transaction's ``now()``; such
   jobs are counted.) An order counts as expired by its job when its ``updated_at`` lies
   between the job's 'started' and 'succeeded' events; a job that started before
   ``expires_at`` and did not expire its order "ran early and did nothing". Every timestamp is
   the server's clock, so the figures hold for a remote ``DATABASE_URL`` too.
2. Throughput. A backlog of ``--backlog`` due ``expire-orders`` jobs, each for its own active
   listing overdue by 1 to 10 s (so every job UPDATEs one row, and the safety net, which leaves
   orders alone for 30 s, does not), is drained by one worker, then a fresh backlog by two
   workers; every backlog starts from empty job, listings and offers tables, so each drain sees
   the same tables. Time runs from starting the process(es) until no job of the
   backlog is ``todo``/``doing`` any more, polled every ``--poll-ms`` ms with a probe for the
   lowest unfinished id along procrastinate's partial index on those statuses (it reads a few
   index entries, where counting the rows left or succeeded would scan up to the whole backlog
   20 times a second on the CPUs being measured); then ``count(*) ... WHERE status =
   'succeeded'`` must equal the backlog and every listing must have been expired by its job.
   Also shown: the time after start-up (all workers registered), how many jobs ran inside
   another job's transaction, and the workers' CPU time (Linux). Reference, same run and same
   backlog shape: a stock procrastinate worker (``App(connector=PsycopgConnector(conninfo=
   ...))``, default pool, no logging configured) running an async no-op task ``noop`` on queue
   ``expiry`` with ``run_worker_async(queues=["expiry"], concurrency=10)``, in 1 and 2
   processes. Before each timed drain the tables are vacuumed and analysed and a CHECKPOINT is
   forced. ``--py-spy DIR`` samples our workers with ``py-spy record`` during the drains.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

import psycopg
from benchlib import (
    BenchError,
    Figure,
    percentile,
    pid_cpu,
    print_summary,
    ratio_text,
    scratch_database,
    server,
    start_py_spy,
    wait_for,
)

from job_handlers.settings import WorkerSettings
from wal_consumer.enqueue import BatchWriter
from wal_consumer.provision import setup
from wal_consumer.routes import EXPIRE_ORDERS, QUEUES, JobRequest
from wal_consumer.settings import ConsumerSettings

ROOT = Path(__file__).resolve().parent.parent
SETUP_SLOT = "bench_expiry_setup"
SELLER = "0xabcdef0000000000000000000000000000000001"
BUYER = "0xabcdef0000000000000000000000000000000002"
ENS_NAMES = 1000
LEAD_S = 5.0  # the first order expires this long after the server clock read before writing
DEFER_CHUNK = 5000  # jobs per batch_defer_jobs call and transaction (the consumer's batch size)
STOCK_TASK = "noop"
STOCK_CONCURRENCY = 10
EXPIRY_QUEUE = QUEUES[EXPIRE_ORDERS]
PINNED_ENV = ("DATABASE_URL", "JOB_DATABASE_URL")

INSERT_LISTINGS = (
    "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
    " SELECT 1 + t.i %% %(names)s, %(seller)s, '1000000000000000000', 'active', t.e"
    " FROM unnest(%(expires)s::timestamp[]) WITH ORDINALITY AS t(e, i)"
    " RETURNING id, expires_at"
)
INSERT_OFFERS = (
    "INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei, status, expires_at)"
    " SELECT 1 + t.i %% %(names)s, %(buyer)s, '500000000000000000', 'pending', t.e"
    " FROM unnest(%(expires)s::timestamp[]) WITH ORDINALITY AS t(e, i)"
    " RETURNING id, expires_at"
)
INSERT_OVERDUE_LISTINGS = (
    "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
    " SELECT 1 + g %% %(names)s, %(seller)s, '1000000000000000000', 'active',"
    "  now()::timestamp - interval '10 seconds' + g * %(step)s * interval '1 microsecond'"
    " FROM generate_series(0, %(n)s - 1) g"
    " RETURNING id, expires_at"
)
# One row per expire-orders job of part 1: the job, its events, and its order as it is now.
LATENESS_ROWS = """
SELECT j.id, j.status,
       (SELECT max(e.at) FROM procrastinate_events e
         WHERE e.job_id = j.id AND e.type = 'started') AS started_at,
       (SELECT max(e.at) FROM procrastinate_events e
         WHERE e.job_id = j.id AND e.type = 'succeeded') AS succeeded_at,
       o.status AS order_status,
       o.expires_at AT TIME ZONE 'UTC' AS expires_at,
       o.updated_at AT TIME ZONE 'UTC' AS updated_at
  FROM procrastinate_jobs j
  JOIN (SELECT 'listing' AS type, id, status, expires_at, updated_at FROM listings
        UNION ALL
        SELECT 'offer', id, status, expires_at, updated_at FROM offers) o
    ON o.type = j.args->>'type' AND o.id = (j.args->>'id')::int
 WHERE j.task_name = %s
"""
# The lowest id of a job not yet finished: a cheap probe along procrastinate's partial index on
# (id, lock) WHERE status IN ('todo', 'doing'), where a count would visit every row left.
FIRST_UNFINISHED = (
    "SELECT id FROM procrastinate_jobs"
    " WHERE status IN ('todo', 'doing') AND id BETWEEN %s AND %s AND task_name = %s"
    " ORDER BY id LIMIT 1"
)

# Jobs of a range run inside another job's transaction: 'started' and 'succeeded' at one now().
RUN_AS_SIBLINGS = """
SELECT count(*) FROM procrastinate_jobs j
 WHERE j.id BETWEEN %s AND %s AND j.task_name = %s
   AND (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id
         AND e.type = 'started')
     = (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id
         AND e.type = 'succeeded')
"""

STOCK_WORKER = '''\
"""A stock procrastinate worker with one async no-op task: bench/expiry.py's reference."""

import asyncio
import sys
from typing import Any

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=sys.argv[1]))


@app.task(name=sys.argv[2], queue=sys.argv[3])
async def noop(**kwargs: Any) -> None:
    del kwargs


async def main() -> None:
    async with app.open_async():
        await app.run_worker_async(queues=[sys.argv[3]], concurrency=int(sys.argv[4]))


asyncio.run(main())
'''


@dataclass
class Bench:
    dsn: str
    workdir: Path
    args: argparse.Namespace
    settings: WorkerSettings
    runs: int = 0  # worker processes started so far, to name their logs


# -- server and scratch database ----------------------------------------------------------------


def connect(dsn: str, autocommit: bool = False) -> psycopg.Connection:
    """A connection whose naive timestamps are UTC, like the worker's (and the consumer's)."""
    return psycopg.connect(dsn, autocommit=autocommit, options="-c timezone=UTC")


def scalar(conn: psycopg.Connection, query: str, params: Sequence[object] = ()) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def tidy_server(dsn: str) -> None:
    """Vacuum, analyse and checkpoint before a timed phase, so each starts from the same state."""
    with connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE procrastinate_jobs, procrastinate_events, listings, offers")
        with contextlib.suppress(psycopg.Error):
            conn.execute("CHECKPOINT")


def prepare(bench: Bench) -> None:
    """Marketplace tables, procrastinate's schema and ours; ENS names for the orders."""
    settings = ConsumerSettings(database_url=bench.dsn, slot=SETUP_SLOT)  # type: ignore[call-arg]
    setup(settings, dev_schema=True)
    with connect(bench.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", [SETUP_SLOT])
        conn.execute(
            "INSERT INTO ens_names (name, token_id, owner_address)"
            " SELECT 'bench' || g || '.eth', g::text, %s FROM generate_series(1, %s) g",
            [SELLER, ENS_NAMES],
        )


# -- waiting ------------------------------------------------------------------------------------


# -- worker processes ---------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One worker subprocess, its output in a log file, optionally sampled by py-spy."""

    command: list[str]
    env: dict[str, str]
    log_path: Path
    profile_path: Path | None = None
    worker_id_floor: int = 0  # procrastinate_workers ids up to this were there before it
    started: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT)
        return self

    def profile(self) -> None:
        if self.profile_path is not None and self.proc is not None:
            self.profiler = start_py_spy(self.proc.pid, self.profile_path)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the worker so far (Linux /proc), None where unknown."""
        return None if self.proc is None else pid_cpu(self.proc.pid)

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"a worker exited early; its log ({self.log_path}):\n"
                             f"{self.log_tail()}")
        return True

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.profiler is not None:
            try:
                self.profiler.wait(60)
            except subprocess.TimeoutExpired:
                self.profiler.kill()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def worker_env(bench: Bench) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    env.update(DATABASE_URL=bench.dsn, PYTHONUNBUFFERED="1")
    return env


def our_command(bench: Bench) -> list[str]:
    del bench
    return [sys.executable, "-m", "job_handlers", "worker"]


def stock_command(bench: Bench) -> list[str]:
    script = bench.workdir / "stock_worker.py"
    if not script.exists():
        script.write_text(STOCK_WORKER)
    return [sys.executable, str(script), bench.dsn, STOCK_TASK, EXPIRY_QUEUE,
            str(STOCK_CONCURRENCY)]


def last_worker_id(dsn: str) -> int:
    with connect(dsn) as conn:
        return scalar(conn, "SELECT coalesce(max(id), 0) FROM procrastinate_workers")


@contextlib.contextmanager
def workers(
    bench: Bench, kind: str, count: int, command: list[str], profile: bool = False,
) -> Iterator[list[WorkerProcess]]:
    """``count`` worker processes, started together; SIGTERM and wait for them all at the end."""
    processes, floor = [], last_worker_id(bench.dsn)
    for _ in range(count):
        bench.runs += 1
        stem = f"{bench.runs:02d}-{kind}"
        profile_path = (bench.args.py_spy / f"{stem}.txt"
                        if profile and bench.args.py_spy is not None else None)
        processes.append(WorkerProcess(command, worker_env(bench),
                                       bench.workdir / f"{stem}.log", profile_path, floor))
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


def wait_registered(conn: psycopg.Connection, processes: Sequence[WorkerProcess]) -> float:
    """Wait until every process has registered its worker; return when (monotonic)."""
    floor = min(p.worker_id_floor for p in processes)

    def registered() -> bool:
        return scalar(conn, "SELECT count(*) FROM procrastinate_workers WHERE id > %s",
                      [floor]) >= len(processes)

    return wait_for(lambda: all(p.alive() for p in processes) and registered(), timeout=60,
                    what="the workers to register", interval=0.01)


# -- writing orders and jobs --------------------------------------------------------------------


def server_now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now.astimezone(UTC)


def expire_request(kind: str, order_id: int, expires_at: datetime, task: str) -> JobRequest:
    """The consumer's expire-orders job for an order (``routes._expire``), naive UTC made aware."""
    aware = expires_at.replace(tzinfo=UTC)
    args = {"type": kind, "id": order_id, "expires_at": aware.isoformat(),
            "event_key": f"bench:{kind}:{order_id}"}
    return JobRequest(task, args, scheduled_at=aware, queue=EXPIRY_QUEUE)


@dataclass(frozen=True)
class Deferred:
    """Jobs of one task deferred together: their ids lie in [first, last] (others may too)."""

    task: str
    first: int
    last: int
    count: int

    def done_probe(self, conn: psycopg.Connection) -> Callable[[], bool]:
        """A function that says whether every job has finished (succeeded or failed).

        A finished job never becomes unfinished again (a retry keeps it todo/doing), so the
        lowest unfinished id only grows: each probe starts from the last one found.
        """
        lowest = self.first

        def done() -> bool:
            nonlocal lowest
            row = conn.execute(FIRST_UNFINISHED, [lowest, self.last, self.task]).fetchone()
            if row is None:
                return True
            lowest = row[0]
            return False

        return done


def defer(dsn: str, requests: Sequence[JobRequest]) -> Deferred:
    """Defer with the consumer's BatchWriter, ``DEFER_CHUNK`` per transaction."""
    task = requests[0].task_name
    with connect(dsn) as conn:
        before = scalar(conn, "SELECT coalesce(max(id), 0) FROM procrastinate_jobs")
        writer = BatchWriter(conn, "bench")
        for lo in range(0, len(requests), DEFER_CHUNK):
            writer.write_jobs(requests[lo:lo + DEFER_CHUNK])
            conn.commit()
        row = conn.execute("SELECT min(id), max(id), count(*) FROM procrastinate_jobs"
                           " WHERE task_name = %s AND id > %s", [task, before]).fetchone()
    assert row is not None
    if row[2] != len(requests):
        raise BenchError(f"deferred {len(requests):,} jobs, found {row[2]:,}")
    return Deferred(task, row[0], row[1], row[2])


def write_scheduled_orders(bench: Bench) -> tuple[list[JobRequest], datetime]:
    """Part 1's orders, committed; their jobs (not yet deferred) and the first expiry."""
    a = bench.args
    rng = random.Random(20240601)
    with connect(bench.dsn) as conn:
        t0 = server_now(conn).replace(tzinfo=None) + timedelta(seconds=LEAD_S)
        offsets = sorted(rng.uniform(0, a.spread) for _ in range(a.orders))
        kinds = ["offer" if rng.random() < a.offer_share else "listing" for _ in offsets]
        expiries = {kind: [t0 + timedelta(seconds=s) for s, k in zip(offsets, kinds, strict=True)
                           if k == kind] for kind in ("listing", "offer")}
        rows = {
            "listing": conn.execute(INSERT_LISTINGS, {
                "names": ENS_NAMES, "seller": SELLER, "expires": expiries["listing"]}).fetchall(),
            "offer": conn.execute(INSERT_OFFERS, {
                "names": ENS_NAMES, "buyer": BUYER, "expires": expiries["offer"]}).fetchall(),
        }
        conn.commit()
    requests = [expire_request(kind, order_id, expires_at, EXPIRE_ORDERS)
                for kind, found in rows.items() for order_id, expires_at in found]
    requests.sort(key=lambda r: r.scheduled_at.timestamp() if r.scheduled_at else 0.0)
    return requests, t0.replace(tzinfo=UTC)


def write_due_backlog(bench: Bench, task: str) -> Deferred:
    """``--backlog`` overdue active listings and one due job each for ``task``; the job ids.

    Every backlog starts from empty job and order tables, so that each drain sees the same
    tables (the cost of some statements grows with the size of ``listings``).
    """
    n = bench.args.backlog
    with connect(bench.dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE procrastinate_jobs, listings, offers CASCADE")
        rows = conn.execute(INSERT_OVERDUE_LISTINGS, {
            "names": ENS_NAMES, "seller": SELLER, "n": n, "step": max(1, 9_000_000 // n),
        }).fetchall()
    ids = defer(bench.dsn, [expire_request("listing", i, e, task) for i, e in rows])
    tidy_server(bench.dsn)
    return ids


# -- part 1: lateness ---------------------------------------------------------------------------


@dataclass
class LatenessResult:
    jobs: int = 0
    by_job: list[float] = field(default_factory=list)  # updated_at - expires_at, ms
    by_event: list[float] = field(default_factory=list)  # succeeded.at - expires_at, ms
    gaps: list[float] = field(default_factory=list)  # succeeded.at - updated_at, ms, if fetched
    expired_otherwise: int = 0
    not_expired: int = 0
    early_did_nothing: int = 0
    started_early: int = 0
    as_siblings: int = 0
    unfinished: dict[str, int] = field(default_factory=dict)


def ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def collect_lateness(dsn: str) -> LatenessResult:
    result = LatenessResult()
    with connect(dsn) as conn:
        rows = conn.execute(LATENESS_ROWS, [EXPIRE_ORDERS]).fetchall()
    result.jobs = len(rows)
    for _, status, started, succeeded, order_status, expires_at, updated_at in rows:
        if status != "succeeded":
            result.unfinished[status] = result.unfinished.get(status, 0) + 1
        if started is not None and started < expires_at:
            result.started_early += 1
        expired = order_status == "expired"
        mine = (expired and started is not None and succeeded is not None
                and started <= updated_at <= succeeded)
        if started is not None and started == succeeded:
            result.as_siblings += 1
        if mine:
            result.by_job.append(ms(updated_at - expires_at))
            result.by_event.append(ms(succeeded - expires_at))
            if started != succeeded:  # fetched by procrastinate, not claimed by a sibling
                result.gaps.append(ms(succeeded - updated_at))
        elif expired:
            result.expired_otherwise += 1
        else:
            result.not_expired += 1
        if not mine and succeeded is not None and started is not None and started < expires_at:
            result.early_did_nothing += 1
    for values in (result.by_job, result.by_event):
        values.sort()
    return result


def spread_text(values: Sequence[float]) -> str:
    if not values:
        return "no data"
    p50, p95, p99 = (percentile(values, p) for p in (50, 95, 99))
    return f"p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms, max {values[-1]:,.0f} ms"


def part_lateness(bench: Bench) -> Figure:
    a, s = bench.args, bench.settings
    print(f"\n== 1. lateness: {a.orders:,} orders ({a.offer_share:.0%} offers) expiring "
          f"uniformly over {a.spread:g} s from {LEAD_S:g} s after writing; one worker, "
          f"polling interval {s.poll_interval_s:g} s, concurrency {s.concurrency}")
    with (
        connect(bench.dsn, autocommit=True) as conn,
        workers(bench, "lateness", 1, our_command(bench)) as procs,
    ):
        wait_registered(conn, procs)
        started = time.monotonic()
        requests, t0 = write_scheduled_orders(bench)
        ids = defer(bench.dsn, requests)
        lead = (t0 - server_now(conn)).total_seconds()
        print(f"orders and jobs written in {time.monotonic() - started:.1f} s; the first order "
              f"expires {lead:.1f} s after the last job committed")
        if lead < 0:
            print("WARNING: writing took longer than the lead: the first orders were due "
                  "before their jobs existed")
        timeout = LEAD_S + a.spread + 120
        done = ids.done_probe(conn)
        wait_for(lambda: procs[0].alive() and done(), timeout=timeout,
                 what="every expire-orders job to finish", interval=0.2)
    r = collect_lateness(bench.dsn)
    print(f"{r.jobs:,} jobs: {len(r.by_job):,} orders expired by their job, "
          f"{r.expired_otherwise:,} expired by something else (the safety net), "
          f"{r.not_expired:,} not expired at all; {r.early_did_nothing} jobs ran early and did "
          f"nothing ({r.started_early} started before expires_at); jobs not succeeded: "
          f"{sum(r.unfinished.values())}{f' {r.unfinished}' if r.unfinished else ''}")
    print(f"{r.as_siblings:,} of the jobs ran inside another expire-orders job's transaction "
          f"(claimed as due siblings)")
    print(f"lateness, handler's UPDATE (updated_at - expires_at): {spread_text(r.by_job)}")
    print(f"lateness, 'succeeded' event (at - expires_at):      {spread_text(r.by_event)}")
    if r.gaps:
        print(f"'succeeded' event - updated_at for the {len(r.gaps):,} jobs procrastinate fetched "
              f"itself: median {median(r.gaps):.1f} ms, max {max(r.gaps):.1f} ms")
    if not r.by_job:
        raise BenchError("no order was expired by its job")
    p99 = percentile(r.by_job, 99)
    clean = (len(r.by_job) == r.jobs == a.orders and not r.early_did_nothing
             and not r.unfinished)
    return Figure(
        f"1 lateness, {a.orders:,} orders over {a.spread:g} s, 1 worker",
        f"p99 {p99:,.0f} ms",
        f"p50 {percentile(r.by_job, 50):,.0f} / p95 {percentile(r.by_job, 95):,.0f} / max "
        f"{r.by_job[-1]:,.0f} ms; {a.orders - len(r.by_job)} missed, "
        f"{r.early_did_nothing} early",
        None, "p99 < 2 s, none missed/early", p99 < 2000 and clean)


# -- part 2: throughput -------------------------------------------------------------------------


@dataclass
class Drain:
    total_s: float
    startup_s: float
    polls: int
    poll_ms: float
    as_siblings: int
    cpu_s: float | None  # the workers' CPU time from start to the end of the drain

    def rate(self, jobs: int) -> float:
        return jobs / self.total_s


def drain(bench: Bench, kind: str, count: int, command: list[str], ids: Deferred,
          profile: bool = False) -> Drain:
    """Start ``count`` workers and time them until no job of ``ids`` is todo or doing."""
    n = ids.count
    polls, polled = 0, 0.0

    def finished() -> bool:
        nonlocal polls, polled
        t = time.monotonic()
        result = all(p.alive() for p in procs) and probe()
        polls, polled = polls + 1, polled + time.monotonic() - t
        return result

    with (
        connect(bench.dsn, autocommit=True) as conn,
        workers(bench, kind, count, command, profile) as procs,
    ):
        probe = ids.done_probe(conn)
        registered = wait_registered(conn, procs)
        for process in procs:
            process.profile()
        finished_at = wait_for(finished, timeout=120 + n / 50, what=f"{n:,} jobs to be handled",
                        interval=bench.args.poll_ms / 1000)
        cpu = [p.cpu_seconds() for p in procs]
    started = min(p.started for p in procs)
    with connect(bench.dsn) as conn:
        succeeded = scalar(conn, "SELECT count(*) FROM procrastinate_jobs WHERE status ="
                           " 'succeeded' AND id BETWEEN %s AND %s AND task_name = %s",
                           [ids.first, ids.last, ids.task])
        as_siblings = scalar(conn, RUN_AS_SIBLINGS, [ids.first, ids.last, ids.task])
    if succeeded != n:
        raise BenchError(f"{kind}: only {succeeded:,} of {n:,} jobs succeeded")
    return Drain(finished_at - started, registered - started, polls, polled / max(polls, 1) * 1000,
                 as_siblings, None if None in cpu else sum(c or 0.0 for c in cpu))


def check_expired(bench: Bench, ids: Deferred) -> None:
    """Warn unless every job of ``ids`` expired its listing itself (an UPDATE of one row).

    As in part 1, the listing's ``updated_at`` must lie between the job's 'started' and
    'succeeded' events.
    """
    with connect(bench.dsn) as conn:
        expired = scalar(
            conn,
            "SELECT count(*) FROM procrastinate_jobs j JOIN listings l"
            " ON l.id = (j.args->>'id')::int WHERE j.id BETWEEN %s AND %s AND j.task_name = %s"
            " AND l.status = 'expired' AND l.updated_at AT TIME ZONE 'UTC' BETWEEN"
            " (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id"
            "  AND e.type = 'started') AND"
            " (SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id"
            "  AND e.type = 'succeeded')", [ids.first, ids.last, ids.task])
    if expired != ids.count:
        print(f"WARNING: only {expired:,} of {ids.count:,} jobs expired their own listing: the "
              "figure below is not that of one UPDATE per job")


def part_throughput(bench: Bench) -> list[Figure]:
    a, s = bench.args, bench.settings
    n = a.backlog
    print(f"\n== 2. throughput: backlogs of {n:,} due expire-orders jobs, each for its own "
          f"overdue listing; our worker (concurrency {s.concurrency}) vs a stock procrastinate "
          f"worker running a no-op (concurrency {STOCK_CONCURRENCY}), polled every "
          f"{a.poll_ms:g} ms")
    rates: dict[tuple[str, int], float] = {}
    for kind, task, command in (("ours", EXPIRE_ORDERS, our_command(bench)),
                                ("stock", STOCK_TASK, stock_command(bench))):
        for count in (1, 2):
            started = time.monotonic()
            ids = write_due_backlog(bench, task)
            written = time.monotonic() - started
            d = drain(bench, f"{kind}{count}", count, command, ids, profile=kind == "ours")
            if kind == "ours":
                check_expired(bench, ids)
            rates[kind, count] = d.rate(n)
            label = ("job_handlers" if kind == "ours" else "stock no-op") + f" x{count}:"
            siblings = f"; {d.as_siblings:,} run as siblings" if kind == "ours" else ""
            cpu = "" if d.cpu_s is None else (f"; worker CPU {d.cpu_s:.1f} s = "
                                              f"{d.cpu_s / n * 1e6:,.0f} us/job")
            print(f"{label:17} {d.total_s:7.2f} s  {d.rate(n):8,.0f} jobs/s  (start-up "
                  f"{d.startup_s:.2f} s; after start-up {n / (d.total_s - d.startup_s):,.0f} "
                  f"jobs/s{siblings}{cpu}; backlog written in {written:.1f} s; {d.polls} polls "
                  f"of {d.poll_ms:.1f} ms)")
    figures = []
    for count in (1, 2):
        ours, stock = rates["ours", count], rates["stock", count]
        print(f"ratio ours/stock, {count} worker{'s' if count > 1 else ''}: "
              f"{ratio_text(ours / stock)}")
        aim = ">= 1,500 jobs/s" if count == 2 else "-"
        figures.append(Figure(
            f"2 throughput, {n:,} jobs, {count} worker{'s' if count > 1 else ''}",
            f"{ours:,.0f} jobs/s", f"stock no-op {stock:,.0f} jobs/s", ours / stock, aim,
            ours >= 1500 if count == 2 else None))
    return figures


# -- report -------------------------------------------------------------------------------------


def print_header(bench: Bench, where: str) -> None:
    with connect(bench.dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    s = bench.settings
    tuning = {k: v for k, v in os.environ.items()
              if (k.startswith("JOB_") or k == "LOG_LEVEL") and k not in PINNED_ENV}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"grails-workers expiry benchmark: PostgreSQL {row[0] if row else '?'} ({where}); "
          f"Python {platform.python_version()}; {os.cpu_count()} CPUs, load average {load}")
    batch = getattr(s, "expire_batch", None)  # JOB_EXPIRE_BATCH, where the worker has it
    print(f"worker settings: concurrency {s.concurrency}, pool max {s.concurrency + 4}, poll "
          f"interval {s.poll_interval_s:g} s, expire batch {'n/a' if batch is None else batch}, "
          f"log level {s.log_level}"
          f"{''.join(f', {k}={v}' for k, v in tuning.items()) or ' (defaults)'}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--orders", type=int, default=10_000, help="part 1 orders")
    p.add_argument("--spread", type=float, default=60, help="part 1: seconds expiries span")
    p.add_argument("--offer-share", type=float, default=0.2, help="part 1 share of offers")
    p.add_argument("--backlog", type=int, default=50_000, help="part 2 jobs per backlog")
    p.add_argument("--poll-ms", type=float, default=50, help="part 2 progress poll interval")
    p.add_argument("--parts", default="12", help="which parts to run, e.g. 2")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="profile our workers in part 2 with `py-spy record` into DIR")
    args = p.parse_args(argv)
    if min(args.orders, args.backlog) < 1 or args.spread <= 0 or args.poll_ms <= 0:
        p.error("sizes, --spread and --poll-ms must be positive")
    if not 0 <= args.offer_share <= 1:
        p.error("--offer-share must be between 0 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Callable[[Bench], list[Figure]]] = {
        "1": lambda b: [part_lateness(b)], "2": part_throughput}
    started = time.monotonic()
    with (
        server() as (admin_dsn, where), scratch_database(admin_dsn) as dsn,
        tempfile.TemporaryDirectory(prefix="grails-bench-") as tmp,
    ):
        settings = WorkerSettings(database_url=dsn)  # type: ignore[call-arg]
        bench = Bench(dsn, Path(tmp), args, settings)
        print_header(bench, where)
        prepare(bench)
        figures = [f for key, run in parts.items() if key in args.parts for f in run(bench)]
        print_summary(figures)
    print(f"total run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
