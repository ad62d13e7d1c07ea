"""`wal-consumer demo`: the whole story on a throwaway database, in well under two minutes.

Starts a local PostgreSQL (unless DATABASE_URL is set), an in-process SMTP catcher, and — when
anvil is installed (`npm ci`, which `make demo` runs) — a local chain with our ENS contracts.
Then the consumer (a thread here), `job-handlers worker` and `job-handlers web` (subprocesses),
with their metrics endpoints on. It writes as the marketplace's API and indexer would and waits
for each consequence: a listing is created, its ENS data synced, a watcher emailed; a price
change, an offer, a sale; another listing expires; an owner change cancels a stale listing.
A timeline gives the latency of every step; then where to look.

The packages never import each other: the worker and web service are subprocesses. The chain
part reuses the test suite's contract deployer (tests/ens_chain.py), so it needs a checkout.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg

from wal_consumer import observe
from wal_consumer.consumer import Consumer
from wal_consumer.localpg import LocalPostgres
from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = {  # anvil's first accounts, so the same names own things on chain and in the database
    "seller": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "buyer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    "new_owner": "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
    "watcher": "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
}
STATUS_TOKEN = "demo-status-token"
STEP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mailbox:
    """An SMTP server in this process (aiosmtpd) that keeps what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = _free_port()
        self.received: list[tuple[float, list[str], str]] = []
        self._lock = threading.Lock()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email
        import email.policy

        message = email.message_from_bytes(envelope.original_content or b"",
                                           policy=email.policy.default)
        with self._lock:
            self.received.append((time.time(), list(envelope.rcpt_tos),
                                  str(message["Subject"])))
        return "250 OK"

    def start(self) -> Mailbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def first(self, to: str, subject_part: str) -> float | None:
        with self._lock:
            for at, recipients, subject in self.received:
                if to in recipients and subject_part in subject:
                    return at
        return None


