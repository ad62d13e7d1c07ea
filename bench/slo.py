"""SLO report: the PRD's success metrics under a mixed marketplace workload, beside its targets.

Run: ``.venv/bin/python bench/slo.py [--minutes 3] [--rate 20] [--workers 1] [--quick]``.
It starts a throwaway PostgreSQL cluster (``LocalPostgres``), or, when ``DATABASE_URL`` is set,
creates a scratch database on that server; either is removed at the end. ``--quick`` is a smoke
run of about 45 s (a 30 s load window, a 2 s warm-up, a burst of 250 writes). With
``--strict`` the exit status is 1 when a target is missed. ``--py-spy DIR`` samples the daemons
(and slows them down).

Everything runs for real, as in production: ``python -m wal_consumer run`` streams the slot that
``setup --dev-schema`` created and defers the jobs; ``--workers`` processes of
``python -m job_handlers worker --queue expiry --queue ownership --queue notifications
--queue maintenance`` work them (no chain here: ``ETH_RPC_URL`` is removed from the daemons'
environment, so ``sync-ens-data`` jobs wait on the unserved ``ens-sync`` queue and
``reconcile-ownership`` is not scheduled); an SMTP server (aiosmtpd) in this process on a free
port (``SMTP_URL=smtp://127.0.0.1:PORT``) keeps every message with the ``time.monotonic()`` at
which its DATA was complete. ``JOB_*``/``WAL_*``/``LOG_LEVEL`` variables in the environment
reach the daemons, except that ``JOB_EMAIL_RATE_PER_S`` is set to 1000 unless the environment
sets it (the default 10 emails/s shared by all workers is a provider quota, and this workload
asks for ~57 emails/s at 20 writes/s) and ``JOB_UNSUBSCRIBE_SECRET`` to a fixed value.

Data, written before the replication slot exists (so the consumer never sees it): ``--names``
names, each owned by one of 40 seller users and watched by 1 to 5 of 500 watcher users (every
watchlist flag on; verified email addresses), half of them with an active listing expiring in
7-30 days. The queue is not new either: ``--history`` (100,000) succeeded jobs of the workload's
mix and the seeded listings' pending ``expire-orders`` jobs, then VACUUM ANALYZE, as a queue
that has been running looks (the worker keeps a week of succeeded jobs). ``--cold`` starts from
the empty queue of a new deployment instead: its planner statistics say "empty" until
autovacuum's first ANALYZE, and procrastinate's fetch (``procrastinate_fetch_job_v2``) then
runs as nested sequential scans whose cost grows with the backlog (15-60 ms per fetch with a
few hundred runnable jobs, seen with auto_explain), which one worker's serial fetch loop turns
into a collapse of throughput within the first minute. Then, one marketplace write per
transaction, as the API and indexer make them:

- ``warm-up`` (``--warmup`` s, not counted), then the ``steady`` window (``--minutes``): writes at
  ``--rate`` per second with Poisson arrivals, drawn from this mix: new listing on a free name
  (24 %), price change of an active listing (18 %), offer (18 %), sale (10 %), a listing expiring
  soon (10 %) and an offer expiring soon (10 %) (``expires_at`` 5 to 60 s ahead, never after the
  end of the window), and an owner change of a name with an active listing (10 %, the indexer's
  UPDATE of ``ens_names.owner_address``; the listing's seller, a user, is emailed).
- then the ``drain``: until every write has its jobs, no job is due or running (``ens-sync``
  aside) and the last expiry has passed.
- then a ``burst`` (``--burst`` writes of the same mix without expiring orders, in transactions
  of 50, as fast as this process writes them), drained the same way: the queue's capacity.

Measured (server timestamps are mapped onto this process's monotonic clock with an offset
measured by bracketing ``clock_timestamp()`` reads; the commit time of a write is when its COMMIT
returned here; every write is traced to its jobs through the consumer's ``event_key``):

- expiry accuracy: steady orders expiring soon; lateness = ``updated_at`` (the handler's UPDATE,
  server clock) - ``expires_at``; share within 60 s and p99 (an order still open 60 s after its
  ``expires_at`` is a miss).
- notification latency: commit -> the SMTP server has the email (Message-ID ``notification-<id>``
  -> ``notifications.event_key`` -> the write), per (write, recipient), first copy; delivery =
  distinct (write, recipient) received / expected (the name's watchers; the seller for an owner
  change); duplicates are counted.
- ownership detection: the owner change's commit -> its ``update-ownership`` job 'succeeded'
  (after the transaction that cancelled the stale listing committed); the listing must be
  cancelled. This is the database half of the PRD's path; chain detection (reconcile-ownership
  every 5 minutes) is not part of this run.
- processing latency, every job of the steady writes and every periodic job of the window that
  finished: from when it could run (the source write's commit; an expiry's ``expires_at`` if
  later; a periodic job's ``scheduled_at``) to its 'succeeded'/'failed' event; a
  ``send-notification`` is counted from the commit of the event that caused it. Shown beside
  it: each task's stages (consumer: commit -> 'deferred'; wait; run), and how busy the workers
  were (jobs running and waiting on average, time with jobs waiting and none running).
- dead-letter rate: failed jobs / finished jobs, plus the consumer's dead letters, whole run.
- jobs/s: jobs finished per second in the steady window (the offered load) and in the burst
  (first burst commit -> last job finished: the capacity the PRD's >100 jobs/s is about).
- worker CPU: psutil, each worker process's CPU time sampled every 0.5 s; % of one core, average
  over the steady window and the highest 1-s value; the consumer, the PostgreSQL server (the
  postmaster's children, when it runs on this machine), this process and the machine for
  context, and what the rest of the machine used ("others": figures from a busy machine are
  flagged).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import heapq
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any

import psutil
import psycopg
from benchlib import (
    BenchError,
    Catcher,
    Daemon,
    Mail,
    percentile,
    scratch_database,
    server,
    start_py_spy,
)

from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("expiry", "ownership", "notifications", "maintenance")
UNSERVED_QUEUE = "ens-sync"
BENCH_EMAIL_RATE = "1000"
UNSUBSCRIBE_SECRET = "slo-report-unsubscribe-secret"
# What the report decides: where the daemons connect and send, which slot is streamed, no chain,
# no metrics port (several runs on one machine would fight over it).
PINNED_ENV = ("DATABASE_URL", "JOB_DATABASE_URL", "WAL_DATABASE_URL", "SMTP_URL", "JOB_SMTP_URL",
              "WAL_SLOT", "WAL_PUBLICATION", "WAL_TABLES", "ETH_RPC_URL", "JOB_ETH_RPC_URL",
              "JOB_METRICS_PORT", "WAL_METRICS_PORT", "JOB_UNSUBSCRIBE_SECRET")
MESSAGE_ID = re.compile(rb"^Message-ID:\s*<notification-(\d+)@", re.IGNORECASE | re.MULTILINE)
SELLERS = 40
WATCHER_USERS = 500
WATCHERS_PER_NAME = (1, 5)
BURST_TXN = 50  # burst writes per transaction
CPU_SAMPLE_S = 0.5
DRAIN_TIMEOUT_S = 180.0
STALL_S = 5.0
DRAIN_POLL_S = 0.25

STEADY_MIX = {"new-listing": 24, "price-change": 18, "new-offer": 18, "sale": 10,
              "expiring-listing": 10, "expiring-offer": 10, "owner-change": 10}
BURST_MIX = {"new-listing": 28, "price-change": 22, "new-offer": 22, "sale": 14,
             "owner-change": 14}

# The PRD's targets (Goals & Success Metrics; Success Criteria's benchmarks for jobs/s and CPU).
TARGETS = {
    "expiry": "99%+ expired within 1 min",
    "notify_latency": "p95 < 30 s",
    "notify_delivery": "99.9%+ delivered",
    "ownership": "p99 < 5 min",
    "processing": "p95 < 100 ms",
    "dead_letters": "< 0.1% of jobs",
    "throughput": "> 100 jobs/s",
    "cpu": "avg < 60%",
}

INSERT_LISTING = (
    "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
    " VALUES (%s, %s, %s, 'active', localtimestamp + make_interval(secs => %s)) RETURNING id"
)
INSERT_OFFER = (
    "INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei, status, expires_at)"
    " VALUES (%s, %s, %s, 'pending', localtimestamp + make_interval(secs => %s)) RETURNING id"
)
CHANGE_PRICE = ("UPDATE listings SET price_wei = %s, updated_at = localtimestamp"
                " WHERE id = %s AND status = 'active'")
SELL = ("UPDATE listings SET status = 'sold', updated_at = localtimestamp"
        " WHERE id = %s AND status = 'active'")
CHANGE_OWNER = "UPDATE ens_names SET owner_address = %s, updated_at = localtimestamp WHERE id = %s"

# Polled while draining, so cheap: new source jobs along the primary key (the consumer, their
# only author, commits them in id order), and whether any job is due or running.
NEW_SOURCE_JOBS = ("SELECT count(*), max(id) FROM procrastinate_jobs WHERE id > %s"
                   " AND task_name IN ('notify-watchers', 'update-ownership')")
ANY_RUNNABLE = ("SELECT EXISTS (SELECT FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                " AND queue_name <> %s AND (scheduled_at IS NULL OR scheduled_at <= now()))")
JOBS = """
SELECT j.id, j.task_name, j.queue_name, j.status::text, j.attempts, j.args,
       extract(epoch FROM j.scheduled_at)::float8,
       extract(epoch FROM e.deferred)::float8, extract(epoch FROM e.started)::float8,
       extract(epoch FROM e.finished)::float8
  FROM procrastinate_jobs j
  LEFT JOIN LATERAL (
    SELECT min(at) FILTER (WHERE type = 'deferred') AS deferred,
           min(at) FILTER (WHERE type = 'started') AS started,
           max(at) FILTER (WHERE type IN ('succeeded', 'failed')) AS finished
      FROM procrastinate_events WHERE job_id = j.id) e ON true
 WHERE j.id > %s
