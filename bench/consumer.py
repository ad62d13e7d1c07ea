"""Throughput and latency of the WAL consumer, each figure next to a reference from the same run.

Run: ``.venv/bin/python bench/consumer.py [--changes N] [--jobs-inserts N] [--jobs-updates N]
[--rate R] [--seconds S]``. It starts a throwaway PostgreSQL cluster (``LocalPostgres``), or, when
``DATABASE_URL`` is set, creates a scratch database on that server; either is removed at the end.
``WAL_*`` tuning variables in the environment (``WAL_BATCH_MAX_JOBS``...) reach the consumer.

1. No-job backlog. Listings rows exist before two identical pgoutput slots are created on the
   ``grails_workers`` publication; with nothing streaming, ``--changes`` UPDATEs of
   ``updated_at`` (a column no route reads) are committed in ``--txn-rows`` transactions.
   Reference: ``pg_recvlogical --start --endpos`` draining the second slot to a file, timed from
   start to exit. Measured: ``python -m wal_consumer run`` draining the first slot, timed from
   process start until ``grails_workers.consumer_checkpoint.end_lsn`` passes the end of the
   backlog; its start-up (until it logs "streaming slot") is also shown on its own.
2. Job-making backlog. With the consumer stopped, ``--jobs-inserts`` active listings with an
   expiry (3 jobs each) and ``--jobs-updates`` price changes of those listings (1 job each) are
   committed. Measured: the consumer, from process start until its checkpoint passes the end of
   the backlog and ``procrastinate_jobs`` holds every job. Reference ("insert ceiling"): the
   same job rows, read back and turned into ``procrastinate.jobs.Job`` objects beforehand, are
   inserted again into the emptied table with procrastinate's ``batch_defer_jobs`` on one
   connection, ``--txn-rows`` jobs per committed transaction.
3. Latency. With the consumer streaming, one thread inserts one active listing per
   transaction at ``--rate`` per second on a fixed monotonic schedule and records when each
   commit returned; another polls ``procrastinate_jobs`` every ``--poll-ms`` ms for new
   ``notify-watchers`` jobs and records when each listing's job was first seen. Latency is seen
   minus committed (both ``time.monotonic()`` in this process); the poll interval is the
   resolution. The first ``--warmup`` seconds are written but not counted.

The end of a backlog is ``pg_current_wal_insert_lsn()`` read inside its last transaction just
before COMMIT: the commit record (and its end LSN, which the checkpoint stores) lies past it,
every earlier transaction ends before it, and pg_recvlogical stops at the first message past it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from benchlib import (
    BenchError,
    Figure,
    percentile,
    print_summary,
    scratch_database,
    server,
    start_py_spy,
)
from benchlib import wait_for as _wait_for
from procrastinate.jobs import Job
from psycopg.rows import dict_row

from wal_consumer import sqlfiles
from wal_consumer.enqueue import procrastinate_app
from wal_consumer.localpg import LocalPostgresError, find_bindir
from wal_consumer.protocol import format_lsn, parse_lsn
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

ROOT = Path(__file__).resolve().parent.parent
PUBLICATION = "grails_workers"
SELLER = "0xabcdef0000000000000000000000000000000001"
ENS_NAMES = 1000
CHECK_INTERVAL_S = 0.005  # how often the checkpoint is polled while a backlog drains
wait_for = functools.partial(_wait_for, interval=CHECK_INTERVAL_S)
JOBS_PER_INSERT = 3  # notify-watchers, sync-ens-data, expire-orders
# ... but a name has at most one pending sync-ens-data (its queueing lock), and nothing works
# them here: the inserts, spread over ENS_NAMES names, make one sync per name.
JOBS_PER_PRICE_UPDATE = 1  # notify-watchers
# Settings that decide what the consumer streams: the benchmark sets them, the environment can't.
PINNED_ENV = ("WAL_DATABASE_URL", "WAL_SLOT", "WAL_PUBLICATION", "WAL_TABLES", "WAL_LOG_LEVEL")

INSERT_LISTINGS = (
    "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
    " SELECT 1 + g %% %(names)s, %(seller)s, (1000000000000000000 + g)::text, 'active',"
    "  now()::timestamp + interval '30 days' + g * interval '1 second'"
    " FROM generate_series(%(lo)s, %(hi)s - 1) g"
)
TOUCH_LISTINGS = "UPDATE listings SET updated_at = now() WHERE id >= %(lo)s AND id < %(hi)s"
REPRICE_LISTINGS = (
    "UPDATE listings SET price_wei = (price_wei::numeric + 1)::text"
    " WHERE id >= %(lo)s AND id < %(hi)s"
)
INSERT_ONE_LISTING = (
    "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
    " VALUES (%s, %s, '1000000000000000000', 'active',"
    " now()::timestamp + interval '30 days') RETURNING id"
)
POLL_NOTIFY_JOBS = (
    "SELECT id, (args->>'listing_id')::int FROM procrastinate_jobs"
    " WHERE id > %s AND task_name = 'notify-watchers' ORDER BY id"
)


@dataclass
class Bench:
    dsn: str
    workdir: Path
    args: argparse.Namespace
    listing_ids: range = range(0)


# -- server and scratch database ----------------------------------------------------------------


def drop_slots(conn: psycopg.Connection, dbname: str | None = None, *names: str) -> None:
    """Drop the named slots (or every slot of ``dbname``), ending whoever streams them."""
    rows = conn.execute(
        "SELECT slot_name, active_pid FROM pg_replication_slots"
        " WHERE database = %s OR slot_name = ANY(%s)", [dbname, list(names)],
    ).fetchall()
    for slot, pid in rows:
        if pid is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        wait_for(functools.partial(slot_released, conn, slot), timeout=10,
                 what=f"slot {slot} to be released")
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])


def slot_released(conn: psycopg.Connection, slot: str) -> bool:
    return conn.execute(
        "SELECT active_pid IS NULL FROM pg_replication_slots WHERE slot_name = %s", [slot]
    ).fetchone() in (None, (True,))


def checkpoint_server(dsn: str) -> None:
    """Flush dirty buffers before a timed phase so a checkpoint is less likely during it."""
    with psycopg.connect(dsn, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
        conn.execute("CHECKPOINT")


# -- waiting ------------------------------------------------------------------------------------


def checkpoint_passed(conn: psycopg.Connection, slot: str, target: int) -> bool:
    row = conn.execute(
        "SELECT end_lsn >= %s::pg_lsn FROM grails_workers.consumer_checkpoint"
        " WHERE slot_name = %s", [format_lsn(target), slot],
    ).fetchone()
    return row == (True,)


def job_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
    assert row is not None
    return int(row[0])


# -- the consumer as a subprocess ---------------------------------------------------------------


@dataclass
class ConsumerProcess:
    """`python -m wal_consumer run` on one slot; its output is timestamped as it arrives."""

    dsn: str
    slot: str
    log_path: Path
    profile_dir: Path | None = None
    started: float = 0.0
    streaming_at: float = 0.0
    proc: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None
    streaming: threading.Event = field(default_factory=threading.Event)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
        env.update(DATABASE_URL=self.dsn, WAL_SLOT=self.slot, WAL_PUBLICATION=PUBLICATION,
                   LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
        return env

    def start(self) -> ConsumerProcess:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wal_consumer", "run"], env=self.env(), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        if self.profile_dir is not None:
            self.profiler = start_py_spy(self.proc.pid, self.profile_dir / f"{self.slot}.txt")
        return self

    def _pump(self, stream: IO[bytes]) -> None:
        with self.log_path.open("wb") as log:
            for line in stream:
                if not self.streaming.is_set() and b"streaming slot" in line:
                    self.streaming_at = time.monotonic()
                    self.streaming.set()
                log.write(line)
                log.flush()

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"the consumer exited early; its log:\n{self.log_tail()}")
        return True

    def wait_streaming(self, timeout: float = 60) -> float:
        wait_for(lambda: self.alive() and self.streaming.is_set(), timeout=timeout,
                 what="the consumer to start streaming")
        return self.streaming_at - self.started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.profiler is not None:
            self.profiler.wait(60)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def consumer(bench: Bench, slot: str) -> Iterator[ConsumerProcess]:
    process = ConsumerProcess(bench.dsn, slot, bench.workdir / f"{slot}.log",
                              bench.args.py_spy).start()
    try:
        yield process
    finally:
        process.stop()


# -- preparing the database and writing backlogs ------------------------------------------------


def settings_for(bench: Bench, slot: str) -> ConsumerSettings:
    return ConsumerSettings(database_url=bench.dsn, slot=slot, publication=PUBLICATION)  # type: ignore[call-arg]


def prepare(bench: Bench) -> None:
    """Marketplace tables, ENS names and part 1's listings, before any slot exists."""
    rows = bench.args.changes if "1" in bench.args.parts else 0
    with psycopg.connect(bench.dsn) as conn:
        conn.execute(sqlfiles.read("marketplace_dev.sql").encode())
        conn.execute(
            "INSERT INTO ens_names (name, token_id, owner_address)"
            " SELECT 'bench' || g || '.eth', g::text, %s FROM generate_series(1, %s) g",
            [SELLER, ENS_NAMES],
        )
        first = next_listing_id(conn)
        conn.execute(INSERT_LISTINGS, {"names": ENS_NAMES, "seller": SELLER, "lo": 0, "hi": rows})
        bench.listing_ids = range(first, first + rows)
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    setup(settings_for(bench, "bench_setup"))  # our schema, procrastinate's, publication
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        drop_slots(conn, None, "bench_setup")


