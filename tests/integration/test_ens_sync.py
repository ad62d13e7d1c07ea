"""ENS sync and ownership reconciliation against a real EVM (anvil with our ENS contracts,
tests/ens_chain.py) and a real PostgreSQL, with the consumer and worker as subprocesses."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from ens_chain import Anvil, EnsChain, RpcProxy
from marketplace import add_listing, jobs
from psycopg.rows import dict_row
from support import ROOT, WORKER, consumer_env, running_consumer, wait_caught_up, wait_until

from job_handlers.chain import owners as chain_owners
from job_handlers.chain.client import ChainClient, ChainConfig
from job_handlers.chain.names import namehash
from job_handlers.ratelimit import RateLimiter
from wal_consumer.enqueue import BatchWriter
from wal_consumer.routes import sync_ens_data
from wal_consumer.settings import ConsumerSettings

FAST = {"JOB_POLL_INTERVAL_S": "0.1", "JOB_RETRY_BASE_S": "0.1", "JOB_RETRY_CAP_S": "0.5"}
ENS_WORKER = (*WORKER, "--queue", "ens-sync", "--queue", "ownership")
TEXTS = {"avatar": "https://img.example/alice.png", "description": "Alice's name",
         "url": "https://alice.example", "com.twitter": "alice", "com.github": "alice-gh",
         "email": "alice@example.com"}


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    node = Anvil(tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def chain(anvil: Anvil) -> EnsChain:
    return EnsChain(anvil.url)


@pytest.fixture
def proxy(anvil: Anvil) -> Iterator[RpcProxy]:
    recording = RpcProxy(anvil.url)
    try:
        yield recording
    finally:
        recording.close()


def add_name(conn: psycopg.Connection, name: str, owner: str | None) -> int:
    row = conn.execute("INSERT INTO ens_names (name, owner_address) VALUES (%s, %s)"
                       " RETURNING id", [name, owner]).fetchone()
    assert row is not None
    return int(row[0])


def names_table(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT n.*, s.outcome, s.detail, s.synced_at FROM ens_names n"
                    " LEFT JOIN grails_workers.ens_sync_status s ON s.ens_name_id = n.id")
        return {r["name"]: r for r in cur.fetchall()}


def statuses(conn: psycopg.Connection, task: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT status::text FROM procrastinate_jobs WHERE task_name = %s ORDER BY id", [task])]


def test_sync_writes_records_resolver_and_outcomes_and_makes_no_jobs(
    ready_db: ConsumerSettings, chain: EnsChain, conn: psycopg.Connection, tmp_path: Path
) -> None:
    a = chain.accounts
    chain.register("alice.eth", a[1], texts=TEXTS, address=a[7])
    chain.register("wrapped.eth", a[2], wrapped=True, texts={"url": "https://w.example"},
                   address=a[2])
    chain.register("expired.eth", a[3], texts={"avatar": "old"})
    chain.expire("expired.eth")
    chain.register("nores.eth", a[4], resolver=False)
    ids = {name: add_name(conn, name, owner) for name, owner in [
        ("alice.eth", a[1]), ("wrapped.eth", a[2]), ("expired.eth", None),
        ("nores.eth", a[4]), ("ghost.eth", None), ("bad..eth", None)]}
    conn.execute("UPDATE ens_names SET metadata = '{\"indexer\": \"kept\"}' WHERE id = %s",
                 [ids["alice.eth"]])
    env = consumer_env(ready_db.database_url, **FAST, **chain.env())
    with running_consumer(env, tmp_path / "consumer.log"), \
            running_consumer(env, tmp_path / "worker.log", ENS_WORKER) as worker:
        for name_id in ids.values():
            add_listing(conn, name_id, seller=a[1])
        wait_until(lambda: statuses(conn, "sync-ens-data") == ["succeeded"] * 6, timeout=30,
                   what="six syncs to succeed")
        wait_caught_up(conn, ready_db.slot)
        rows = names_table(conn)
        alice = rows["alice.eth"]
        assert alice["outcome"] == "synced" and alice["synced_at"] is not None
        assert alice["resolver_address"] == chain.resolver.address.lower()
        assert alice["metadata"] == {**TEXTS, "eth_address": a[7].lower(), "indexer": "kept"}
        assert alice["metadata_updated_at"] is not None
        wrapped = rows["wrapped.eth"]
        assert wrapped["outcome"] == "synced"
        assert wrapped["metadata"]["url"] == "https://w.example"
        assert wrapped["metadata"]["eth_address"] == a[2].lower()
        assert wrapped["metadata"]["avatar"] is None
        assert rows["expired.eth"]["outcome"] == "expired"
        assert rows["expired.eth"]["metadata"]["avatar"] is None  # not the lapsed owner's
        assert rows["nores.eth"]["outcome"] == "no-resolver"
        assert rows["nores.eth"]["resolver_address"] is None
        assert rows["ghost.eth"]["outcome"] == "unregistered"
        bad = rows["bad..eth"]
        assert bad["outcome"] == "invalid-name" and "not a valid ENS name" in bad["detail"]
        assert bad["metadata"] == {} and bad["metadata_updated_at"] is None
        # writing ens_names made WAL the consumer read, and no job: the six listings' jobs
        # only, and the worker's periodic ones
        made = Counter(j["task_name"] for j in jobs(conn) if "event_key" in j["args"])
        assert made == {"notify-watchers": 6, "sync-ens-data": 6}, made
        assert "alice.eth (new-listing): synced" in worker.output()

        # a record changes on chain: `job-handlers sync-ens` refreshes it now
        chain._send(chain.resolver.functions.setText(
            namehash("alice.eth"), "avatar", "https://img.example/new.png"), a[1])
        cli = subprocess.run([sys.executable, "-m", "job_handlers", "sync-ens", "Alice.eth",
                              "nosuch.eth"], env=env, capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
    assert cli.returncode == 1, cli.stderr
    assert f"Alice.eth: synced (resolver {chain.resolver.address.lower()}, 7 record(s) set)" \
        in cli.stdout
    assert "nosuch.eth: not in ens_names, nothing to sync" in cli.stdout
    after = names_table(conn)["alice.eth"]
    assert after["metadata"]["avatar"] == "https://img.example/new.png"
    assert after["metadata_updated_at"] > alice["metadata_updated_at"]


def _client(url: str, chain: EnsChain, database_url: str, batching: bool = True
            ) -> tuple[ChainClient, Any]:
    limiter = RateLimiter("eth-rpc-test", 1000, burst=100)
    holder: dict[str, psycopg.AsyncConnection[Any]] = {}

    async def acquire(tokens: int) -> float:
        if "conn" not in holder:
            holder["conn"] = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        return await limiter.acquire(holder["conn"], tokens)

    config = ChainConfig(rpc_url=url, registry=chain.registry.address,
                         base_registrar=chain.registrar.address,
                         name_wrapper=chain.wrapper.address,
                         universal_resolver=chain.universal_resolver.address, batching=batching)
    return ChainClient(config, acquire), holder


def test_true_owners_unwrapped_wrapped_expired_in_three_batches(
    ready_db: ConsumerSettings, chain: EnsChain, proxy: RpcProxy
) -> None:
    a = chain.accounts
    plain = chain.register("own-plain.eth", a[1])
    wrapped = chain.register("own-wrapped.eth", a[2], wrapped=True)
    chain.register("own-expired.eth", a[3])
    chain.expire("own-expired.eth")
    chain.register("own-wrapped-expired.eth", a[4], wrapped=True)
    chain.expire("own-wrapped-expired.eth")
    names = ["own-plain.eth", "OWN-wrapped.eth", "own-expired.eth", "own-wrapped-expired.eth",
             "own-never.eth", "sub.own-plain.eth", "bad..eth"]

    async def look() -> tuple[dict[str, chain_owners.Ownership], int, int]:
        client, holder = _client(proxy.url, chain, ready_db.database_url)
        try:
            before = proxy.count()
            found = await chain_owners.owners(client, names)
            return found, proxy.count() - before, client.stats.calls
        finally:
            await client.close()
            if "conn" in holder:
                await holder["conn"].close()

    found, requests, calls = asyncio.run(look())
    assert found == {
        "own-plain.eth": chain_owners.Ownership("owned", a[1].lower()),
        "OWN-wrapped.eth": chain_owners.Ownership("owned", a[2].lower(), wrapped=True),
        "own-expired.eth": chain_owners.Ownership("expired"),
        "own-wrapped-expired.eth": chain_owners.Ownership("expired"),
        "own-never.eth": chain_owners.Ownership("unregistered"),
        "sub.own-plain.eth": chain_owners.Ownership("not-a-token"),
        "bad..eth": chain_owners.Ownership("not-a-token"),
    }
    # nameExpires for 5 names, ownerOf for the 2 live ones, NameWrapper.ownerOf for 1
    assert (requests, calls) == (3, 5 + 2 + 1)

    chain.transfer("own-plain.eth", plain, a[5])
    chain.transfer("own-wrapped.eth", wrapped, a[6])
    found, _, _ = asyncio.run(look())
    assert found["own-plain.eth"].owner == a[5].lower()
    assert found["OWN-wrapped.eth"].owner == a[6].lower()


def test_on_chain_transfer_is_reconciled_and_cancels_the_stale_listing(
    ready_db: ConsumerSettings, chain: EnsChain, conn: psycopg.Connection, tmp_path: Path
) -> None:
    a = chain.accounts
    moving = chain.register("moving.eth", a[1])
    wrapped = chain.register("wrapmove.eth", a[2], wrapped=True)
    chain.register("lapsing.eth", a[3])
    chain.register("steady.eth", a[4])
    ids = {name: add_name(conn, name, owner) for name, owner in [
        ("moving.eth", a[1]), ("wrapmove.eth", a[2].lower()), ("lapsing.eth", a[3]),
        ("steady.eth", a[4])]}
    listings = {name: add_listing(conn, i, seller=owner) for (name, i), owner in
                zip(ids.items(), a[1:5], strict=True)}
    env = consumer_env(ready_db.database_url, **FAST, **chain.env(),
                       JOB_ENS_RECONCILE_CRON="* * * * * *")
    with running_consumer(env, tmp_path / "consumer.log"), \
            running_consumer(env, tmp_path / "worker.log", ENS_WORKER) as worker:
        wait_until(lambda: "checked 4 name(s) with active listings, corrected 0" in
                   worker.output(), timeout=20, what="a reconciliation that finds nothing")
        chain.transfer("moving.eth", moving, a[5])
        chain.transfer("wrapmove.eth", wrapped, a[6])
        chain.expire("lapsing.eth")
        wait_until(lambda: statuses(conn, "update-ownership") == ["succeeded"] * 3,
                   timeout=20, what="three update-ownership jobs from the corrections")
        wait_until(lambda: {r[0] for r in conn.execute(
            "SELECT status FROM listings WHERE id = ANY(%s)",
            [[listings[n] for n in ("moving.eth", "wrapmove.eth", "lapsing.eth")]])}
            == {"cancelled"}, timeout=10, what="stale listings cancelled")
    owners_now = dict(conn.execute("SELECT name, owner_address FROM ens_names").fetchall())
    assert owners_now == {"moving.eth": a[5].lower(), "wrapmove.eth": a[6].lower(),
                          "lapsing.eth": None, "steady.eth": a[4]}
    assert conn.execute("SELECT status FROM listings WHERE id = %s",
                        [listings["steady.eth"]]).fetchone() == ("active",)
    corrections = conn.execute(
        "SELECT name, previous_owner, new_owner, chain_state FROM"
        " grails_workers.ownership_corrections ORDER BY name").fetchall()
    assert corrections == [("lapsing.eth", a[3], None, "expired"),
                           ("moving.eth", a[1], a[5].lower(), "owned"),
                           ("wrapmove.eth", a[2].lower(), a[6].lower(), "owned")]


def test_rpc_node_stopping_mid_sync_retries_and_marks_nothing_synced(
    ready_db: ConsumerSettings, chain: EnsChain, proxy: RpcProxy, conn: psycopg.Connection,
    tmp_path: Path
) -> None:
    a = chain.accounts
    names = [f"outage{i}.eth" for i in range(3)]
    for i, name in enumerate(names):
        chain.register(name, a[1], texts={"description": f"number {i}"})
    ids = [add_name(conn, name, a[1]) for name in names]
    env = consumer_env(ready_db.database_url, **FAST, **chain.env(proxy.url),
                       JOB_RETRIES="40", JOB_ENS_RPC_BATCHING="false", JOB_ENS_RPC_RETRIES="1",
                       JOB_ENS_RPC_RETRY_BASE_S="0.05", JOB_ENS_BREAKER_RESET_S="0.5",
                       JOB_ENS_RPC_TIMEOUT_S="2")
    proxy.fail_after(3)  # the first sync gets 3 answers, then the node stops
    defer(ready_db.database_url, *[sync_ens_data(i, "new-listing", f"t:{i}") for i in ids])
    with running_consumer(env, tmp_path / "worker.log", ENS_WORKER) as worker:
        wait_until(lambda: conn.execute(
            "SELECT count(DISTINCT job_id) FROM grails_workers.job_errors WHERE task_name ="
            " 'sync-ens-data'").fetchone() == (3,), timeout=30,
            what="every sync to fail an attempt")
        assert proxy.dropped > 0 and proxy.count() == 3
        rows = names_table(conn)
        assert {rows[n]["outcome"] for n in names} == {None}
        assert {rows[n]["metadata_updated_at"] for n in names} == {None}
        assert statuses(conn, "sync-ens-data") != ["failed"] * 3
        proxy.down = False
        wait_until(lambda: statuses(conn, "sync-ens-data") == ["succeeded"] * 3, timeout=30,
                   what="the syncs to succeed once the node is back")
    rows = names_table(conn)
    for i, name in enumerate(names):
        assert rows[name]["outcome"] == "synced"
        assert rows[name]["metadata"]["description"] == f"number {i}"
    errors = worker.output()
    assert "RPC node" in errors and "failed 2 time(s)" in errors


def defer(dsn: str, *requests: Any) -> int:
    with psycopg.connect(dsn) as conn:
        writer = BatchWriter(conn, "grails_workers")
        writer.write_jobs(list(requests))
        conn.commit()
        return writer.jobs_skipped_locked


def test_rate_limit_holds_across_two_worker_processes(
    ready_db: ConsumerSettings, chain: EnsChain, proxy: RpcProxy, conn: psycopg.Connection,
    tmp_path: Path
) -> None:
    rate, burst = 20.0, 2
    names = [f"limited{i}.eth" for i in range(8)]
    for name in names:
        chain.register(name, chain.accounts[1], texts={"url": "https://x.example"})
    ids = [add_name(conn, name, chain.accounts[1]) for name in names]
    env = consumer_env(ready_db.database_url, **FAST, **chain.env(proxy.url),
                       JOB_ENS_RPC_RATE_PER_S=str(rate), JOB_ENS_RPC_BURST=str(burst),
                       JOB_ENS_RPC_BATCHING="false", JOB_CONCURRENCY="4",
                       JOB_ENS_RECONCILE_CRON="0 0 1 1 *")
    with running_consumer(env, tmp_path / "w1.log", ENS_WORKER) as w1, \
            running_consumer(env, tmp_path / "w2.log", ENS_WORKER) as w2:
        wait_until(lambda: "Starting worker" in w1.output() and "Starting worker" in
                   w2.output(), timeout=20, what="both workers started")
        defer(ready_db.database_url, *[sync_ens_data(i, "new-listing", f"r:{i}") for i in ids])
        wait_until(lambda: statuses(conn, "sync-ens-data") == ["succeeded"] * 8, timeout=30,
                   what="eight syncs")
    assert "sync-ens-data: limited" in w1.output() and "sync-ens-data: limited" in w2.output()
    times = sorted(proxy.times())
    n = len(times)
    assert n >= 8 * 9  # findResolver, nameExpires, addr and six texts per name
    # the shared limit: n requests need at least (n - burst) / rate seconds
    assert times[-1] - times[0] >= (n - burst) / rate * 0.95, (n, times[-1] - times[0])
    # and no second holds more than rate + burst: slots are reserved 1/rate apart; +3 for
    # the jitter between a reserved slot and the request's arrival at the proxy
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= rate + burst + 3, busiest


def test_one_pending_sync_per_name_and_the_rest_of_the_batch_intact(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    one, two = add_name(conn, "locked.eth", None), add_name(conn, "other.eth", None)
    env = consumer_env(ready_db.database_url)
    with running_consumer(env, tmp_path / "consumer.log"):
        add_listing(conn, one)                          # sync pending for locked.eth
        with conn.transaction():                        # one source transaction:
            add_listing(conn, one)                      #   a second one for the same name
            add_listing(conn, two, expires_at="2031-01-01")
            add_listing(conn, one, expires_at="2032-01-01")
        wait_caught_up(conn, ready_db.slot)
    found = jobs(conn)
    syncs = [j for j in found if j["task_name"] == "sync-ens-data"]
    assert sorted(j["args"]["ens_name_id"] for j in syncs) == [one, two]
    assert Counter(j["task_name"] for j in found) == {
        "notify-watchers": 4, "sync-ens-data": 2, "expire-orders": 2}
    # a writer batch with a pending lock in it: skipped, counted, the other jobs written
    skipped = defer(ready_db.database_url, sync_ens_data(one, "backfill", "b:1"),
                    sync_ens_data(999, "backfill", "b:2"))
    assert skipped == 1
    assert sorted(j["args"]["ens_name_id"] for j in jobs(conn, "sync-ens-data")) == [
        one, two, 999]

    # the daily schedule skips names whose sync is pending
    from job_handlers.app import build_app
    from job_handlers.ens_sync import schedule_daily
    from job_handlers.settings import WorkerSettings

    conn.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE args->>'ens_name_id'"
                 " = %s", [str(two)])
    settings = WorkerSettings(database_url=ready_db.database_url)  # type: ignore[call-arg]

    async def schedule() -> dict[str, int]:
        app = build_app(settings)
        async with app.open_async():
            return await schedule_daily(app, settings)

    assert asyncio.run(schedule()) == {"names": 2, "deferred": 1, "already_pending": 1}
    daily = [j for j in jobs(conn, "sync-ens-data") if j["args"]["reason"] == "daily"]
    assert [(j["args"]["ens_name_id"], j["priority"]) for j in daily] == [(two, 0)]