"""
# The queue as it looks after running a while: succeeded jobs of the workload's mix (the worker
# keeps a week of them), and the expire-orders job of every seeded listing, due in days.
HISTORY = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, attempts)
SELECT m.q, m.t, jsonb_build_object('history', g), 'succeeded', 1
  FROM generate_series(1, %(n)s) g
  JOIN (VALUES (0, 60, 'notifications', 'send-notification'),
               (60, 80, 'notifications', 'notify-watchers'), (80, 90, 'expiry', 'expire-orders'),
               (90, 93, 'ownership', 'update-ownership'), (93, 100, 'ens-sync', 'sync-ens-data')
       ) AS m(lo, hi, q, t) ON g %% 100 >= m.lo AND g %% 100 < m.hi
"""
PENDING_EXPIRIES = """
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, scheduled_at)
SELECT 'expiry', 'expire-orders',
       jsonb_build_object('type', 'listing', 'id', id, 'expires_at',
                          to_char(expires_at, 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                          'event_key', 'history:' || id),
       'todo', expires_at AT TIME ZONE 'UTC'
  FROM listings WHERE status = 'active' AND expires_at IS NOT NULL
"""
ORDERS = """
SELECT 'listing', id, status, extract(epoch FROM expires_at AT TIME ZONE 'UTC')::float8,
       extract(epoch FROM updated_at AT TIME ZONE 'UTC')::float8
  FROM listings WHERE id = ANY(%(listings)s)
UNION ALL
SELECT 'offer', id, status, extract(epoch FROM expires_at AT TIME ZONE 'UTC')::float8,
       extract(epoch FROM updated_at AT TIME ZONE 'UTC')::float8
  FROM offers WHERE id = ANY(%(offers)s)
"""


def connect(dsn: str, autocommit: bool = False) -> psycopg.Connection:
    """Naive timestamps in UTC, as the daemons read them (``NAIVE_TIMESTAMP_TIMEZONE``)."""
    return psycopg.connect(dsn, autocommit=autocommit, options="-c timezone=UTC")


