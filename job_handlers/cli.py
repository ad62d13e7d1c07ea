"""`job-handlers`: run the handler workers; inspect, retry and purge the dead-letter queue."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence

import psycopg
from procrastinate.worker import Worker
from pydantic import ValidationError

from job_handlers import dlq, observe
from job_handlers.app import build_app, handled_queues
from job_handlers.failures import record_outcome
from job_handlers.runner import WorkerRunner
from job_handlers.settings import WorkerSettings
from job_handlers.tasknames import NOTIFICATIONS_QUEUE

log = logging.getLogger("job_handlers")


class ConfigurationError(Exception):
    exit_code = 2


def load_settings() -> WorkerSettings:
    try:
        return WorkerSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'/'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors())
        raise ConfigurationError(
            f"invalid configuration: {problems} (DATABASE_URL is required)") from None


def cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.concurrency:
        settings = settings.model_copy(update={"concurrency": args.concurrency})
    app = build_app(settings)
    queues = args.queue or handled_queues(app)
    unknown = sorted(set(queues) - set(handled_queues(app)))
    if unknown:
        raise ConfigurationError(f"no handler here for queue(s) {', '.join(unknown)}; "
                                 f"this worker handles {', '.join(handled_queues(app))}")
    if NOTIFICATIONS_QUEUE in queues and settings.unsubscribe_secret is None:
        raise ConfigurationError(
            "JOB_UNSUBSCRIBE_SECRET is not set: emails need signed unsubscribe links (set it, "
            "the same value for every worker and `job-handlers web`, or leave the "
            f"{NOTIFICATIONS_QUEUE} queue out with --queue)")
    log.info("worker for queues %s, concurrency %d", ", ".join(queues), settings.concurrency)

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object = None) -> None:
        log.info("received %s: finishing running jobs (at most %.0f s)",
                 signal.Signals(signum).name, settings.shutdown_timeout_s)
        stop_requested.set()

    # Signals are ours from the first instant: one that arrives while the worker starts is
    # not lost, and one during the run stops procrastinate's worker gracefully.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)

    def new_worker() -> Worker:
        return Worker(
            app,
            queues=queues,
            concurrency=settings.concurrency,
            fetch_job_polling_interval=settings.poll_interval_s,
            shutdown_graceful_timeout=settings.shutdown_timeout_s,
            update_heartbeat_interval=settings.heartbeat_s,
            stalled_worker_timeout=settings.stalled_after_s,
            install_signal_handlers=False,
            worker_middleware=[record_outcome],
        )

    # a new Worker after a database outage (procrastinate stops its own on connection loss)
    runner = WorkerRunner(new_worker, stop_requested)

    async def run() -> None:
        async with app.open_async():
            def stop_worker(signum: int) -> None:
                request_stop(signum)
                runner.stop()

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop_worker, sig)
            if stop_requested.is_set():
                return
            await runner.run()

    try:
        ops = observe.start(settings, runner)  # /metrics, /healthz, /readyz
    except observe.MetricsPortError as exc:
        raise ConfigurationError(str(exc)) from exc
    try:
        asyncio.run(run())
    finally:
        if ops is not None:
            ops.close()
    log.info("worker stopped")
    return 0


def cmd_dlq_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    with psycopg.connect(settings.database_url) as conn:
        rows = dlq.list_failed(conn, args.task, args.limit)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    elif not rows:
        print("dead-letter queue is empty")
    else:
        for r in rows:
            print(f"job {r['id']}  {r['task_name']}  attempts {r['attempts']}  "
                  f"failed {r['failed_at']}  args {json.dumps(r['args'])}\n"
                  f"    {r['error_type']}: {r['error']}")
    return 0


def cmd_dlq_retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise ConfigurationError("say which failed jobs to retry: their ids, or --all")
    settings = load_settings()
    with psycopg.connect(settings.database_url) as conn:
        retried = dlq.retry(conn, args.ids or None)
    print(f"retried {len(retried)} job(s)" + (f": {', '.join(map(str, retried))}"
                                              if retried else ""))
    return 0 if retried or args.all else 1


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    if not args.ids and not args.all and args.older_than_hours is None:
        raise ConfigurationError("say which failed jobs to purge: ids, --all or "
                                 "--older-than-hours")
    settings = load_settings()
    with psycopg.connect(settings.database_url) as conn:
        purged = dlq.purge(conn, args.ids or None, args.older_than_hours)
    print(f"purged {purged} failed job(s)")
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from job_handlers.web import create_app

    settings = load_settings()
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    host = args.host or settings.web_host
    port = settings.web_port if args.port is None else args.port
    log.info("web service on http://%s:%d (unsubscribe, health)", host, port)
    # no access log: its request lines would carry unsubscribe tokens (the handlers log what
    # happened without them)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(),
                proxy_headers=True, server_header=False, access_log=False)
    return 0


def cmd_sync_ens(args: argparse.Namespace) -> int:
    """Sync the named names now, in this process (through the same rate limit and breaker)."""
    from job_handlers import db, ens_sync
    from job_handlers.chain.access import Chain
    from job_handlers.errors import RetryableJobError

    settings = load_settings()
    if not settings.eth_rpc_url:
        raise ConfigurationError("ETH_RPC_URL is not set: sync-ens needs an Ethereum JSON-RPC "
                                 "endpoint")
    app = build_app(settings)
    chain = Chain(settings)

    async def run() -> int:
        failed = 0
        async with app.open_async():
            async with db.pool(app).connection() as conn:
                ids = await ens_sync.names_to_ids(conn, args.names)
            for name in args.names:
                name_id = ids.get(name.lower())
                if name_id is None:
                    print(f"{name}: not in ens_names, nothing to sync")
                    failed += 1
                    continue
                try:
                    done = await ens_sync.sync_name(app, chain, ens_sync.SyncArgs(
                        ens_name_id=name_id, reason="manual", event_key=f"manual:{name_id}"))
                except RetryableJobError as exc:
                    print(f"{name}: not synced: {exc}")
                    failed += 1
                    continue
                detail = (f"resolver {done['resolver']}, {done['records']} record(s) set"
                          if done["outcome"] == "synced" else done["detail"])
                print(f"{name}: {done['outcome']} ({detail})")
            await chain.client(app).close()
        return 1 if failed else 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="job-handlers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("worker", help="run the handlers until SIGINT/SIGTERM")
    p.add_argument("--queue", action="append", default=[],
                   help="only this queue (repeatable); default: every queue with a handler")
    p.add_argument("--concurrency", type=int, help="jobs at once (default JOB_CONCURRENCY)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("web", help="serve the unsubscribe pages (JOB_WEB_HOST/JOB_WEB_PORT)")
    p.add_argument("--host", help="listen address (default JOB_WEB_HOST)")
    p.add_argument("--port", type=int, help="port (default JOB_WEB_PORT)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("sync-ens", help="sync these names' ENS data from the chain now")
    p.add_argument("names", nargs="+", metavar="NAME", help="e.g. alice.eth")
    p.set_defaults(func=cmd_sync_ens)

    d = sub.add_parser("dlq", help="the dead-letter queue (failed jobs)").add_subparsers(
        dest="dlq_command", required=True)
    p = d.add_parser("list", help="failed jobs with their last error")
    p.add_argument("--task")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dlq_list)
    p = d.add_parser("retry", help="run failed jobs again, now")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_dlq_retry)
    p = d.add_parser("purge", help="delete failed jobs")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--all", action="store_true")
    p.add_argument("--older-than-hours", type=float)
    p.set_defaults(func=cmd_dlq_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = "INFO"
    try:
        level = load_settings().log_level
    except ConfigurationError:
        pass
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result: int = args.func(args)
        return result
    except ConfigurationError as exc:
        print(f"job-handlers: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except psycopg.OperationalError as exc:
        print(f"job-handlers: cannot reach the database: {exc}", file=sys.stderr)
        return 8


if __name__ == "__main__":
    sys.exit(main())
