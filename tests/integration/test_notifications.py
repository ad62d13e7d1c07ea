"""Notifications end to end: the consumer and `job-handlers worker` running, a real SMTP server
(aiosmtpd) and a real HTTP receiver; every watcher hears of each event once."""

from __future__ import annotations

import base64
import json
import re
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from delivery import SmtpCatcher, WebhookReceiver, free_port
from marketplace import BUYER, SELLER, add_listing, add_name, add_offer, add_user, watch
from standardwebhooks.webhooks import Webhook
from support import WORKER, ConsumerProcess, consumer_env, running_consumer, wait_until

from wal_consumer.settings import ConsumerSettings

NOTIFY_FAST = {
    "JOB_POLL_INTERVAL_S": "0.1", "JOB_RETRY_BASE_S": "0.1", "JOB_RETRY_CAP_S": "0.5",
    "JOB_NOTIFY_RETRY_BASE_S": "0.2", "JOB_BREAKER_RESET_S": "0.5", "JOB_BREAKER_FAILURES": "3",
    "JOB_WEBHOOK_ALLOW_PRIVATE": "true", "JOB_EMAIL_RATE_PER_S": "1000",
}


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def ledger(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT user_id, channel, type, status, attempts, last_error"
                        " FROM notifications ORDER BY id").fetchall()


@pytest.fixture
def smtp() -> Iterator[SmtpCatcher]:
    catcher = SmtpCatcher().start()
    try:
        yield catcher
    finally:
        catcher.stop()


@pytest.fixture
def notify_env(ready_db: ConsumerSettings, smtp: SmtpCatcher) -> dict[str, str]:
    return consumer_env(ready_db.database_url, SMTP_URL=smtp.url, **NOTIFY_FAST)