def next_listing_id(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END"
        " FROM listings_id_seq"
    ).fetchone()
    assert row is not None
    return int(row[0])


def create_slots(bench: Bench, slot: str, *extra: str) -> None:
    """``slot`` with its checkpoint row (via setup), then ``extra`` pgoutput slots."""
    setup(settings_for(bench, slot))
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        for name in extra:
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [name])


def chunks(ids: range, size: int) -> list[dict[str, int]]:
    return [{"lo": lo, "hi": min(lo + size, ids.stop)} for lo in range(ids.start, ids.stop, size)]


def write_backlog(dsn: str, statements: Sequence[tuple[str, dict[str, Any]]]) -> int:
    """Commit each statement in its own transaction; return the backlog's end (see docstring)."""
    end = 0
    with psycopg.connect(dsn) as conn:
        for i, (query, params) in enumerate(statements):
            conn.execute(query, params)
            if i == len(statements) - 1:
                row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
                assert row is not None
                end = parse_lsn(row[0])
            conn.commit()
    if not end:
        raise BenchError("empty backlog: nothing to measure")
    return end


# -- part 1: a backlog that makes no jobs -------------------------------------------------------


def recvlogical_command() -> Path:
    with contextlib.suppress(LocalPostgresError):
        candidate = find_bindir() / "pg_recvlogical"
        if candidate.exists():
            return candidate
    found = shutil.which("pg_recvlogical")
    if found is None:
        raise BenchError("pg_recvlogical not found (install the PostgreSQL client binaries)")
    return Path(found)


