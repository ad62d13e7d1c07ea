"""The status page of `job-handlers web` in headless Chromium: live figures and the DLQ's retry
button. The phone-sized screenshot is kept in `test-artifacts/` (or $TEST_ARTIFACTS_DIR)."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from delivery import SmtpCatcher, free_port
from marketplace import add_listing, add_name, add_user, watch
from support import ROOT, WORKER, consumer_env, running_consumer, wait_until

from wal_consumer.settings import ConsumerSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "status-token-for-tests"


def artifacts() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def job_status(conn: psycopg.Connection, task: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT status::text FROM procrastinate_jobs WHERE task_name = %s ORDER BY id", [task])]


def test_status_page_shows_live_figures_and_retries_a_dead_letter(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    smtp = SmtpCatcher().start()
    port = free_port()
    env = consumer_env(ready_db.database_url, SMTP_URL=smtp.url, JOB_POLL_INTERVAL_S="0.1",
                       JOB_STATUS_TOKEN=TOKEN, JOB_WEB_PORT=str(port))
    try:
        name_id = add_name(conn, "status.eth")
        watch(conn, add_user(conn, "0x00000000000000000000000000000000000000a1",
                             "watcher@example.com"), name_id)
        with running_consumer(env, tmp_path / "consumer.log"), \
                running_consumer(env, tmp_path / "web.log", ("job_handlers", "web")):
            with running_consumer(env, tmp_path / "worker.log", WORKER):
                add_listing(conn, name_id)
                add_listing(conn, name_id, expires_at=datetime.now(UTC).replace(tzinfo=None)
                            + timedelta(seconds=1))
                _fail_an_ownership_job(conn)
                wait_until(lambda: job_status(conn, "update-ownership") == ["failed"]
                           and job_status(conn, "expire-orders") == ["succeeded"]
                           and smtp.count() == 2, timeout=30, what="a failure, an expiry, mail")
            failed_id = conn.execute("SELECT id FROM procrastinate_jobs WHERE task_name ="
                                     " 'update-ownership'").fetchone()[0]
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _up(base), what="the web service")
            _check_csrf(base, failed_id)

            with playwright.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 390, "height": 844},
                                        device_scale_factor=2, is_mobile=True)
                page.goto(f"{base}/status")
                page.fill("#token", TOKEN)
                page.click("#login")
                page.wait_for_selector("#slots")
                slots = page.inner_text("#slots")
                assert "grails_workers" in slots and "active, WAL reserved" in slots
                queues = page.inner_text("#queues")
                assert "update-ownership" in queues
                deliveries = page.inner_text("#deliveries")
                assert deliveries.count("sent") == 2 and "new-listing" in deliveries
                assert page.inner_text("#expiry").startswith("1 expired")
                dlq = page.inner_text("#dlq")
                assert f"{failed_id}\tupdate-ownership" in dlq and "does not exist" in dlq
                page.screenshot(path=str(artifacts() / "status-page.png"), full_page=True)
                page.click(f"#retry-{failed_id}")
                page.wait_for_selector("#flash")
                assert page.inner_text("#flash") == f"Job {failed_id} is back in the queue."
                assert job_status(conn, "update-ownership") == ["todo"]
                assert "empty" in page.inner_text("#dlq")
                browser.close()
    finally:
        smtp.stop()


def _fail_an_ownership_job(conn: psycopg.Connection) -> None:
    # a job for a name that no longer exists fails at once (PermanentJobError): a dead letter
    conn.execute("SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('ownership', 'update-ownership',"
                 " 0, NULL, NULL, '{\"ens_name_id\": 9999, \"new_owner\": \"0x2\"}'::jsonb,"
                 " NULL)::procrastinate_job_to_defer_v1])")


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _check_csrf(base: str, job_id: int) -> None:
    with httpx.Client(base_url=base) as client:
        assert client.post("/status/login", data={"token": "wrong"}).status_code == 403
        assert client.post(f"/status/dlq/{job_id}/retry").status_code == 403  # no session
        client.post("/status/login", data={"token": TOKEN})
        assert client.cookies.get("grails_status")
        assert client.post(f"/status/dlq/{job_id}/retry", data={"csrf": "x"}).status_code == 403
        page = client.get("/status").text
        csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        assert client.post(f"/status/dlq/{job_id}/retry", data={"csrf": csrf},
                           headers={"origin": "https://evil.example"}).status_code == 403