def scalar(conn: psycopg.Connection, query: str, params: Sequence[object] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


# -- the daemons --------------------------------------------------------------------------------


def daemon_env(dsn: str, smtp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED_ENV}
    env.setdefault("JOB_EMAIL_RATE_PER_S", BENCH_EMAIL_RATE)
    env.update(DATABASE_URL=dsn, SMTP_URL=smtp_url, JOB_UNSUBSCRIBE_SECRET=UNSUBSCRIBE_SECRET,
               JOB_METRICS_PORT="0", WAL_METRICS_PORT="0", PYTHONUNBUFFERED="1")
    return env


@contextlib.contextmanager
def daemons(dsn: str, smtp_url: str, workdir: Path, workers: int) -> Iterator[list[Daemon]]:
    """The consumer, then ``workers`` workers; started, ready, and stopped at the end."""
    env = daemon_env(dsn, smtp_url)
    queue_args = [arg for q in QUEUES for arg in ("--queue", q)]
    procs = [Daemon("consumer", ["wal_consumer", "run"], env, workdir / "consumer.log")]
    procs += [Daemon(f"worker{i + 1}", ["job_handlers", "worker", *queue_args], env,
                     workdir / f"worker{i + 1}.log") for i in range(workers)]
    with connect(dsn, autocommit=True) as conn:
        try:
            for proc in procs:
                proc.start()
            deadline = time.monotonic() + 60
            while not (all(p.alive() for p in procs) and procs[0].logged("streaming slot")
                       and scalar(conn, "SELECT count(*) FROM procrastinate_workers") >= workers):
                if time.monotonic() > deadline:
                    raise BenchError("the consumer did not stream or the workers did not "
                                     "register within 60 s")
                time.sleep(0.05)
            yield procs
        finally:
            for proc in procs:
                proc.stop()


# -- CPU ----------------------------------------------------------------------------------------


@dataclass
class CpuSampler:
    """CPU seconds of named process groups, sampled every ``CPU_SAMPLE_S`` in a thread.

    A group's figure is the sum, over its processes, of CPU time gained since the process was
    first seen (a process that appears later counts from zero: it started in the interval).
    """

    groups: dict[str, Any]  # name -> callable returning the group's current psutil.Process list
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _last: dict[tuple[str, int], float] = field(default_factory=dict)

    def sample(self) -> None:
        now = time.monotonic()
        for name, members in self.groups.items():
            for proc in members():
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    cpu = t.user + t.system
                    key = (name, proc.pid)
                    self._totals[name] += cpu - self._last.get(key, 0.0)
                    self._last[key] = cpu
        busy = psutil.cpu_times()
        self.samples.append((now, {**self._totals,
                                   "machine": busy.user + busy.system + busy.nice + busy.irq
                                   + busy.softirq + getattr(busy, "steal", 0.0)}))

    def _run(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_S):
            self.sample()

    def start(self) -> CpuSampler:
        for name, members in self.groups.items():  # a baseline: only what comes after counts
            for proc in members():
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    self._last[(name, proc.pid)] = t.user + t.system
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def window(self, name: str, t0: float, t1: float) -> tuple[float, float] | None:
        """(average, highest over ~1 s) % of one core of a group between t0 and t1."""
        inside = [(t, v.get(name, 0.0)) for t, v in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return None
        avg = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * 100
        step = max(1, round(1.0 / CPU_SAMPLE_S))
        peaks = [(inside[i + step][1] - inside[i][1]) / (inside[i + step][0] - inside[i][0]) * 100
                 for i in range(len(inside) - step)]
        return avg, max(peaks, default=avg)


def server_processes(dsn: str) -> Any:
    """A callable listing the PostgreSQL server's processes, or None when it is not local."""
    with connect(dsn) as conn:
        pid = int(scalar(conn, "SELECT pg_backend_pid()"))
    try:
        postmaster = psutil.Process(pid).parent()
    except psutil.Error:
        return None
    if postmaster is None or "postgres" not in postmaster.name():
        return None

    def members() -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [postmaster, *postmaster.children()]
        return []

    return members


# -- the marketplace ----------------------------------------------------------------------------


@dataclass
class Name:
    id: int
    owner: str
    watchers: int
    listing: int | None = None  # its active listing that is not expiring soon


class Pool:
    """A set with O(1) add, remove and random pick."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self.index: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: int) -> None:
        if item not in self.index:
            self.index[item] = len(self.items)
            self.items.append(item)

    def remove(self, item: int) -> None:
        i = self.index.pop(item)
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.index[last] = i

    def pick(self, rng: random.Random) -> int:
        return self.items[rng.randrange(len(self.items))]


@dataclass
class Write:
    seq: int
    phase: str  # warmup, steady, burst
    kind: str
    key: tuple[Any, ...]  # what its notify-watchers / update-ownership job's args identify
    ens_name_id: int
    committed: float = 0.0  # time.monotonic() when its COMMIT returned
    expected_emails: int = 0
    order: tuple[str, int] | None = None  # an order expiring soon
    due: float | None = None  # when that order expires (monotonic, approximate)
    cancels: int | None = None  # the listing an owner change must cancel


@dataclass
class Market:
    rng: random.Random
    names: dict[int, Name]
    sellers: list[str]
    free: Pool = field(default_factory=Pool)
    listed: Pool = field(default_factory=Pool)
    cooling: list[tuple[float, int]] = field(default_factory=list)  # (free again at, name id)
    writes: list[Write] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    history_floor: int = 0  # jobs up to this id were there before the run (not measured)

    @property
    def ids(self) -> list[int]:
        if len(self._ids) != len(self.names):
            self._ids = sorted(self.names)
        return self._ids

    _ids: list[int] = field(default_factory=list)

    def _release_cooled(self) -> None:
        now = time.monotonic()
        while self.cooling and self.cooling[0][0] <= now:
            self.free.add(heapq.heappop(self.cooling)[1])

    def feasible(self, kind: str, expiry_room: float) -> bool:
        if kind in ("new-listing", "expiring-listing") and not self.free:
            return False
        if kind in ("price-change", "sale", "owner-change") and not self.listed:
            return False
        return not (kind.startswith("expiring-") and expiry_room < 5)

    def write(self, cur: psycopg.Cursor[Any], kind: str, phase: str,
              expiry_room: float) -> Write | None:
        """One write of ``kind`` (``new-offer`` when it cannot be made); None if it did nothing.

        ``expiry_room``: seconds an order expiring soon may take at most (its expiry stays
        inside the window).
        """
        self._release_cooled()
        if not self.feasible(kind, expiry_room):
            self.skipped[kind] += 1
            kind = "new-offer"
        rng, seq = self.rng, len(self.writes) + 1
        price = str(10**18 + seq * 1000 + rng.randrange(1000))  # unique: identifies the write
        if kind in ("new-listing", "expiring-listing"):
            name = self.names[self.free.pick(rng)]
            self.free.remove(name.id)
            soon = kind == "expiring-listing"
            secs = rng.uniform(5, min(60, expiry_room)) if soon else rng.uniform(7, 30) * 86400
            cur.execute(INSERT_LISTING, [name.id, name.owner, price, secs])
            row = cur.fetchone()
            assert row is not None
            w = Write(seq, phase, kind, ("new-listing", int(row[0])), name.id,
                      expected_emails=name.watchers)
            if soon:
                w.order, w.due = ("listing", int(row[0])), time.monotonic() + secs
                heapq.heappush(self.cooling, (w.due + 15, name.id))
            else:
                name.listing = int(row[0])
                self.listed.add(name.id)
        elif kind in ("new-offer", "expiring-offer"):
            name = self.names[rng.choice(self.ids)]
            soon = kind == "expiring-offer"
            secs = rng.uniform(5, min(60, expiry_room)) if soon else rng.uniform(1, 7) * 86400
            buyer = f"0xb0{rng.getrandbits(152):038x}"
            cur.execute(INSERT_OFFER, [name.id, buyer, str(10**17 + seq), secs])
            row = cur.fetchone()
            assert row is not None
            w = Write(seq, phase, kind, ("new-offer", int(row[0])), name.id,
                      expected_emails=name.watchers)
            if soon:
                w.order, w.due = ("offer", int(row[0])), time.monotonic() + secs
        elif kind in ("price-change", "sale"):
            name = self.names[self.listed.pick(rng)]
            assert name.listing is not None
            if kind == "price-change":
                cur.execute(CHANGE_PRICE, [price, name.listing])
                key: tuple[Any, ...] = ("price-change", name.listing, price)
            else:
                cur.execute(SELL, [name.listing])
                key = ("sale", name.listing)
            if cur.rowcount != 1:
                self.skipped[f"{kind} (listing no longer active)"] += 1
                return None
            w = Write(seq, phase, kind, key, name.id, expected_emails=name.watchers)
            if kind == "sale":
                name.listing = None
                self.listed.remove(name.id)
                self.free.add(name.id)
        elif kind == "owner-change":
            name = self.names[self.listed.pick(rng)]
            new_owner = rng.choice([s for s in self.sellers if s != name.owner])
            cur.execute(CHANGE_OWNER, [new_owner, name.id])
            w = Write(seq, phase, kind, ("owner-change", name.id, new_owner.lower()), name.id,
                      expected_emails=1, cancels=name.listing)
            name.owner, name.listing = new_owner, None
            self.listed.remove(name.id)
            self.free.add(name.id)
        else:
            raise ValueError(kind)
        self.writes.append(w)
        return w


def seed(dsn: str, names: int, rng: random.Random, history: int) -> Market:
    """The marketplace tables and their data, then ``setup`` (which creates the slot after it),
    then ``history`` succeeded jobs and the seeded listings' pending expiries in the queue."""
    sellers = [f"0x5e{i:038x}" for i in range(1, SELLERS + 1)]
    with connect(dsn) as conn:
        conn.execute((ROOT / "sql" / "marketplace_dev.sql").read_bytes())
        conn.execute(
            "INSERT INTO users (address, email, email_verified)"
            " SELECT a, 'seller' || i || '@bench.invalid', true"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS t(a, i)", [sellers])
        watcher_ids = [int(r[0]) for r in conn.execute(
            "INSERT INTO users (address, email, email_verified)"
            " SELECT '0xa0' || lpad(to_hex(g), 38, '0'), 'watcher' || g || '@bench.invalid', true"
            " FROM generate_series(1, %s) g RETURNING id", [WATCHER_USERS]).fetchall()]
        owner_of = {int(r[0]): str(r[1]) for r in conn.execute(
            "INSERT INTO ens_names (name, token_id, owner_address)"
            " SELECT 'slo' || i || '.eth', i::text, o"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS t(o, i) RETURNING id, owner_address",
            [[rng.choice(sellers) for _ in range(names)]]).fetchall()}
        ids = sorted(owner_of)
        watch_users, watch_names, count = [], [], {}
        for name_id in ids:
            chosen = rng.sample(watcher_ids, rng.randint(*WATCHERS_PER_NAME))
            watch_users += chosen
            watch_names += [name_id] * len(chosen)
            count[name_id] = len(chosen)
        conn.execute(
            "INSERT INTO watchlist (user_id, ens_name_id, notify_on_sale, notify_on_listing,"
            " notify_on_offer, notify_on_price_change)"
            " SELECT u, n, true, true, true, true FROM unnest(%s::int[], %s::int[]) AS t(u, n)",
            [watch_users, watch_names])
        market = Market(rng, {i: Name(i, owner_of[i], count[i]) for i in ids}, sellers)
        listed = rng.sample(ids, len(ids) // 2)
        rows = conn.execute(
            "INSERT INTO listings (ens_name_id, seller_address, price_wei, status, expires_at)"
            " SELECT n, o, '2000000000000000000', 'active',"
            "  localtimestamp + make_interval(days => 7 + (n %% 23))"
            " FROM unnest(%s::int[], %s::text[]) AS t(n, o) RETURNING id, ens_name_id",
            [listed, [market.names[i].owner for i in listed]]).fetchall()
        conn.commit()
    for listing_id, name_id in rows:
        market.names[name_id].listing = int(listing_id)
        market.listed.add(name_id)
    for name_id in ids:
        if market.names[name_id].listing is None:
            market.free.add(name_id)
    setup(ConsumerSettings(database_url=dsn), dev_schema=True)  # type: ignore[call-arg]
    with connect(dsn, autocommit=True) as conn:
        if history:
            conn.execute(HISTORY, {"n": history})
            conn.execute(PENDING_EXPIRIES)
        market.history_floor = int(scalar(conn, "SELECT coalesce(max(id), 0)"
                                          " FROM procrastinate_jobs"))
        conn.execute("VACUUM ANALYZE")
    return market


# -- the phases ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    started: float
    ended: float  # when the last write committed
    writes: int
    behind_s: float = 0.0  # how far the writer fell behind its schedule, at worst
    drained: float | None = None  # when the queue was drained after it
    jobs_done: int = 0  # jobs finished in the phase (steady: the window; burst: to last_job)
    last_job: float | None = None  # burst: when its last job finished


def paced(market: Market, dsn: str, phase: str, seconds: float, rate: float) -> Phase:
    """Writes at ``rate`` per second (Poisson arrivals) for ``seconds``, one per transaction."""
    rng = market.rng
    kinds, weights = list(STEADY_MIX), list(STEADY_MIX.values())
    count, behind = 0, 0.0
    with connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        start = time.monotonic()
        end = start + seconds
        due = start + rng.expovariate(rate)
        while due < end:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            else:
                behind = max(behind, now - due)
            kind = rng.choices(kinds, weights)[0]
            w = market.write(cur, kind, phase, expiry_room=end - time.monotonic())
            if w is not None:
                w.committed = time.monotonic()
                count += 1
            due += rng.expovariate(rate)
    return Phase(phase, start, time.monotonic(), count, behind)


def burst(market: Market, dsn: str, writes: int) -> Phase:
    """``writes`` writes as fast as they go, ``BURST_TXN`` per transaction."""
    kinds, weights = list(BURST_MIX), list(BURST_MIX.values())
    count = 0
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        conn.commit()
        start = time.monotonic()
        while count < writes:
            batch = []
            for _ in range(min(BURST_TXN, writes - count)):
                w = market.write(cur, market.rng.choices(kinds, weights)[0], "burst", 0.0)
                if w is not None:
                    batch.append(w)
                count += 1
            conn.commit()
            now = time.monotonic()
            for w in batch:
                w.committed = now
    return Phase("burst", start, time.monotonic(), writes)


def drain(dsn: str, market: Market, procs: Sequence[Daemon], phase: Phase) -> None:
    """Until every write has its jobs, nothing is due or running, and the last expiry passed.

    Gives up when nothing has moved for ``STALL_S`` (a write that made no job) or after
    ``DRAIN_TIMEOUT_S``; what is missing shows in the details.
    """
    expected = len(market.writes)
    last_due = max((w.due for w in market.writes if w.due is not None), default=0.0)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S + max(0.0, last_due - time.monotonic())
    sources, after_id = 0, 0
    seen, moved = (-1, True), time.monotonic()
    with connect(dsn, autocommit=True) as conn:
        while True:
            for proc in procs:
                proc.alive()
            now = time.monotonic()
            row = conn.execute(NEW_SOURCE_JOBS, [after_id]).fetchone()
            assert row is not None
            if row[0]:
                sources, after_id = sources + int(row[0]), int(row[1])
            runnable = bool(scalar(conn, ANY_RUNNABLE, [UNSERVED_QUEUE]))
            if now >= last_due + 0.1 and sources >= expected and not runnable:
                phase.drained = now
                return
            if (sources, runnable) != seen:
                seen, moved = (sources, runnable), now
            stalled = now >= last_due + 0.1 and not runnable and now - moved > STALL_S
            if stalled or now > deadline:
                why = f"nothing moved for {STALL_S:g} s" if stalled else "timed out"
                print(f"WARNING: {phase.name}: {why} with {sources} of {expected} source jobs "
                      f"(one per write){' and jobs still runnable' if runnable else ''}")
                phase.drained = now if stalled else None
                return
            time.sleep(DRAIN_POLL_S)


def measure_clock_offset(dsn: str) -> float:
    """Server ``clock_timestamp()`` (epoch s) - ``time.monotonic()``, from the tightest read."""
    best = (float("inf"), 0.0)
    with connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            t0 = time.monotonic()
            value = float(scalar(conn, "SELECT extract(epoch FROM clock_timestamp())::float8"))
            t1 = time.monotonic()
            best = min(best, (t1 - t0, value - (t0 + t1) / 2))
    return best[1]


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Job:
    id: int
    task: str
    queue: str
    status: str
    attempts: int
    args: dict[str, Any]
    scheduled: float | None  # monotonic
    deferred: float | None
    started: float | None
    finished: float | None
    due: float | None = None  # an expire-orders job's expires_at (monotonic)
    write: Write | None = None


def base_key(event_key: str | None) -> str | None:
    """The consumer's ``<commit LSN>:<ordinal>`` of a (possibly suffixed) event_key."""
    if not event_key:
        return None
    return ":".join(event_key.split(":")[:2])


def source_key(task: str, args: dict[str, Any]) -> tuple[Any, ...] | None:
    if task == "notify-watchers":
        event = args.get("event")
        if event == "new-listing":
            return ("new-listing", args.get("listing_id"))
        if event == "price-change":
            return ("price-change", args.get("listing_id"), args.get("price_wei"))
        if event == "sale":
            return ("sale", args.get("listing_id"))
        if event == "new-offer":
            return ("new-offer", args.get("offer_id"))
    if task == "update-ownership":
        return ("owner-change", args.get("ens_name_id"), (args.get("new_owner") or "").lower())
    return None


def load_jobs(dsn: str, market: Market, offset: float) -> tuple[list[Job], dict[str, Write]]:
    # Writes by what their source job's args identify, oldest first: an owner change can repeat
    # (A->B, B->C, C->B), and the consumer defers jobs in commit order, so ids follow writes.
    by_key: dict[tuple[Any, ...], deque[Write]] = defaultdict(deque)
    for w in market.writes:
        by_key[w.key].append(w)

    def mono(x: float | None) -> float | None:
        return None if x is None else x - offset

    with connect(dsn) as conn:
        rows = conn.execute(JOBS, [market.history_floor]).fetchall()
    jobs = [Job(int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], mono(r[6]), mono(r[7]), mono(r[8]),
                mono(r[9])) for r in rows]
    for job in jobs:
        if job.task == "expire-orders" and job.args.get("expires_at"):
            expires = datetime.fromisoformat(job.args["expires_at"])
            job.due = mono((expires if expires.tzinfo else expires.replace(tzinfo=UTC))
                           .timestamp())
    by_event: dict[str, Write] = {}
    for job in sorted(jobs, key=lambda j: j.id):
        key = source_key(job.task, job.args)
        ek = base_key(job.args.get("event_key"))
        if key is not None and ek is not None and by_key.get(key):
            by_event[ek] = by_key[key].popleft()
    for job in jobs:
        ek = base_key(job.args.get("event_key"))
        job.write = by_event.get(ek) if ek is not None else None
    return jobs, by_event


def spread(values: Sequence[float], unit: str = "ms", scale: float = 1000) -> str:
    if not values:
        return "no data"
    v = sorted(x * scale for x in values)
    return (f"p50 {percentile(v, 50):,.0f} / p95 {percentile(v, 95):,.0f} / p99 "
            f"{percentile(v, 99):,.0f} / max {v[-1]:,.0f} {unit} (n={len(v):,})")


@dataclass
class Row:
    metric: str
    target: str
    measured: str
    ok: bool | None


def expiry_metric(dsn: str, market: Market, offset: float, collected: float) -> Row:
    orders = {w.order: w for w in market.writes if w.phase == "steady" and w.order}
    with connect(dsn) as conn:
        rows = conn.execute(ORDERS, {
            "listings": [i for kind, i in orders if kind == "listing"],
            "offers": [i for kind, i in orders if kind == "offer"]}).fetchall()
    late: list[float] = []
    expired = missed = early = other = pending = 0
    now_server = collected + offset
    for _kind, _id, status, expires_at, updated_at in rows:
        if status == "expired":
            expired += 1
            late.append(updated_at - expires_at)
            early += updated_at < expires_at
        elif status in ("active", "pending"):
            if now_server - expires_at > 60:
                missed += 1
                late.append(now_server - expires_at)  # at least this late
            else:
                pending += 1
        else:
            other += 1
    due = expired + missed
    within = sum(1 for x in late if 0 <= x <= 60)
    share = within / due if due else 0.0
    print(f"expiry: {len(orders):,} steady orders expiring soon ({len(rows):,} found): "
          f"{expired:,} expired, {missed} still open > 60 s after expires_at, {early} expired "
          f"early, {pending} not yet due, {other} closed otherwise")
    print(f"  lateness (updated_at - expires_at): {spread(late)}")
    p99 = percentile(sorted(late), 99) if late else float("nan")
    return Row("Expiry accuracy (orders expired within 60 s of expires_at)", TARGETS["expiry"],
               f"{share:.2%} ({within:,}/{due:,}); p99 lateness {p99:.2f} s",
               bool(due) and share >= 0.99)


def notification_metrics(dsn: str, market: Market, mails: Sequence[Mail],
                         by_event: dict[str, Write]) -> list[Row]:
    ids: dict[int, list[Mail]] = defaultdict(list)
    strays = 0
    for mail in mails:
        found = MESSAGE_ID.search(mail.headers)
        if found is None:
            strays += 1
        else:
            ids[int(found.group(1))].append(mail)
    with connect(dsn) as conn:
        rows = conn.execute("SELECT id, event_key, status, attempts, type FROM notifications"
                            " WHERE event_key IS NOT NULL").fetchall()
    info = {int(r[0]): r for r in rows}
    statuses = Counter(r[2] for r in rows)
    retried = sum(1 for r in rows if int(r[3]) > 1)
    first: dict[tuple[int, str], float] = {}
    copies: Counter[tuple[int, str]] = Counter()
    for nid, got in ids.items():
        row = info.get(nid)
        write = by_event.get(base_key(row[1]) or "") if row else None
        if write is None:
            strays += len(got)
            continue
        for mail in got:
            key = (write.seq, mail.rcpt.lower())
            copies[key] += 1
            first[key] = min(first.get(key, mail.at), mail.at)
    steady = {w.seq: w for w in market.writes if w.phase == "steady"}
    latency = [at - steady[seq].committed for (seq, _), at in first.items() if seq in steady]
    by_kind: dict[str, list[float]] = defaultdict(list)
    for (seq, _), at in first.items():
        if seq in steady:
            by_kind[steady[seq].kind].append(at - steady[seq].committed)
    expected = sum(w.expected_emails for w in steady.values())
    received = len(latency)
    duplicates = sum(n - 1 for (seq, _), n in copies.items() if seq in steady)
    all_expected = sum(w.expected_emails for w in market.writes)
    print(f"notifications: steady writes expected {expected:,} emails, received {received:,} "
          f"distinct (write, recipient), {duplicates} duplicates; whole run {len(first):,} of "
          f"{all_expected:,} expected, {len(mails):,} messages at the server, {strays} not "
          f"traced; notifications rows by status {dict(statuses)}, {retried} sent after a retry")
    print(f"  latency commit -> SMTP server has it: {spread(latency)}")
    for kind in sorted(by_kind):
        print(f"    {kind:17} {spread(by_kind[kind])}")
    lat = sorted(latency)
    p95 = percentile(lat, 95) if lat else float("nan")
    rate = received / expected if expected else 0.0
    return [
        Row("Notification latency (commit -> email at the SMTP server)",
            TARGETS["notify_latency"],
            f"p95 {p95:.2f} s (p50 {percentile(lat, 50):.2f}, max {lat[-1]:.2f})" if lat
            else "no email", bool(lat) and p95 < 30),
        Row("Notification delivery (emails received / expected)", TARGETS["notify_delivery"],
            f"{rate:.2%} ({received:,}/{expected:,}), {duplicates} duplicates",
            bool(expected) and rate >= 0.999 and received <= expected),
    ]


def ownership_metric(dsn: str, market: Market, jobs: Sequence[Job]) -> Row:
    changes = [w for w in market.writes if w.phase == "steady" and w.kind == "owner-change"]
    job_of = {j.write.seq: j for j in jobs if j.task == "update-ownership" and j.write}
    with connect(dsn) as conn:
        status: dict[int, str] = dict(conn.execute(
            "SELECT id, status FROM listings WHERE id = ANY(%s)",
            [[w.cancels for w in changes if w.cancels]]).fetchall())
    latency: list[float] = []
    missing = not_cancelled = 0
    for w in changes:
        job = job_of.get(w.seq)
        if job is None or job.finished is None or job.status != "succeeded":
            missing += 1
            continue
        if w.cancels is not None and status.get(w.cancels) != "cancelled":
            not_cancelled += 1
            continue
        latency.append(job.finished - w.committed)
    print(f"ownership: {len(changes):,} steady owner changes: {len(latency):,} stale listings "
          f"cancelled, {missing} without a finished update-ownership job, {not_cancelled} "
          "listings not cancelled")
    print(f"  latency commit -> update-ownership succeeded (cancellation committed): "
          f"{spread(latency)}")
    lat = sorted(latency)
    p99 = percentile(lat, 99) if lat else float("nan")
    ok = bool(lat) and not missing and not not_cancelled and p99 < 300
    return Row("Ownership detection (owner change commit -> stale listing cancelled)",
               TARGETS["ownership"], f"p99 {p99 * 1000:,.0f} ms ({len(lat)}/{len(changes)} "
               "cancelled)" if lat else "no data", ok)


def processing_metric(jobs: Sequence[Job], steady: Phase) -> Row:
    """Every finished job of the steady writes, and periodic jobs due in the window."""
    samples: dict[str, list[float]] = defaultdict(list)
    stages: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in jobs:
        if j.finished is None:
            continue
        if j.write is not None:
            if j.write.phase != "steady":
                continue
            ready = j.write.committed
            if j.due is not None:  # an expiry runs at expires_at, not at the commit
                ready = max(ready, j.due)
        elif "event_key" not in j.args:  # a periodic job (batch-expire-orders, rescue, ...)
            ready_at = j.scheduled if j.scheduled is not None else j.deferred
            if ready_at is None or not steady.started <= ready_at <= steady.ended:
                continue
            ready = ready_at
        else:
            continue
        samples[j.task].append(j.finished - ready)
        if j.write is not None and j.deferred is not None and j.task != "expire-orders" \
                and j.task != "send-notification":
            stages[j.task]["consumer"].append(j.deferred - ready)
        if j.started is not None:
            wait_from = max(ready, j.deferred or ready)
            stages[j.task]["wait"].append(j.started - wait_from)
            stages[j.task]["run"].append(j.finished - j.started)
    everything = sorted(x for v in samples.values() for x in v)
    print(f"processing latency (ready -> finished), {len(everything):,} jobs: "
          f"{spread(everything)}")
    for task in sorted(samples):
        st = stages[task]
        parts = "; ".join(f"{name} mean {fmean(st[name]) * 1000:,.1f} ms"
                          for name in ("consumer", "wait", "run") if st.get(name))
        print(f"    {task:20} {spread(samples[task])}  [{parts}]")
    runs = [x for st in stages.values() for x in st.get("run", [])]
    waits = [x for st in stages.values() for x in st.get("wait", [])]
    print(f"  the queue's part alone, all tasks: wait (runnable -> started) {spread(waits)}; "
          f"run (started -> finished) {spread(runs)}")
    occupancy(jobs, steady.started, steady.ended)
    p95 = percentile(everything, 95) if everything else float("nan")
    return Row("Processing latency (commit or due time -> job finished, all tasks)",
               TARGETS["processing"], f"p95 {p95 * 1000:,.0f} ms (p50 "
               f"{percentile(everything, 50) * 1000:,.0f}, p99 "
               f"{percentile(everything, 99) * 1000:,.0f})" if everything else "no data",
               bool(everything) and p95 < 0.1)


def occupancy(jobs: Sequence[Job], t0: float, t1: float) -> None:
    """How busy the workers were between t0 and t1, from the jobs' own events.

    A job waits from when it could run (its 'deferred' event, or its due time if later) until
    'started', and runs until 'succeeded'/'failed'. Printed: the mean number of jobs running and
    waiting, and the share of the time no job ran while some waited (workers idle with work
    queued: a fetch that came back empty, the poll interval).
    """
    moves: list[tuple[float, int, int]] = []  # (time, running change, waiting change)
    for j in jobs:
        if j.queue == UNSERVED_QUEUE or j.deferred is None:
            continue
        ready = max(j.deferred, j.due or j.deferred)
        start = j.started if j.started is not None else t1
        if start > ready:
            moves += [(ready, 0, 1), (start, 0, -1)]
        if j.started is not None:
            moves += [(j.started, 1, 0), (j.finished if j.finished is not None else t1, -1, 0)]
    moves.sort()
    moves.append((t1, 0, 0))
    running = waiting = 0
    last = t0
    area_running = area_waiting = idle_with_work = 0.0
    gaps: list[float] = []  # stretches with jobs waiting and none running
    gap = 0.0
    for t, dr, dw in moves:
        lo, hi = max(last, t0), min(t, t1)
        if hi > lo:
            area_running += running * (hi - lo)
            area_waiting += waiting * (hi - lo)
            if running == 0 and waiting > 0:
                idle_with_work += hi - lo
                gap += hi - lo
        running, waiting, last = running + dr, waiting + dw, max(last, t)
        if gap and not (running == 0 and waiting > 0):
            gaps.append(gap)
            gap = 0.0
    long = [g for g in gaps if g >= 0.1]
    span = t1 - t0
    print(f"  jobs running at once, mean {area_running / span:.2f}; jobs waiting, mean "
          f"{area_waiting / span:,.1f}; no job running while jobs waited: "
          f"{idle_with_work / span:.1%} of the window ({len(gaps):,} stretches; "
          f"{len(long)} of 100 ms or more, {sum(long):.1f} s in all, longest "
          f"{max(gaps, default=0) * 1000:,.0f} ms)")


def dead_letter_metric(dsn: str, jobs: Sequence[Job]) -> Row:
    status = Counter(j.status for j in jobs)
    finished = status["succeeded"] + status["failed"]
    with connect(dsn) as conn:
        consumer_dead = int(scalar(conn, "SELECT count(*) FROM grails_workers.dead_letters"))
    retried = sum(1 for j in jobs if j.attempts > 1)
    waiting = Counter(j.task for j in jobs if j.status == "todo")
    rate = (status["failed"] + consumer_dead) / max(finished + consumer_dead, 1)
    print(f"jobs, whole run: {dict(status)}; {retried} took more than one attempt; consumer "
          f"dead letters {consumer_dead}; left todo by task {dict(waiting)} (sync-ens-data: "
          f"ens-sync queue not served; expire-orders: orders expiring in days)")
    return Row("Dead-letter rate (failed jobs + consumer dead letters / jobs)",
               TARGETS["dead_letters"],
               f"{rate:.3%} ({status['failed']} failed + {consumer_dead} dead letters / "
               f"{finished:,})", rate < 0.001)


def throughput_metric(jobs: Sequence[Job], steady: Phase, burst_phase: Phase | None) -> Row:
    ends = sorted(j.finished for j in jobs if j.finished is not None)

    def between(t0: float, t1: float) -> int:
        return bisect.bisect_right(ends, t1) - bisect.bisect_left(ends, t0)

    steady_s = steady.ended - steady.started
    steady.jobs_done = between(steady.started, steady.ended)
    steady_rate = steady.jobs_done / steady_s
    offered = sum(1 for j in jobs if j.write is not None and j.write.phase == "steady"
                  and j.queue != UNSERVED_QUEUE and (j.due is None or j.due <= steady.ended))
    print(f"throughput: steady window {steady.jobs_done:,} jobs finished in {steady_s:.0f} s = "
          f"{steady_rate:,.1f} jobs/s; the steady writes made {offered:,} jobs to run "
          f"({offered / steady_s:,.1f}/s offered)")
    if burst_phase is None or burst_phase.drained is None:
        return Row("Queue throughput (jobs finished per second)", TARGETS["throughput"],
                   f"steady {steady_rate:,.1f} jobs/s (offered load; no burst)",
                   steady_rate > 100)
    burst_jobs = [j for j in jobs if j.write is not None and j.write.phase == "burst"]
    last = max((j.finished for j in burst_jobs if j.finished is not None),
               default=burst_phase.drained)
    burst_phase.last_job = last
    n = burst_phase.jobs_done = between(burst_phase.started, last)
    rate = n / (last - burst_phase.started)
    print(f"  burst: {burst_phase.writes:,} writes committed in "
          f"{burst_phase.ended - burst_phase.started:.1f} s, {len(burst_jobs):,} jobs from "
          f"them; {n:,} jobs finished from the first burst commit to the last burst job, "
          f"{last - burst_phase.started:.1f} s = {rate:,.0f} jobs/s")
    return Row("Queue throughput (jobs finished per second)", TARGETS["throughput"],
               f"burst {rate:,.0f} jobs/s; steady {steady_rate:,.0f} jobs/s (offered)",
               rate > 100)


def others_cpu(sampler: CpuSampler, ours: Sequence[str], t0: float, t1: float) -> float | None:
    """% of one core used by processes other than ours (the machine minus our groups)."""
    machine = sampler.window("machine", t0, t1)
    if machine is None:
        return None
    return machine[0] - sum(w[0] for g in ours if (w := sampler.window(g, t0, t1)))


def cpu_metric(sampler: CpuSampler, workers: int, steady: Phase,
               burst_phase: Phase | None) -> tuple[Row, float | None]:
    """The worker CPU row, and how much CPU other processes used in the steady window."""
    groups = [f"worker{i + 1}" for i in range(workers)]
    ours = [*groups, "consumer", *(["postgres"] if "postgres" in sampler.groups else []),
            "this report"]
    windows = [("steady", steady.started, steady.ended, steady.jobs_done)]
    if burst_phase is not None and burst_phase.last_job is not None:
        windows.append(("burst", burst_phase.started, burst_phase.last_job,
                        burst_phase.jobs_done))
    print(f"CPU, % of one core ({os.cpu_count()} cores on the machine): average, and the "
          "highest 1-s value")
    for name in [*ours, "machine", "others"]:
        cells = []
        for label, t0, t1, _ in windows:
            if name == "others":
                other = others_cpu(sampler, ours, t0, t1)
                cells.append(f"{label} avg {max(0.0, other):5.1f}" if other is not None
                             else "-")
            else:
                w = sampler.window(name, t0, t1)
                cells.append(f"{label} avg {w[0]:5.1f} max {w[1]:5.1f}" if w else "-")
        print(f"  {name:12}  " + "    ".join(cells))
    if "postgres" not in sampler.groups:
        print("  (the PostgreSQL server is not on this machine)")
    for label, t0, t1, done in windows:
        cpu = sum(w[0] for g in groups if (w := sampler.window(g, t0, t1))) / 100 * (t1 - t0)
        if done:
            print(f"  worker CPU per job finished, {label}: {cpu / done * 1000:.1f} ms")
    per_worker = [w for g in groups if (w := sampler.window(g, steady.started, steady.ended))]
    other = others_cpu(sampler, ours, steady.started, steady.ended)
    if not per_worker:
        return Row("Worker CPU (% of one core, steady window)", TARGETS["cpu"], "no data",
                   None), other
    avg = max(w[0] for w in per_worker)
    peak = max(w[1] for w in per_worker)
    who = "busiest worker process" if workers > 1 else "worker process"
    return Row(f"Worker CPU ({who}, % of one core, steady window)", TARGETS["cpu"],
               f"avg {avg:.1f}%, max {peak:.1f}%", avg < 60), other


def print_table(rows: Sequence[Row]) -> None:
    header = ("metric", "target (PRD)", "measured", "result")
    cells = [(r.metric, r.target, r.measured, "-" if r.ok is None else "pass" if r.ok
              else "FAIL") for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    print("\n== SLO report")
    for c in [header, tuple("-" * w for w in widths), *cells]:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())


# -- the run ------------------------------------------------------------------------------------


def code_version() -> str:
    """The checkout's commit, and whether the daemons' packages differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "wal_consumer",
                                "job_handlers", "sql"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes to the daemons" if dirty else "")


def print_header(dsn: str, where: str, args: argparse.Namespace, smtp_url: str) -> None:
    with connect(dsn) as conn:
        version = scalar(conn, "SHOW server_version")
    env = daemon_env(dsn, smtp_url)
    tuning = {k: v for k, v in sorted(env.items())
              if (k.startswith(("JOB_", "WAL_")) or k == "LOG_LEVEL") and k not in PINNED_ENV}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"grails-workers SLO report: PostgreSQL {version} ({where}); Python "
          f"{platform.python_version()}; {os.cpu_count()} CPUs, load average {load}")
    print(f"code: {code_version()}")
    print(f"daemons: 1 wal-consumer, {args.workers} job-handlers worker(s) with "
          f"{' '.join('--queue ' + q for q in QUEUES)} (no chain: ETH_RPC_URL unset, the "
          f"ens-sync queue is not served, reconcile-ownership not scheduled)")
    print(f"settings: defaults except {', '.join(f'{k}={v}' for k, v in tuning.items())}; "
          f"JOB_POLL_INTERVAL_S={env.get('JOB_POLL_INTERVAL_S', '0.5 (default)')}")
    if env["JOB_EMAIL_RATE_PER_S"] == BENCH_EMAIL_RATE:
        print(f"NOTE: JOB_EMAIL_RATE_PER_S={BENCH_EMAIL_RATE} set by this report (default 10 "
              "emails/s for all workers together; this workload makes ~2.8 emails per write)")
    print(f"workload: {args.rate:g} writes/s for {args.minutes:g} min after a {args.warmup:g} s "
          f"warm-up, then a burst of {args.burst:,} writes; {args.names:,} names; SMTP server "
          f"aiosmtpd {smtp_url} in this process")
    print("queue at the start: " + (
        "empty (--cold: a new deployment; planner statistics say 'empty' until autovacuum's "
        "first ANALYZE)" if args.cold else
        f"{args.history:,} succeeded jobs and the seeded listings' pending expiries, analysed "
        "(a queue that has been running)"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=3.0, help="length of the steady window")
    p.add_argument("--quick", action="store_true",
                   help="a ~45 s smoke run: 30 s window, 2 s warm-up, burst of 250 writes, "
                        "50,000 jobs of history")
    p.add_argument("--rate", type=float, default=20.0, help="marketplace writes per second")
    p.add_argument("--workers", type=int, default=1, help="job-handlers worker processes")
    p.add_argument("--warmup", type=float, default=5.0, help="uncounted seconds of load first")
    p.add_argument("--burst", type=int, default=1000, help="writes of the capacity burst (0: none)")
    p.add_argument("--names", type=int, default=0,
                   help="ENS names (default: enough for the run, at least 2,000)")
    p.add_argument("--seed", type=int, default=20240601, help="random seed of the workload")
    p.add_argument("--history", type=int, default=100_000,
                   help="succeeded jobs already in procrastinate_jobs when the run starts")
    p.add_argument("--cold", action="store_true",
                   help="start from an empty, freshly analysed procrastinate_jobs (a new "
                        "deployment) instead of a queue with history")
    p.add_argument("--logs", type=Path, metavar="DIR", help="keep the daemons' logs in DIR")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the table as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--py-spy", type=Path, metavar="DIR",
                   help="sample the daemons with `py-spy record` into DIR (slows them down)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.warmup = 0.5, 2.0
        args.burst = min(args.burst, 250)
        args.history = min(args.history, 50_000)
    if args.minutes <= 0 or args.rate <= 0 or args.workers < 1 or args.warmup < 0 \
            or args.burst < 0:
        p.error("--minutes, --rate and --workers must be positive")
    if not args.names:
        args.names = max(2000, int(args.rate * (args.minutes * 60 + args.warmup) * 0.5
                                   + args.burst * 0.5))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    rng = random.Random(args.seed)
    with (
        server() as (admin_dsn, where), scratch_database(admin_dsn) as dsn,
        tempfile.TemporaryDirectory(prefix="grails-slo-") as tmp, Catcher() as catcher,
    ):
        workdir = args.logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        market = seed(dsn, args.names, rng, 0 if args.cold else args.history)
        print_header(dsn, where, args, catcher.url)
        offset = measure_clock_offset(dsn)
        spies: list[subprocess.Popen[bytes]] = []
        with daemons(dsn, catcher.url, workdir, args.workers) as procs:
            groups: dict[str, Any] = {p.name: (lambda pid=p.pid: [psutil.Process(pid)])
                                      for p in procs}
            pg = server_processes(dsn)
            if pg is not None:
                groups["postgres"] = pg
            groups["this report"] = lambda: [psutil.Process()]
            sampler = CpuSampler(groups).start()
            if args.py_spy is not None:
                args.py_spy.mkdir(parents=True, exist_ok=True)
                spies = [start_py_spy(p.pid, args.py_spy / f"{p.name}.txt") for p in procs]
            try:
                print(f"\n== warm-up {args.warmup:g} s, then {args.minutes:g} min at "
                      f"{args.rate:g} writes/s")
                if args.warmup:
                    paced(market, dsn, "warmup", args.warmup, args.rate)
                steady = paced(market, dsn, "steady", args.minutes * 60, args.rate)
                print(f"steady: {steady.writes:,} writes in {steady.ended - steady.started:.1f} s "
                      f"(at worst {steady.behind_s * 1000:.0f} ms behind schedule); "
                      f"{dict(Counter(w.kind for w in market.writes if w.phase == 'steady'))}")
                drain(dsn, market, procs, steady)
                if steady.drained is not None:
                    print(f"drained {steady.drained - steady.ended:.1f} s after the last write")
                burst_phase = None
                if args.burst:
                    burst_phase = burst(market, dsn, args.burst)
                    drain(dsn, market, procs, burst_phase)
                    print(f"burst: {burst_phase.writes:,} writes committed in "
                          f"{burst_phase.ended - burst_phase.started:.1f} s; drained "
                          f"{(burst_phase.drained or float('nan')) - burst_phase.started:.1f} s "
                          "after the first")
                time.sleep(0.5)
            finally:
                sampler.stop()
            log_errors = {p.name: p.count_in_log(r"\b(ERROR|CRITICAL|Traceback)\b")
                          for p in procs}
        for spy in spies:  # py-spy stops when its daemon exits
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        collected = time.monotonic()
        offset = (offset + measure_clock_offset(dsn)) / 2
        if market.skipped:
            print(f"writes replaced by an offer (nothing to act on): {dict(market.skipped)}")
        print(f"log lines with ERROR/CRITICAL/Traceback: {log_errors}")
        print("\n== details")
        jobs, by_event = load_jobs(dsn, market, offset)
        traced = {w.seq for w in by_event.values()}
        untraced = [w for w in market.writes if w.seq not in traced]
        if untraced:
            print(f"WARNING: {len(untraced)} write(s) without their notify-watchers/"
                  f"update-ownership job: {dict(Counter(w.kind for w in untraced))}; first: "
                  f"{[(w.phase, w.kind, w.key) for w in untraced[:5]]}")
        rows = [expiry_metric(dsn, market, offset, collected)]
        rows += notification_metrics(dsn, market, catcher.all(), by_event)
        rows.append(ownership_metric(dsn, market, jobs))
        rows.append(processing_metric(jobs, steady))
        rows.append(dead_letter_metric(dsn, jobs))
        rows.append(throughput_metric(jobs, steady, burst_phase))
        cpu_row, other = cpu_metric(sampler, args.workers, steady, burst_phase)
        rows.append(cpu_row)
        print_table(rows)
        if other is not None and other > 25:
            print(f"NOTE: other processes on this machine used {other:.0f}% of a core on "
                  f"average during the steady window ({os.cpu_count()} cores): these are not "
                  "the figures of a quiet machine")
        print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    print(f"total run time {time.monotonic() - started:.0f} s")
    return 1 if args.strict and any(r.ok is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
