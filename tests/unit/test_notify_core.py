"""The pure parts of notifications: content, prices, tokens, SMTP URLs, Retry-After, breaker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from job_handlers.breaker import CircuitBreaker, CircuitOpen, State
from job_handlers.errors import RetryableJobError
from job_handlers.notify import render, smtp, tokens, webhook
from job_handlers.notify.events import EVENTS
from job_handlers.retry import BackoffRetry

DATA = {"price_wei": "1234500000000000000", "previous_price_wei": "2000000000000000000",
        "amount_wei": "10", "seller_address": "0x" + "a" * 40,
        "buyer_address": "0x" + "b" * 40, "listing_ids": [4, 5], "new_owner": "0x" + "c" * 40}


MAX_UINT256_ETH = ("115,792,089,237,316,195,423,570,985,008,687,907,853,269,984,665,640,564,039,457"
                   ".584007913129639935")


@pytest.mark.parametrize(("wei", "eth"), [
    ("0", "0"), ("1", "0.000000000000000001"), ("1000000000000000000", "1"),
    ("1234500000000000000", "1.2345"), (str(2**256 - 1), MAX_UINT256_ETH),
])
def test_wei_to_eth_is_exact(wei: str, eth: str) -> None:
    assert render.wei_to_eth(wei) == eth


@given(st.integers(min_value=0, max_value=2**256))
def test_wei_to_eth_round_trips(wei: int) -> None:
    shown = render.wei_to_eth(wei)
    assert shown is not None
    whole, _, fraction = shown.replace(",", "").partition(".")
    assert int(whole) * 10**18 + int(fraction.ljust(18, "0") or "0") == wei


def test_names_are_normalised_for_display() -> None:
    assert render.normalise_name("VitaLik.ETH") == "vitalik.eth"
    assert render.normalise_name("bad<name>.eth") == "bad<name>.eth"  # shown as stored


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_every_event_renders_subject_html_text_and_unsubscribe(event: str) -> None:
    context = render.build_context(event, "Name<b>.eth", {**DATA, "metadata": {
        "description": "<img src=x onerror=alert(1)>"}}, public_base_url="https://grails.app/",
        unsubscribe_url="https://w.example/unsubscribe?token=1.x&y=<z>")
    content = render.render(context)
    assert "\n" not in content.subject and "Name<b>.eth" in content.subject
    assert "<b>" not in content.html and "&lt;img src=x onerror=alert(1)&gt;" in content.html
    assert "unsubscribe?token=1.x&amp;y=&lt;z&gt;" in content.html
    assert "https://w.example/unsubscribe?token=1.x&y=<z>" in content.text
    assert "https://grails.app/names/Name%3Cb%3E.eth" in content.text


def test_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown notification event 'transfer'"):
        render.build_context("transfer", "a.eth", {}, public_base_url="x", unsubscribe_url=None)


def test_tokens_round_trip_and_forgeries_fail() -> None:
    token = tokens.make_token("k1", 42)
    assert tokens.read_token("k1", token) == 42
    for bad in [tokens.make_token("k2", 42), token.replace("42.", "43."), "42", "x.y", ""]:
        with pytest.raises(tokens.InvalidToken):
            tokens.read_token("k1", bad)


def test_smtp_urls() -> None:
    plain = smtp.parse_smtp_url("smtp://mail.example:2525", 5)
    assert (plain.hostname, plain.port, plain.use_tls, plain.start_tls) == (
        "mail.example", 2525, False, None)
    tls = smtp.parse_smtp_url("smtps://u%40x:p%2Fw@mail.example", 5)
    assert (tls.port, tls.use_tls, tls.username, tls.password) == (465, True, "u@x", "p/w")
    assert smtp.parse_smtp_url("smtp://m?starttls=required", 5).start_tls is True
    with pytest.raises(ValueError, match="smtp:// or smtps://"):
        smtp.parse_smtp_url("http://m", 5)


def test_retry_after_header() -> None:
    assert webhook.retry_after("120") == 120
    now = datetime(2026, 1, 1, tzinfo=UTC)
    date = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert webhook.retry_after(date, now=now.timestamp()) == 30
    assert webhook.retry_after("soon") is None and webhook.retry_after(None) is None


def test_retry_waits_at_least_retry_after_and_not_beyond_a_day() -> None:
    from procrastinate.jobs import Job

    job = Job(id=1, queue="q", lock=None, queueing_lock=None, task_name="t", attempts=0)
    strategy = BackoffRetry(3, base_s=1, cap_s=2)
    decision = strategy.get_retry_decision(
        exception=RetryableJobError("429", retry_after_s=600), job=job)
    assert decision is not None and decision.retry_at is not None
    wait = (decision.retry_at - datetime.now(UTC)).total_seconds()
    assert 590 < wait <= 600


def test_breaker_opens_refuses_then_lets_one_trial_through() -> None:
    now = [0.0]
    breaker = CircuitBreaker("smtp", failure_threshold=2, reset_after_s=10, clock=lambda: now[0])
    breaker.allow()
    breaker.record_failure("down")
    assert breaker.state is State.CLOSED
    breaker.record_failure("down")
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpen, match=r"'smtp' is open .*last error: down"):
        breaker.allow()
    now[0] = 10.5
    breaker.allow()  # the trial
    assert breaker.state is State.HALF_OPEN
    with pytest.raises(CircuitOpen):
        breaker.allow()  # only one trial at a time
    breaker.record_failure("still down")
    assert breaker.state is State.OPEN
    now[0] = 21
    breaker.allow()
    breaker.record_success()
    assert breaker.state is State.CLOSED
    breaker.allow()


@pytest.mark.parametrize(("url", "error"), [
    ("ftp://example.com/x", "scheme must be https or http"),
    ("https://user:pw@example.com/x", "credentials in the URL are not allowed"),
    ("https:///nohost", "has no host"),
    ("https://example.com:99999/x", "port is not a number"),
])
def test_bad_webhook_urls_are_refused_without_leaking_their_secret_path(url: str,
                                                                         error: str) -> None:
    from job_handlers.notify import ssrf

    with pytest.raises(ssrf.UnsafeTarget, match=error) as caught:
        ssrf.parse(url)
    assert "/x" not in str(caught.value) and "pw" not in str(caught.value)