def run_pg_recvlogical(bench: Bench, slot: str, endpos: int) -> float:
    """Seconds from starting pg_recvlogical on ``slot`` until it exits at ``endpos``."""
    output = bench.workdir / f"{slot}.out"
    command = [
        str(recvlogical_command()), "--verbose", "--dbname", bench.dsn, "--slot", slot, "--start",
        "--no-loop", "-f", str(output), "--endpos", format_lsn(endpos),
        "-o", "proto_version=1", "-o", f"publication_names={PUBLICATION}",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - started
    if result.returncode != 0 or "end position" not in result.stderr:
        raise BenchError(f"pg_recvlogical failed ({result.returncode}) or stopped before "
                         f"{format_lsn(endpos)}: {result.stderr.strip()}")
    return elapsed


def drain(bench: Bench, slot: str, target: int, jobs: int | None = None) -> tuple[float, float]:
    """Run the consumer until its checkpoint passes ``target`` (and ``jobs`` are committed).

    Returns (seconds to "streaming slot", seconds from process start to done).
    """
    timeout = 300 + (jobs or bench.args.changes) / 200  # generous: a stall, not slowness, fails
    with psycopg.connect(bench.dsn, autocommit=True) as conn, consumer(bench, slot) as proc:
        startup = proc.wait_streaming()
        done = wait_for(lambda: proc.alive() and checkpoint_passed(conn, slot, target),
                        timeout=timeout, what=f"the checkpoint of {slot} to pass the backlog")
        if jobs is not None and job_count(conn) != jobs:
            done = wait_for(lambda: job_count(conn) >= jobs, timeout=30,
                            what=f"{jobs:,} jobs in procrastinate_jobs")
            if job_count(conn) != jobs:
                raise BenchError(f"expected {jobs:,} jobs, found {job_count(conn):,}")
        return startup, done - proc.started


def part_no_jobs(bench: Bench) -> Figure:
    n, slot, ref = bench.args.changes, "bench_nojobs", "bench_nojobs_ref"
    print(f"\n== 1. no-job backlog: {n:,} UPDATEs of listings.updated_at "
          f"in transactions of {bench.args.txn_rows:,} rows")
    create_slots(bench, slot, ref)
    started = time.monotonic()
    target = write_backlog(bench.dsn, [(TOUCH_LISTINGS, c)
                                       for c in chunks(bench.listing_ids, bench.args.txn_rows)])
    print(f"backlog written in {time.monotonic() - started:.1f} s, ends at {format_lsn(target)}")
    checkpoint_server(bench.dsn)
    recv_s = run_pg_recvlogical(bench, ref, target)
    print(f"pg_recvlogical:  {recv_s:7.2f} s  {n / recv_s:10,.0f} changes/s")
    startup_s, total_s = drain(bench, slot, target)
    print(f"wal_consumer:    {total_s:7.2f} s  {n / total_s:10,.0f} changes/s"
          f"  (start-up {startup_s:.2f} s; after start-up {n / (total_s - startup_s):,.0f}"
          " changes/s)")
    ratio = recv_s / total_s
    print(f"ratio consumer/pg_recvlogical: {ratio:.1%}  (aim >= 50%)")
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        drop_slots(conn, None, slot, ref)
    return Figure(f"1 no-job backlog, {n:,} changes", f"{n / total_s:,.0f} changes/s",
                  f"pg_recvlogical {n / recv_s:,.0f} changes/s", ratio, ">= 50%", ratio >= 0.5)


# -- part 2: a backlog that makes jobs ----------------------------------------------------------


def job_backlog(bench: Bench) -> list[tuple[str, dict[str, Any]]]:
    """Inserts of active listings with an expiry, then price updates of the first of them."""
    a = bench.args
    with psycopg.connect(bench.dsn) as conn:
        first = next_listing_id(conn)
    inserted = range(first, first + a.jobs_inserts)
    inserts = [
        (INSERT_LISTINGS, {"names": ENS_NAMES, "seller": SELLER,
                           "lo": c["lo"] - first, "hi": c["hi"] - first})
        for c in chunks(inserted, a.txn_rows)
    ]
    updates = [(REPRICE_LISTINGS, c)
               for c in chunks(range(first, first + a.jobs_updates), a.txn_rows)]
    return inserts + updates


def load_jobs(conn: psycopg.Connection) -> list[Job]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT queue_name, task_name, priority, args, scheduled_at"
            " FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
    return [
        Job(id=None, queue=r["queue_name"], lock=None, queueing_lock=None,
            task_name=r["task_name"], priority=r["priority"], task_kwargs=r["args"],
            scheduled_at=r["scheduled_at"])
        for r in rows
    ]


def insert_ceiling(dsn: str, jobs: list[Job], batch: int) -> float:
    """Seconds to insert ``jobs`` with procrastinate's batch defer, committing every batch."""
    app = procrastinate_app()  # the App the consumer builds
    with psycopg.connect(dsn) as conn:
        started = time.monotonic()
        for lo in range(0, len(jobs), batch):
            app.job_manager.batch_defer_jobs(jobs=jobs[lo:lo + batch], connection=conn)
            conn.commit()
        elapsed = time.monotonic() - started
        if job_count(conn) != len(jobs):
            raise BenchError("the insert ceiling run lost jobs")
    return elapsed


def empty_job_queue(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE procrastinate_jobs CASCADE")


def part_jobs(bench: Bench) -> Figure:
    a, slot = bench.args, "bench_jobs"
    expected = (a.jobs_inserts * (JOBS_PER_INSERT - 1) + min(a.jobs_inserts, ENS_NAMES)
                + a.jobs_updates * JOBS_PER_PRICE_UPDATE)
    print(f"\n== 2. job-making backlog: {a.jobs_inserts:,} listing inserts + "
          f"{a.jobs_updates:,} price updates = {expected:,} jobs")
    create_slots(bench, slot)
    started = time.monotonic()
    target = write_backlog(bench.dsn, job_backlog(bench))
    print(f"backlog written in {time.monotonic() - started:.1f} s, ends at {format_lsn(target)}")
    checkpoint_server(bench.dsn)
    startup_s, total_s = drain(bench, slot, target, expected)
    print(f"wal_consumer:    {total_s:7.2f} s  {expected / total_s:10,.0f} jobs/s"
          f"  (start-up {startup_s:.2f} s; after start-up "
          f"{expected / (total_s - startup_s):,.0f} jobs/s)")
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        drop_slots(conn, None, slot)
        jobs = load_jobs(conn)
    empty_job_queue(bench.dsn)
    checkpoint_server(bench.dsn)
    ceiling_s = insert_ceiling(bench.dsn, jobs, a.txn_rows)
    print(f"batch_defer_jobs:{ceiling_s:7.2f} s  {expected / ceiling_s:10,.0f} jobs/s"
          f"  (insert ceiling: {a.txn_rows:,} jobs per transaction, one connection)")
    empty_job_queue(bench.dsn)
    ratio = ceiling_s / total_s
    print(f"ratio consumer/insert ceiling: {ratio:.1%}  (aim >= 70%)")
    return Figure(f"2 job backlog, {expected:,} jobs", f"{expected / total_s:,.0f} jobs/s",
                  f"batch_defer_jobs {expected / ceiling_s:,.0f} jobs/s", ratio, ">= 70%",
                  ratio >= 0.7)


# -- part 3: latency at a steady rate -----------------------------------------------------------


@dataclass
class LatencyRun:
    committed: dict[int, float] = field(default_factory=dict)
    seen: dict[int, float] = field(default_factory=dict)
    warmup_ids: set[int] = field(default_factory=set)
    writer_done: threading.Event = field(default_factory=threading.Event)
    poller_done: threading.Event = field(default_factory=threading.Event)
    max_behind_s: float = 0.0
    wrote_s: float = 0.0
    polls: int = 0
    polled_s: float = 0.0
    error: BaseException | None = None


def paced_writer(dsn: str, rate: float, seconds: float, warmup: float, run: LatencyRun) -> None:
    """One listing per transaction on the schedule start + i/rate; catch up, never drift."""
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            warm, total = round(warmup * rate), round((warmup + seconds) * rate)
            start = time.monotonic()
            for i in range(total):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    run.max_behind_s = max(run.max_behind_s, -delay)
                row = conn.execute(INSERT_ONE_LISTING, [1 + i % ENS_NAMES, SELLER]).fetchone()
                committed = time.monotonic()
                assert row is not None
                run.committed[row[0]] = committed
                if i < warm:
                    run.warmup_ids.add(row[0])
            run.wrote_s = time.monotonic() - start
    except BaseException as exc:
        run.error = exc
    finally:
        run.writer_done.set()


def poller(dsn: str, interval: float, run: LatencyRun) -> None:
    """Every ``interval`` s, note the first time each listing's notify-watchers job is seen."""
    last_id = 0
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            # The table was just emptied, so its statistics say a seq scan is cheapest; it is
            # not, 500 times a second over a growing table: walk the primary key instead.
            conn.execute("SET enable_seqscan = off")
            started = due = time.monotonic()
            while not run.poller_done.is_set():
                rows = conn.execute(POLL_NOTIFY_JOBS, [last_id]).fetchall()
                now = time.monotonic()
                for job_id, listing_id in rows:
                    run.seen.setdefault(listing_id, now)
                    last_id = job_id
                run.polls += 1
                due = max(due + interval, now)
                time.sleep(max(0.0, due - time.monotonic()))
            run.polled_s = time.monotonic() - started
    except BaseException as exc:
        run.error = exc


def measure_latency(bench: Bench) -> LatencyRun:
    a, run = bench.args, LatencyRun()
    threads = [
        threading.Thread(target=paced_writer,
                         args=(bench.dsn, a.rate, a.seconds, a.warmup, run), daemon=True),
        threading.Thread(target=poller, args=(bench.dsn, a.poll_ms / 1000, run), daemon=True),
    ]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # a thread waiting for the GIL stamps its time late
    try:
        for thread in threads:
            thread.start()
        run.writer_done.wait()
        with contextlib.suppress(BenchError):  # jobs never seen are reported as missing
            wait_for(lambda: run.error is not None or len(run.seen) >= len(run.committed),
                     timeout=30, what="every listing's job", interval=0.05)
        run.poller_done.set()
        for thread in threads:
            thread.join(10)
    finally:
        sys.setswitchinterval(switch_interval)
    if run.error is not None:
        raise BenchError(f"latency run failed: {run.error!r}")
    return run


def part_latency(bench: Bench) -> Figure:
    a, slot = bench.args, "bench_latency"
    print(f"\n== 3. latency: one listing insert per transaction at {a.rate:,.0f}/s for "
          f"{a.seconds:g} s (+{a.warmup:g} s warm-up), polled every {a.poll_ms:g} ms")
    create_slots(bench, slot)
    with consumer(bench, slot) as proc:
        proc.wait_streaming()
        run = measure_latency(bench)
        proc.alive()
    counted = [i for i in run.committed if i not in run.warmup_ids]
    latencies = sorted((run.seen[i] - run.committed[i]) * 1000 for i in counted if i in run.seen)
    missing = len(counted) - len(latencies)
    if not latencies:
        raise BenchError("no job of the latency run was seen")
    p50, p95, p99 = (percentile(latencies, p) for p in (50, 95, 99))
    print(f"{len(latencies):,} listings counted, {missing} never seen; writer achieved "
          f"{len(run.committed) / run.wrote_s:,.0f} commits/s, at worst "
          f"{run.max_behind_s * 1000:.1f} ms behind schedule")
    print(f"commit -> job visible: p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, "
          f"max {latencies[-1]:.1f} ms (resolution: one poll cycle, "
          f"{run.polled_s / max(run.polls, 1) * 1000:.2f} ms on average, {a.poll_ms:g} ms asked)")
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        drop_slots(conn, None, slot)
    empty_job_queue(bench.dsn)
    return Figure(f"3 latency at {a.rate:,.0f} changes/s", f"p99 {p99:.1f} ms",
                  f"p50 {p50:.1f} / p95 {p95:.1f} / max {latencies[-1]:.1f} ms", None,
                  "p99 < 50 ms", p99 < 50 and missing == 0)


# -- report -------------------------------------------------------------------------------------


def print_header(bench: Bench, where: str) -> None:
    with psycopg.connect(bench.dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    tuning = {k: v for k, v in os.environ.items() if k.startswith("WAL_") and k not in PINNED_ENV}
    print(f"grails-workers consumer benchmark: PostgreSQL {row[0] if row else '?'} ({where}); "
          f"Python {platform.python_version()}; {os.cpu_count()} CPUs")
    print(f"consumer settings: defaults{''.join(f', {k}={v}' for k, v in tuning.items())}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--changes", type=int, default=300_000, help="part 1 backlog size")
    p.add_argument("--jobs-inserts", type=int, default=200_000, help="part 2 listing inserts")
    p.add_argument("--jobs-updates", type=int, default=100_000, help="part 2 price updates")
    p.add_argument("--txn-rows", type=int, default=1000, help="rows (jobs) per transaction")
    p.add_argument("--rate", type=float, default=1000, help="part 3 commits per second")
    p.add_argument("--seconds", type=float, default=30, help="part 3 measured duration")
    p.add_argument("--warmup", type=float, default=1, help="part 3 uncounted warm-up seconds")
    p.add_argument("--poll-ms", type=float, default=2, help="part 3 job poll interval")
    p.add_argument("--parts", default="123", help="which parts to run, e.g. 13")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="profile each consumer with `py-spy record` into DIR (slows it down)")
    args = p.parse_args(argv)
    if args.jobs_updates > args.jobs_inserts:
        p.error("--jobs-updates cannot exceed --jobs-inserts (each update reprices one insert)")
    if min(args.changes, args.jobs_inserts, args.txn_rows) < 1 or args.rate <= 0:
        p.error("sizes and --rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    parts = {"1": part_no_jobs, "2": part_jobs, "3": part_latency}
    started = time.monotonic()
    with (
        server() as (admin_dsn, where), scratch_database(admin_dsn) as dsn,
        tempfile.TemporaryDirectory(prefix="grails-bench-") as tmp,
    ):
        bench = Bench(dsn, Path(tmp), args)
        print_header(bench, where)
        prepare(bench)
        figures = [run(bench) for key, run in parts.items() if key in args.parts]
        print_summary(figures)
    print(f"total run time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