@pytest.fixture
def daemons(notify_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    with running_consumer(notify_env, tmp_path / "consumer.log"), \
            running_consumer(notify_env, tmp_path / "worker.log", WORKER):
        yield notify_env


def test_each_watcher_gets_one_email_per_event_with_the_right_template(
    daemons: dict[str, str], conn: psycopg.Connection, smtp: SmtpCatcher
) -> None:
    name_id = add_name(conn, "evil<script>.eth")
    conn.execute("UPDATE ens_names SET metadata = %s WHERE id = %s",
                 [json.dumps({"description": "<script>alert(1)</script>"}), name_id])
    alice = add_user(conn, "0x00000000000000000000000000000000000000a1", "alice@example.com")
    bob = add_user(conn, "0x00000000000000000000000000000000000000b0", "bob@example.com")
    unverified = add_user(conn, "0x00000000000000000000000000000000000000c0", "carol@example.com",
                          verified=False)
    gone = add_user(conn, "0x00000000000000000000000000000000000000d0", "dave@example.com")
    seller = add_user(conn, SELLER, "seller@example.com")
    buyer = add_user(conn, BUYER, "buyer@example.com")
    conn.execute("INSERT INTO grails_workers.notification_settings (user_id, unsubscribed_at)"
                 " VALUES (%s, now())", [gone])
    watch(conn, alice, name_id, notify_on_price_change=True)
    watch(conn, bob, name_id, notify_on_listing=False)
    for user in (unverified, gone, seller, buyer):
        watch(conn, user, name_id)

    listing = add_listing(conn, name_id, price_wei="1234500000000000000")
    wait_until(lambda: smtp.count() >= 2, timeout=20, what="new-listing emails")
    # alice and the buyer; not bob (flag off), carol (unverified), dave (unsubscribed), the seller
    assert sorted(a for m in smtp.messages for a in m.to) == [
        "alice@example.com", "buyer@example.com"]
    mail = smtp.to("alice@example.com")[0]
    assert mail.message["Subject"] == "🏷️ evil<script>.eth is now listed for 1.2345 ETH"
    unsubscribe = mail.message["List-Unsubscribe"]
    assert re.fullmatch(r"<http://localhost:8080/unsubscribe\?token=\d+\.[\w-]+>", unsubscribe)
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html, text = mail.part("html"), mail.part("plain")
    assert "<script>" not in html
    assert "evil&lt;script&gt;.eth" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "1.2345 ETH" in text and "Unsubscribe" in text and unsubscribe[1:-1] in text
    assert "https://grails.app/names/evil%3Cscript%3E.eth" in html

    conn.execute("UPDATE listings SET price_wei = '2000000000000000000' WHERE id = %s", [listing])
    wait_until(lambda: len(smtp.to("alice@example.com")) == 2, what="price-change email")
    assert smtp.to("alice@example.com")[1].message["Subject"] == (
        "💰 evil<script>.eth price changed to 2 ETH")

    add_offer(conn, name_id, amount_wei="500000000000000000")
    wait_until(lambda: len(smtp.to("bob@example.com")) == 1, what="new-offer email to bob")
    conn.execute("UPDATE listings SET status = 'sold' WHERE id = %s", [listing])
    wait_until(lambda: smtp.count() >= 10 and _all_done(conn), what="sale emails")
    subjects = sorted((m.to[0], str(m.message["Subject"])) for m in smtp.messages)
    assert subjects == sorted([
        ("alice@example.com", "🏷️ evil<script>.eth is now listed for 1.2345 ETH"),
        ("buyer@example.com", "🏷️ evil<script>.eth is now listed for 1.2345 ETH"),
        ("alice@example.com", "💰 evil<script>.eth price changed to 2 ETH"),
        ("alice@example.com", "💬 New offer on evil<script>.eth: 0.5 ETH"),
        ("bob@example.com", "💬 New offer on evil<script>.eth: 0.5 ETH"),
        ("seller@example.com", "💬 New offer on evil<script>.eth: 0.5 ETH"),
        ("alice@example.com", "✅ evil<script>.eth was sold for 2 ETH"),
        ("bob@example.com", "✅ evil<script>.eth was sold for 2 ETH"),
        ("buyer@example.com", "✅ evil<script>.eth was sold for 2 ETH"),
        ("seller@example.com", "✅ evil<script>.eth was sold for 2 ETH"),
    ]), "the buyer is not told of their own offer; nobody hears of anything twice"
    assert {row[3] for row in ledger(conn)} == {"sent"}


def test_webhook_is_signed_retried_once_delivered_and_disabled_on_410(
    notify_env: dict[str, str], ready_db: ConsumerSettings, conn: psycopg.Connection,
    tmp_path: Path
) -> None:
    name_id = add_name(conn, "hooked.eth")
    secret = whsec()
    with WebhookReceiver([500, (503, {"Retry-After": "1"}), 200, 410]) as receiver, \
            running_consumer(notify_env, tmp_path / "consumer.log"), \
            running_consumer(notify_env, tmp_path / "worker.log", WORKER):
        hooked = add_user(conn, "0x00000000000000000000000000000000000000e1",
                          webhook_url=receiver.url, webhook_secret=secret)
        watch(conn, hooked, name_id)
        add_listing(conn, name_id, price_wei="1500000000000000000")
        wait_until(lambda: [r[3] for r in ledger(conn)] == ["sent"], timeout=20,
                   what="the webhook delivered after a 500 and a 503")
        first, second, delivered = receiver.received()
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == \
            delivered.headers["webhook-id"], "webhook-id is stable across retries"
        assert delivered.at - second.at >= 0.9, "Retry-After: 1 was honoured"
        payload = Webhook(secret).verify(delivered.body, delivered.headers)
        assert payload["type"] == "listing.created"
        assert payload["data"]["name"] == "hooked.eth"
        assert payload["data"]["price_eth"] == "1.5"
        with pytest.raises(Exception, match="signature"):
            Webhook(whsec()).verify(delivered.body, delivered.headers)
        assert ledger(conn)[0][4] == 3  # attempts

        add_offer(conn, name_id)  # the receiver now answers 410 Gone
        wait_until(lambda: len(ledger(conn)) == 2 and ledger(conn)[1][3] == "disabled",
                   what="410 to disable the endpoint")
        disabled = conn.execute("SELECT webhook_disabled_at IS NOT NULL, webhook_disabled_reason"
                                " FROM grails_workers.notification_settings WHERE user_id = %s",
                                [hooked]).fetchone()
        assert disabled == (True, "127.0.0.1 answered 410 Gone")
        seen = len(receiver.received())
        add_offer(conn, name_id)
        other = add_user(conn, "0x00000000000000000000000000000000000000e2", "other@x.org")
        watch(conn, other, name_id)
        add_offer(conn, name_id)
        wait_until(lambda: conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE task_name"
                                        " = 'notify-watchers' AND status = 'succeeded'"
                                        ).fetchone() == (4,), what="later fan-outs")
        assert len(receiver.received()) == seen, "a disabled endpoint is not called again"