def _load_chain_helpers() -> ModuleType | None:
    path = ROOT / "tests" / "ens_chain.py"
    if not path.exists() or not (ROOT / "node_modules" / ".bin" / "anvil").exists():
        return None
    spec = importlib.util.spec_from_file_location("ens_chain", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ens_chain"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Timeline:
    started: float = field(default_factory=time.time)
    rows: list[tuple[str, str, float | None]] = field(default_factory=list)

    def add(self, action: str, outcome: str, latency_s: float | None) -> None:
        self.rows.append((action, outcome, latency_s))
        shown = f"{latency_s * 1000:8.0f} ms" if latency_s is not None else "       —   "
        print(f"  {action:<40} → {outcome:<42} {shown}", flush=True)


def _wait(what: str, probe: Callable[[], float | None], timeout: float = STEP_TIMEOUT_S
          ) -> float:
    """Poll `probe` until it returns the (wall-clock) time the outcome happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at = probe()
        if at is not None:
            return at
        time.sleep(0.02)
    raise RuntimeError(f"demo: {what} did not happen within {timeout:.0f} s")


def _seen(conn: psycopg.Connection, query: str, params: list[Any]) -> float | None:
    """The time a row matching `query` was first seen (polled every 20 ms)."""
    return time.time() if conn.execute(query, params).fetchone() else None


def _commit(conn: psycopg.Connection, query: str, params: list[Any]) -> tuple[int, float]:
    row = conn.execute(query, params).fetchone()
    return (int(row[0]) if row else 0), time.time()


def _spawn(args: list[str], env: dict[str, str], stack: ExitStack, name: str
           ) -> subprocess.Popen[bytes]:
    log = stack.enter_context(tempfile.NamedTemporaryFile(prefix=f"demo-{name}-",
                                                          suffix=".log", delete=False))
    proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    stack.callback(stop)
    proc.log_path = log.name  # type: ignore[attr-defined]
    return proc


def _ready(*urls: str) -> float | None:
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status != 200:
                    return None
        except OSError:
            return None
    return time.time()


def _seed(conn: psycopg.Connection, mailbox_users: dict[str, str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for role, address in ACCOUNTS.items():
        row = conn.execute("INSERT INTO users (address, email, email_verified) VALUES"
                           " (%s, %s, true) RETURNING id", [address, mailbox_users[role]]
                           ).fetchone()
        assert row is not None
        ids[f"user:{role}"] = int(row[0])
    for name, owner in (("alice.eth", "seller"), ("bob.eth", "seller"),
                        ("carol.eth", "seller")):
        row = conn.execute("INSERT INTO ens_names (name, owner_address) VALUES (%s, %s)"
                           " RETURNING id", [name, ACCOUNTS[owner]]).fetchone()
        assert row is not None
        ids[name] = int(row[0])
        conn.execute("INSERT INTO watchlist (user_id, ens_name_id, notify_on_price_change)"
                     " VALUES (%s, %s, true)", [ids["user:watcher"], ids[name]])
    return ids


def run_demo(keep_running: bool = False) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    began = time.monotonic()
    with ExitStack() as stack:
        url = os.environ.get("DATABASE_URL")
        if url:
            print(f"using DATABASE_URL ({url.split('@')[-1]})")
        else:
            cluster = LocalPostgres.create()
            stack.callback(cluster.destroy)
            cluster.start()
            url = cluster.dsn()
            print(f"started a throwaway PostgreSQL at {url}")
        settings = ConsumerSettings(database_url=url)  # type: ignore[call-arg]
        setup(settings, dev_schema=True)
        mailbox = Mailbox().start()
        stack.callback(mailbox.stop)
        print(f"started an SMTP catcher on 127.0.0.1:{mailbox.port}")

        env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1",
               "SMTP_URL": f"smtp://127.0.0.1:{mailbox.port}",
               "JOB_UNSUBSCRIBE_SECRET": "demo-unsubscribe-secret",
               "JOB_STATUS_TOKEN": STATUS_TOKEN, "JOB_POLL_INTERVAL_S": "0.2",
               "JOB_EMAIL_RATE_PER_S": "50"}
        chain_helpers = _load_chain_helpers()
        chain: Any = None
        if chain_helpers is not None:
            anvil = chain_helpers.Anvil(Path(tempfile.mkstemp(prefix="demo-anvil-",
                                                               suffix=".log")[1])).start()
            stack.callback(anvil.stop)
            chain = chain_helpers.EnsChain(anvil.url)
            for name in ("alice.eth", "bob.eth", "carol.eth"):
                chain.register(name, ACCOUNTS["seller"], texts={
                    "description": f"{name}, registered on the demo chain",
                    "url": f"https://{name}.limo", "com.twitter": "grails"},
                    address=ACCOUNTS["seller"])
            env.update(chain.env())
            env["JOB_ENS_RECONCILE_CRON"] = "* * * * * */2"
            print(f"started anvil at {anvil.url} with our ENS contracts (alice, bob, carol.eth)")
        else:
            print("no local chain (anvil from `npm ci` and a checkout's tests/ are needed): "
                  "ENS sync and on-chain reconciliation are left out")

        consumer_port, worker_port, web_port = _free_port(), _free_port(), _free_port()
        consumer_settings = settings.model_copy(update={"metrics_port": consumer_port,
                                                        "metrics_host": "127.0.0.1"})
        stop = threading.Event()
        consumer = Consumer(consumer_settings, stop)
        thread = threading.Thread(target=consumer.run, name="consumer")
        thread.start()
        stack.callback(thread.join, 30)
        stack.callback(stop.set)
        ops = observe.start(consumer_settings, consumer)
        if ops is not None:
            stack.callback(ops.close)
        queues = [] if chain else ["--queue", "expiry", "--queue", "ownership", "--queue",
                                   "notifications", "--queue", "maintenance"]
        worker = _spawn(["job_handlers", "worker", *queues],
                        {**env, "JOB_METRICS_PORT": str(worker_port),
                         "JOB_METRICS_HOST": "127.0.0.1"}, stack, "worker")
        web = _spawn(["job_handlers", "web", "--port", str(web_port)],
                     {**env, "JOB_WEB_BASE_URL": f"http://127.0.0.1:{web_port}"}, stack, "web")
        started = time.monotonic()
        _wait("the worker and web service to be ready", lambda: _ready(
            f"http://127.0.0.1:{worker_port}/readyz", f"http://127.0.0.1:{web_port}/healthz"),
            timeout=60)
        print(f"started the consumer, job-handlers worker (pid {worker.pid}) and web "
              f"(pid {web.pid}); ready in {time.monotonic() - started:.1f} s\n")

        with psycopg.connect(url, autocommit=True) as conn:
            _story(conn, mailbox, chain)
        for proc in (worker, web):
            if proc.poll() is not None:
                raise RuntimeError(f"demo: a daemon exited early; see {proc.log_path}")  # type: ignore[attr-defined]
        print(f"""
where to look:
  status page   http://127.0.0.1:{web_port}/status   (token: {STATUS_TOKEN})
  metrics       http://127.0.0.1:{consumer_port}/metrics (consumer),
                http://127.0.0.1:{worker_port}/metrics (worker); /healthz and /readyz beside them
  logs          {worker.log_path} (worker), {web.log_path} (web)""")  # type: ignore[attr-defined]
        if keep_running:
            print("\nstill running; Ctrl-C to stop")
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    print(f"\ndemo finished in {time.monotonic() - began:.0f} s: daemons stopped cleanly")
    return 0


def _story(conn: psycopg.Connection, mailbox: Mailbox, chain: Any) -> None:
    emails = {role: f"{role}@demo.example" for role in ACCOUNTS}
    ids = _seed(conn, emails)
    seller, buyer = ACCOUNTS["seller"], ACCOUNTS["buyer"]
    watcher = emails["watcher"]
    timeline = Timeline()
    print("timeline (latency from the marketplace's commit)")

    listing, t0 = _commit(conn, "INSERT INTO listings (ens_name_id, seller_address, price_wei)"
                          " VALUES (%s, %s, '1500000000000000000') RETURNING id",
                          [ids["alice.eth"], seller])
    action = "API: list alice.eth for 1.5 ETH"
    if chain is not None:
        at = _wait("the ENS sync", lambda: _seen(
            conn, "SELECT 1 FROM ens_names WHERE id = %s AND metadata_updated_at IS NOT NULL",
            [ids["alice.eth"]]))
        timeline.add(action, "ENS data synced (resolver, texts)", at - t0)
        action = ""
    at = _wait("the new-listing email", lambda: mailbox.first(watcher, "is now listed"))
    timeline.add(action, "watcher emailed: listed for 1.5 ETH", at - t0)

    _, t0 = _commit(conn, "UPDATE listings SET price_wei = '1400000000000000000' WHERE id = %s"
                    " RETURNING id", [listing])
    at = _wait("the price-change email", lambda: mailbox.first(watcher, "price changed"))
    timeline.add("API: price change to 1.4 ETH", "watcher emailed: price changed", at - t0)

    _, t0 = _commit(conn, "INSERT INTO offers (ens_name_id, buyer_address, offer_amount_wei)"
                    " VALUES (%s, %s, '1200000000000000000') RETURNING id",
                    [ids["alice.eth"], buyer])
    at = _wait("the new-offer email", lambda: mailbox.first(watcher, "New offer"))
    timeline.add("API: offer 1.2 ETH on alice.eth", "watcher emailed: new offer", at - t0)

    _, t0 = _commit(conn, "UPDATE listings SET status = 'sold' WHERE id = %s RETURNING id",
                    [listing])
    at = _wait("the sale email", lambda: mailbox.first(watcher, "was sold"))
    timeline.add("API: alice.eth sold", "watcher emailed: sold for 1.4 ETH", at - t0)

    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=3)
    short, t0 = _commit(conn, "INSERT INTO listings (ens_name_id, seller_address, price_wei,"
                        " expires_at) VALUES (%s, %s, '900000000000000000', %s) RETURNING id",
                        [ids["bob.eth"], seller, expires])
    at = _wait("the expiry", lambda: _seen(
        conn, "SELECT 1 FROM listings WHERE id = %s AND status = 'expired'", [short]))
    timeline.add("API: list bob.eth, expiring in 3 s", "listing expired (after expires_at)",
                 at - expires.replace(tzinfo=UTC).timestamp())

    stale, _ = _commit(conn, "INSERT INTO listings (ens_name_id, seller_address, price_wei)"
                       " VALUES (%s, %s, '2000000000000000000') RETURNING id",
                       [ids["carol.eth"], seller])
    _wait("carol.eth's listing email", lambda: mailbox.first(watcher, "carol.eth is now"))
    if chain is not None:
        t0 = time.time()
        chain.transfer("carol.eth", seller, ACCOUNTS["new_owner"])
        action = "on chain only: carol.eth transferred"
    else:
        _, t0 = _commit(conn, "UPDATE ens_names SET owner_address = %s WHERE id = %s"
                        " RETURNING id", [ACCOUNTS["new_owner"], ids["carol.eth"]])
        action = "indexer: carol.eth transferred"
    if chain is not None:
        at = _wait("reconciliation", lambda: _seen(
            conn, "SELECT 1 FROM ens_names WHERE id = %s AND lower(owner_address) = lower(%s)",
            [ids["carol.eth"], ACCOUNTS["new_owner"]]))
        timeline.add(action, "reconciled into ens_names.owner_address", at - t0)
        action = ""
    at = _wait("the cancellation", lambda: _seen(
        conn, "SELECT 1 FROM listings WHERE id = %s AND status = 'cancelled'", [stale]))
    timeline.add(action, "stale listing cancelled", at - t0)
    at = _wait("the seller's email", lambda: mailbox.first(emails["seller"], "was cancelled"))
    timeline.add("", "seller emailed: listing cancelled", at - t0)
    print(f"\n{len(mailbox.received)} emails received by the SMTP catcher")
