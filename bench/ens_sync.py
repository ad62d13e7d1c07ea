"""ENS sync throughput under an RPC rate limit, with and without JSON-RPC batching.

Run: ``.venv/bin/python bench/ens_sync.py [--names N] [--rate R] [--burst B] [--concurrency C]``
(``make bench-ens-sync``). Needs anvil from npm (``npm ci``; ``make`` does it). It starts a
throwaway PostgreSQL cluster (or a scratch database on ``DATABASE_URL``'s server), an anvil
node with our ENS contracts (tests/ens_chain.py) and a recording proxy in front of it that
counts every HTTP request and the JSON-RPC calls in it.

``--names`` .eth names are registered, each with a resolver, an ETH address and the six text
records the marketplace shows. For each mode (batched: a name's record calls in one JSON-RPC
batch; unbatched: one request per call, as web3's ENS module makes them) a fresh
``job-handlers worker`` process (cold resolver cache) is started, registered, and then one
``sync-ens-data`` job per name is deferred as the consumer does; the clock runs from that
commit until every job has succeeded. Figures: names synced per second, HTTP requests and
JSON-RPC calls per name (counted at the proxy), and the request rate the proxy saw against the
limit (``JOB_ENS_RPC_RATE_PER_S``, counting HTTP requests).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import Figure, print_summary, scratch_database, server, wait_for  # noqa: E402
from ens_chain import Anvil, EnsChain, RpcProxy  # noqa: E402

from wal_consumer.enqueue import BatchWriter  # noqa: E402
from wal_consumer.provision import setup  # noqa: E402
from wal_consumer.routes import sync_ens_data  # noqa: E402
from wal_consumer.settings import ConsumerSettings  # noqa: E402

TEXTS = {"avatar": "https://img.example/{}.png", "description": "{} on Grails",
         "url": "https://{}.example", "com.twitter": "{}", "com.github": "{}",
         "email": "{}@example.com"}


@dataclass
class Run:
    mode: str
    names: int
    seconds: float
    requests: int
    calls: int

    @property
    def names_per_s(self) -> float:
        return self.names / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def register_names(chain: EnsChain, count: int) -> list[str]:
    names = [f"bench{i}.eth" for i in range(count)]
    owner = chain.accounts[1]
    for i, name in enumerate(names):
        label = name.split(".")[0]
        chain.register(name, owner, texts={k: v.format(label) for k, v in TEXTS.items()},
                       address=chain.accounts[2 + i % 7])
    return names


def run_mode(mode: str, dsn: str, chain: EnsChain, proxy: RpcProxy, ids: list[int],
             args: argparse.Namespace, logdir: Path) -> Run:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM procrastinate_jobs")
        conn.execute("DELETE FROM grails_workers.ens_sync_status")
        conn.execute("UPDATE ens_names SET metadata = '{}', resolver_address = NULL,"
                     " metadata_updated_at = NULL")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_", "WAL_"))}
        env.update(chain.env(proxy.url))
        env.update({"DATABASE_URL": dsn, "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "WARNING",
                    "JOB_ENS_RPC_RATE_PER_S": str(args.rate),
                    "JOB_ENS_RPC_BURST": str(args.burst),
                    "JOB_ENS_RPC_BATCHING": "true" if mode == "batched" else "false",
                    "JOB_CONCURRENCY": str(args.concurrency),
                    "JOB_POLL_INTERVAL_S": "0.1",
                    "JOB_ENS_RECONCILE_CRON": "0 0 1 1 *",
                    "JOB_ENS_DAILY_SYNC_CRON": "0 0 1 1 *"})
        log = (logdir / f"worker-{mode}.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "job_handlers", "worker", "--queue", "ens-sync"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_for(lambda: conn.execute("SELECT count(*) FROM procrastinate_workers"
                                          ).fetchone() == (1,), timeout=30,
                     what="the worker to register")
            before_requests, before_calls = proxy.count(), proxy.calls()
            started = time.monotonic()
            with psycopg.connect(dsn) as writer_conn:
                BatchWriter(writer_conn, "grails_workers").write_jobs(
                    [sync_ens_data(i, "bench", f"bench:{i}") for i in ids])
                writer_conn.commit()
            finished = wait_for(lambda: conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'sync-ens-data'"
                " AND status = 'succeeded'").fetchone() == (len(ids),),
                timeout=max(120, 30 * len(ids) / args.rate),
                what=f"{len(ids)} syncs ({mode})", interval=0.02)
            seconds = finished - started
            synced = conn.execute("SELECT count(*) FROM grails_workers.ens_sync_status"
                                  " WHERE outcome = 'synced'").fetchone()
            if synced != (len(ids),):
                raise SystemExit(f"{mode}: only {synced} of {len(ids)} names synced; see "
                                 f"{logdir}/worker-{mode}.log")
        finally:
            worker.terminate()
            worker.wait(30)
    return Run(mode, len(ids), seconds, proxy.count() - before_requests,
               proxy.calls() - before_calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--names", type=int, default=60, help="names to sync (default 60)")
    parser.add_argument("--rate", type=float, default=25.0,
                        help="RPC requests per second, JOB_ENS_RPC_RATE_PER_S (default 25)")
    parser.add_argument("--burst", type=int, default=5, help="JOB_ENS_RPC_BURST (default 5)")
    parser.add_argument("--concurrency", type=int, default=10,
                        help="worker concurrency (default 10)")
    args = parser.parse_args()
    print(f"ENS sync benchmark: {args.names} names, rate limit {args.rate:g} requests/s "
          f"(burst {args.burst}), 1 worker, concurrency {args.concurrency}; "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="ens-bench-") as tmp, server() as (admin, where):
        logdir = Path(tmp)
        print(f"PostgreSQL: {where}")
        anvil = Anvil(logdir / "anvil.log").start()
        proxy = RpcProxy(anvil.url)
        try:
            chain = EnsChain(anvil.url)
            t0 = time.monotonic()
            names = register_names(chain, args.names)
            print(f"registered {len(names)} names with 7 records each on anvil in "
                  f"{time.monotonic() - t0:.1f} s")
            with scratch_database(admin) as dsn:
                settings = ConsumerSettings(database_url=dsn)  # type: ignore[call-arg]
                setup(settings, dev_schema=True)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [settings.slot])
                    ids = [r[0] for r in conn.execute(
                        "INSERT INTO ens_names (name) SELECT unnest(%s::text[]) RETURNING id",
                        [names]).fetchall()]
                runs = []
                for mode in ("batched", "unbatched"):
                    run = run_mode(mode, dsn, chain, proxy, ids, args, logdir)
                    runs.append(run)
                    print(f"{mode:9}  {run.seconds:6.2f} s  {run.names_per_s:6.2f} names/s  "
                          f"{run.requests / run.names:5.2f} requests/name  "
                          f"{run.calls / run.names:5.2f} calls/name  "
                          f"{run.requests_per_s:5.1f} requests/s seen at the node")
        finally:
            proxy.close()
            anvil.stop()
    batched, unbatched = runs
    limit = args.rate
    print_summary([
        Figure(f"batched, {args.names} names at {limit:g} req/s",
               f"{batched.names_per_s:.2f} names/s",
               f"unbatched {unbatched.names_per_s:.2f} names/s",
               batched.names_per_s / unbatched.names_per_s, "-", None),
        Figure("requests per name", f"{batched.requests / batched.names:.2f} (batched)",
               f"{unbatched.requests / unbatched.names:.2f} (unbatched)", None, "-", None),
        Figure("JSON-RPC calls per name", f"{batched.calls / batched.names:.2f} (batched)",
               f"{unbatched.calls / unbatched.names:.2f} (unbatched)", None, "-", None),
        Figure("request rate at the node", f"{batched.requests_per_s:.1f} / "
               f"{unbatched.requests_per_s:.1f} req/s", f"limit {limit:g} req/s "
               f"+ burst {args.burst}", None, "<= limit",
               max(batched.requests_per_s, unbatched.requests_per_s)
               <= limit + args.burst / min(batched.seconds, unbatched.seconds)),
    ])


if __name__ == "__main__":
    main()