def test_smtp_down_then_up_delivers_every_pending_email_once(
    notify_env: dict[str, str], conn: psycopg.Connection, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    smtp.stop()
    name_id = add_name(conn, "outage.eth")
    users = [add_user(conn, f"0x{i:040x}", f"user{i}@example.com") for i in range(1, 6)]
    for user in users:
        watch(conn, user, name_id)
    with running_consumer(notify_env, tmp_path / "consumer.log"), \
            running_consumer(notify_env, tmp_path / "worker.log", WORKER) as worker:
        for _ in range(3):
            add_listing(conn, name_id)
        wait_until(lambda: "circuit breaker 'smtp' is open" in worker.output(), timeout=20,
                   what="the breaker to open while the SMTP server is down")
        assert smtp.count() == 0
        assert {row[3] for row in ledger(conn)} <= {"retrying", "sending", "pending"}
        smtp.start()
        wait_until(lambda: smtp.count() >= 15 and {r[3] for r in ledger(conn)} == {"sent"},
                   timeout=30, what="every pending email after the server came back")
    per_user = sorted(len(smtp.to(f"user{i}@example.com")) for i in range(1, 6))
    assert per_user == [3] * 5
    assert smtp.count() == 15


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/", "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:{port}/", "http://[::ffff:127.0.0.1]:{port}/", "http://100.64.0.1/",
    "http://localhost:{port}/",
])
def test_ssrf_targets_are_refused_with_a_clear_error(target: str) -> None:
    import asyncio

    from job_handlers.notify import ssrf

    url = target.format(port=free_port())
    with pytest.raises(ssrf.UnsafeTarget, match="not a public address"):
        asyncio.run(ssrf.resolve(url, allow_private=False))
    assert asyncio.run(ssrf.resolve(url, allow_private=True)).url == url


def test_a_private_webhook_target_fails_the_job_and_is_never_called(
    ready_db: ConsumerSettings, conn: psycopg.Connection, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    env = consumer_env(ready_db.database_url, SMTP_URL=smtp.url,
                       **{**NOTIFY_FAST, "JOB_WEBHOOK_ALLOW_PRIVATE": "false"})
    name_id = add_name(conn, "ssrf.eth")
    with WebhookReceiver() as receiver, running_consumer(env, tmp_path / "consumer.log"), \
            running_consumer(env, tmp_path / "worker.log", WORKER):
        user = add_user(conn, "0x00000000000000000000000000000000000000f1",
                        webhook_url=receiver.url, webhook_secret=whsec())
        watch(conn, user, name_id)
        add_listing(conn, name_id)
        wait_until(lambda: [r[3] for r in ledger(conn)] == ["failed"], what="the refusal")
        assert "resolves to 127.0.0.1, which is not a public address" in ledger(conn)[0][5]
        assert receiver.received() == []


def test_one_click_unsubscribe_stops_further_emails(
    daemons: dict[str, str], conn: psycopg.Connection, smtp: SmtpCatcher, tmp_path: Path
) -> None:
    port = free_port()
    web_env = {**daemons, "JOB_WEB_PORT": str(port)}
    name_id = add_name(conn, "quiet.eth")
    leaving = add_user(conn, "0x00000000000000000000000000000000000000a7", "leaving@example.com")
    staying = add_user(conn, "0x00000000000000000000000000000000000000a8", "staying@example.com")
    watch(conn, leaving, name_id)
    watch(conn, staying, name_id)
    with running_consumer(web_env, tmp_path / "web.log", ("job_handlers", "web")):
        add_listing(conn, name_id)
        wait_until(lambda: smtp.count() == 2, what="the first emails")
        link = smtp.to("leaving@example.com")[0].message["List-Unsubscribe"][1:-1]
        local = link.replace("http://localhost:8080", f"http://127.0.0.1:{port}")
        wait_until(lambda: _up(port), what="the web service")
        page = httpx.get(local)
        assert page.status_code == 200 and "<form method=\"post\"" in page.text
        forged = httpx.post(local.replace("token=", "token=9"),
                            content=b"List-Unsubscribe=One-Click")
        assert forged.status_code == 400
        assert _unsubscribed(conn, leaving) is False, "GET and a forged token change nothing"
        done = httpx.post(local, content=b"List-Unsubscribe=One-Click",
                          headers={"content-type": "application/x-www-form-urlencoded"})
        assert done.status_code == 200 and "Unsubscribed" in done.text
        assert _unsubscribed(conn, leaving) is True
        token = local.split("token=", 1)[1]
        web_log = (tmp_path / "web.log").read_text()
        assert "unsubscribed (one-click)" in web_log and token not in web_log
    add_listing(conn, name_id)
    wait_until(lambda: len(smtp.to("staying@example.com")) == 2, what="the second email")
    assert len(smtp.to("leaving@example.com")) == 1


def _all_done(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT count(*) FILTER (WHERE status <> 'succeeded') FROM"
                       " procrastinate_jobs WHERE queue_name = 'notifications'").fetchone()
    return row == (0,)


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def _unsubscribed(conn: psycopg.Connection, user_id: int) -> bool:
    row = conn.execute("SELECT unsubscribed_at IS NOT NULL FROM"
                       " grails_workers.notification_settings WHERE user_id = %s",
                       [user_id]).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize(("point", "expected_emails"), [
    ("after-claim", 1),  # claimed, not sent: the rescued job sends it once
    ("after-send", 2),  # THE duplicate window: the SMTP server took it, the ledger never heard
    ("after-mark", 1),  # marked sent, job not finished: the rescued job finds it sent
])
def test_worker_killed_during_a_send_duplicates_only_between_sent_and_marked(
    notify_env: dict[str, str], conn: psycopg.Connection, smtp: SmtpCatcher, tmp_path: Path,
    point: str, expected_emails: int
) -> None:
    fast_rescue = {"JOB_HEARTBEAT_S": "0.2", "JOB_STALLED_AFTER_S": "1",
                   "JOB_RESCUE_CRON": "* * * * * *"}
    name_id = add_name(conn, "crash.eth")
    user = add_user(conn, "0x00000000000000000000000000000000000000c7", "crash@example.com")
    watch(conn, user, name_id)
    with running_consumer(notify_env, tmp_path / "consumer.log"):
        doomed = ConsumerProcess({**notify_env, **fast_rescue, "JOB_FAILPOINT": point},
                                 tmp_path / "doomed.log", command=WORKER).start()
        add_listing(conn, name_id)
        assert doomed.wait(timeout=30) == -signal.SIGKILL
        assert f"failpoint {point}: killing this worker" in doomed.output()
        with running_consumer({**notify_env, **fast_rescue}, tmp_path / "worker.log", WORKER):
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'send-notification'"
                " AND status = 'succeeded'").fetchone() == (1,), timeout=30,
                what="the rescued job to finish")
    assert len(smtp.to("crash@example.com")) == expected_emails
    assert [r[3] for r in ledger(conn)] == ["sent"]
