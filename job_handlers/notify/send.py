"""`send-notification`: deliver one event to one user on one channel, once.

Order of work: record and claim the delivery in the ledger (committed), check the user still
wants it, render, wait for the channel's shared rate limit, ask the provider's circuit breaker,
send, mark sent. A failure is written to the ledger (status, attempts, last error) and either
retried (provider down, 429/5xx, rate limit) or failed for good (a refused address, a webhook
target that may not be called); a webhook answering 410 is disabled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiosmtplib
import httpx
from procrastinate import App, JobContext
from procrastinate.retry import BaseRetryStrategy
from pydantic import BaseModel, ConfigDict, field_validator

from job_handlers import db, metrics
from job_handlers.breaker import CircuitBreaker
from job_handlers.errors import PermanentJobError, RetryableJobError
from job_handlers.notify import ledger, recipients, render, smtp, ssrf, tokens, webhook
from job_handlers.notify.events import EVENTS
from job_handlers.notify.recipients import EMAIL, WEBHOOK, Recipient
from job_handlers.ratelimit import RateLimiter
from job_handlers.settings import WorkerSettings
from job_handlers.tasknames import NOTIFICATIONS_QUEUE, SEND_NOTIFICATION

log = logging.getLogger(__name__)


class SendArgs(BaseModel):
    model_config = ConfigDict(extra="allow")
    event: str
    event_key: str
    ens_name_id: int
    user_id: int
    channel: Literal["email", "webhook"]

    @field_validator("event")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EVENTS:
            raise ValueError(f"{value!r} is not a notification event ({', '.join(EVENTS)})")
        return value

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DeliveryFailed(RetryableJobError):
    """The provider did not take the notification this time."""


@dataclass
class Delivery:
    """What one worker process shares between its sends: limits, breakers, an HTTP client."""

    settings: WorkerSettings
    email_limit: RateLimiter
    webhook_limit: RateLimiter
    email_breaker: CircuitBreaker
    webhook_breakers: dict[str, CircuitBreaker] = field(default_factory=dict)
    _http: httpx.AsyncClient | None = None
    _smtp: smtp.SmtpPool | None = None

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> Delivery:
        wait = settings.rate_limit_max_wait_s
        return cls(
            settings=settings,
            email_limit=RateLimiter("email", settings.email_rate_per_s, max_wait_s=wait),
            webhook_limit=RateLimiter("webhook", settings.webhook_rate_per_s, max_wait_s=wait),
            email_breaker=CircuitBreaker("smtp", settings.breaker_failures,
                                         settings.breaker_reset_s),
        )

    def webhook_breaker(self, host: str) -> CircuitBreaker:
        if host not in self.webhook_breakers:
            self.webhook_breakers[host] = CircuitBreaker(
                f"webhook:{host}", self.settings.breaker_failures, self.settings.breaker_reset_s)
        return self.webhook_breakers[host]

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(trust_env=False, follow_redirects=False)
        return self._http

    def smtp_pool(self, config: smtp.SmtpConfig) -> smtp.SmtpPool:
        if self._smtp is None:
            self._smtp = smtp.SmtpPool(config, size=self.settings.smtp_connections)
        return self._smtp

    def unsubscribe_url(self, user_id: int) -> str:
        secret = self.settings.unsubscribe_secret
        if secret is None:
            raise PermanentJobError("JOB_UNSUBSCRIBE_SECRET is not set: emails need a signed "
                                    "unsubscribe link")
        token = tokens.make_token(secret.get_secret_value(), user_id)
        return f"{self.settings.web_base_url.rstrip('/')}/unsubscribe?token={token}"


def _failpoint(settings: WorkerSettings, point: str) -> None:
    """Fault tests kill the worker here to show where a duplicate can and cannot happen."""
    if settings.failpoint == point:
        log.warning("failpoint %s: killing this worker", point)
        os.kill(os.getpid(), signal.SIGKILL)


async def _name_and_metadata(conn: Any, ens_name_id: int) -> tuple[str, dict[str, Any]]:
    has_metadata = await db.has_column(conn, "ens_names", "metadata")
    cur = await conn.execute(
        "SELECT name, metadata FROM ens_names WHERE id = %s" if has_metadata
        else "SELECT name, NULL FROM ens_names WHERE id = %s", [ens_name_id])
    row = await cur.fetchone()
    if row is None:
        raise PermanentJobError(f"{SEND_NOTIFICATION}: ens_names row {ens_name_id} does not "
                                "exist")
    return row[0], row[1] if isinstance(row[1], dict) else {}


def _recipient_label(person: Recipient | None, channel: str) -> str:
    if person is None:
        return ""
    if channel == EMAIL:
        return person.email or ""
    return ssrf.redact(person.webhook_url) if person.webhook_url else ""


def _why_not(person: Recipient | None, channel: str) -> str | None:
    if person is None:
        return "the user no longer exists"
    if person.unsubscribed:
        return "the user unsubscribed"
    if channel not in person.channels:
        return f"the user has no usable {channel} channel any more"
    return None


async def send_notification(app: App, delivery: Delivery, args: SendArgs,
                            final_attempt: bool) -> dict[str, Any]:
    pool = db.pool(app)
    async with pool.connection() as conn:
        person = await recipients.by_id(conn, args.user_id)
        name, metadata = await _name_and_metadata(conn, args.ens_name_id)
        await conn.commit()
        claimed = await ledger.claim(
            conn, event_key=args.event_key, user_id=args.user_id, channel=args.channel,
            event=args.event, ens_name_id=args.ens_name_id,
            recipient=_recipient_label(person, args.channel), metadata=args.data)
        if claimed is None:
            metrics.NOTIFICATIONS.labels(args.channel, "skipped").inc()
            log.info("%s %s for user %d by %s: already delivered, not sending again",
                     SEND_NOTIFICATION, args.event_key, args.user_id, args.channel)
            return {"status": "already-delivered"}
        _failpoint(delivery.settings, "after-claim")
        reason = _why_not(person, args.channel)
        if reason is not None or person is None:
            await ledger.mark(conn, claimed.id, "skipped", reason)
            metrics.NOTIFICATIONS.labels(args.channel, "skipped").inc()
            log.info("%s %s for user %d by %s: skipped, %s", SEND_NOTIFICATION, args.event_key,
                     args.user_id, args.channel, reason)
            return {"status": "skipped", "reason": reason}
        try:
            if args.channel == EMAIL:
                await _send_email(conn, delivery, args, person, name, metadata, claimed)
            else:
                status = await _send_webhook(conn, delivery, args, person, name, metadata,
                                             claimed)
                if status == "disabled":
                    return {"status": "disabled"}
        except PermanentJobError as exc:
            await ledger.mark(conn, claimed.id, "failed", str(exc))
            metrics.NOTIFICATIONS.labels(args.channel, "failed").inc()
            raise
        except Exception as exc:  # a provider's refusal, or a bug: either way the job retries
            error = str(exc) if isinstance(exc, RetryableJobError) else (
                f"{type(exc).__name__}: {exc}")
            await ledger.mark(conn, claimed.id, "failed" if final_attempt else "retrying", error)
            metrics.NOTIFICATIONS.labels(args.channel,
                                         "failed" if final_attempt else "retried").inc()
            raise
        _failpoint(delivery.settings, "after-send")
        await ledger.mark(conn, claimed.id, "sent")
        _failpoint(delivery.settings, "after-mark")
    metrics.NOTIFICATIONS.labels(args.channel, "sent").inc()
    committed_at = args.data.get("committed_at")
    if isinstance(committed_at, str):
        try:
            latency = (datetime.now(UTC) - datetime.fromisoformat(committed_at)).total_seconds()
            metrics.NOTIFICATION_LATENCY.labels(args.channel).observe(max(latency, 0.0))
        except ValueError:
            pass
    return {"status": "sent", "notification_id": claimed.id, "attempt": claimed.attempt}


async def _send_email(conn: Any, delivery: Delivery, args: SendArgs, person: Recipient,
                      name: str, metadata: dict[str, Any], claimed: ledger.Claim) -> None:
    settings = delivery.settings
    unsubscribe = delivery.unsubscribe_url(person.user_id)
    context = render.build_context(args.event, name, {**args.data, "metadata": metadata},
                                   public_base_url=settings.public_base_url,
                                   unsubscribe_url=unsubscribe)
    content = render.render(context)
    try:
        config = smtp.parse_smtp_url(settings.smtp_url.get_secret_value(),
                                     settings.smtp_timeout_s)
    except ValueError as exc:
        raise PermanentJobError(f"invalid SMTP_URL: {exc}") from None
    assert person.email is not None
    message = smtp.build_message(
        sender=settings.email_from, recipient=person.email, content=content,
        unsubscribe_url=unsubscribe, message_id_domain=_domain(settings.email_from),
        message_key=f"notification-{claimed.id}")
    await delivery.email_limit.acquire(conn)
    delivery.email_breaker.allow()
    started = time.monotonic()
    try:
        await delivery.smtp_pool(config).send(message)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        delivery.email_breaker.record_success()  # the server works; this address does not
        raise PermanentJobError(f"SMTP server refused {person.email}: {exc}") from None
    except aiosmtplib.SMTPResponseException as exc:
        if 500 <= exc.code < 600 and exc.code != 554:
            delivery.email_breaker.record_success()
            raise PermanentJobError(f"SMTP server rejected the message: {exc.code} "
                                    f"{exc.message}") from None
        delivery.email_breaker.record_failure(exc)
        raise DeliveryFailed(f"SMTP server answered {exc.code} {exc.message}") from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        delivery.email_breaker.record_failure(exc)
        raise DeliveryFailed(f"SMTP server {config.hostname}:{config.port} unreachable: "
                             f"{type(exc).__name__}: {exc}") from None
    delivery.email_breaker.record_success()
    log.info("%s %s: emailed user %d (%s) in %.0f ms", SEND_NOTIFICATION, args.event,
             person.user_id, args.event_key, (time.monotonic() - started) * 1000)


def _domain(sender: str) -> str:
    address = sender.rsplit("<", 1)[-1].rstrip(">")
    return address.rsplit("@", 1)[-1] or "grails.invalid"


async def _send_webhook(conn: Any, delivery: Delivery, args: SendArgs, person: Recipient,
                        name: str, metadata: dict[str, Any], claimed: ledger.Claim) -> str:
    settings = delivery.settings
    assert person.webhook_url is not None and person.webhook_secret is not None
    try:
        target = await ssrf.resolve(person.webhook_url, settings.webhook_allow_private)
    except ssrf.UnsafeTarget as exc:
        raise PermanentJobError(str(exc)) from None
    kind = EVENTS[args.event]
    data = {**args.data, "event": args.event, "event_key": args.event_key,
            "ens_name_id": args.ens_name_id, "name": render.normalise_name(name),
            "metadata": metadata}
    for wei_field in ("price_wei", "previous_price_wei", "amount_wei"):
        if data.get(wei_field) is not None:
            data[wei_field.replace("_wei", "_eth")] = render.wei_to_eth(data[wei_field])
    body = webhook.payload(kind.webhook_type, data, datetime.now(UTC))
    breaker = delivery.webhook_breaker(target.host)
    await delivery.webhook_limit.acquire(conn)
    breaker.allow()
    try:
        result = await webhook.deliver(delivery.http, target, message_id=f"msg_{claimed.id}",
                                       body=body, secret=person.webhook_secret,
                                       timeout_s=settings.webhook_timeout_s)
    except httpx.HTTPError as exc:
        breaker.record_failure(exc)
        raise DeliveryFailed(f"webhook {target.host}: {type(exc).__name__}: {exc}") from None
    if result.delivered:
        breaker.record_success()
        log.info("%s %s: webhook of user %d answered %d", SEND_NOTIFICATION, args.event,
                 person.user_id, result.status_code)
        return "sent"
    if result.gone:
        breaker.record_success()
        await _disable_webhook(conn, person.user_id, f"{target.host} answered 410 Gone")
        await ledger.mark(conn, claimed.id, "disabled", "410 Gone: endpoint disabled")
        metrics.NOTIFICATIONS.labels(WEBHOOK, "disabled").inc()
        log.warning("%s: webhook of user %d answered 410 Gone: endpoint disabled",
                    SEND_NOTIFICATION, person.user_id)
        return "disabled"
    if result.retryable:
        if result.status_code >= 500:
            breaker.record_failure(f"HTTP {result.status_code}")
        else:
            breaker.record_success()
        raise DeliveryFailed(f"webhook {target.host} answered {result.status_code}; retrying",
                             retry_after_s=result.retry_after_s)
    breaker.record_success()
    raise PermanentJobError(f"webhook {target.host} refused the notification with "
                            f"{result.status_code}")


async def _disable_webhook(conn: Any, user_id: int, reason: str) -> None:
    async with conn.transaction():
        await conn.execute(
            "UPDATE grails_workers.notification_settings SET webhook_disabled_at = now(),"
            " webhook_disabled_reason = %s WHERE user_id = %s AND webhook_disabled_at IS NULL",
            [reason, user_id])


def register(app: App, settings: WorkerSettings, retry: BaseRetryStrategy) -> Delivery:
    delivery = Delivery.from_settings(settings)
    render.warm_up()

    @app.task(name=SEND_NOTIFICATION, queue=NOTIFICATIONS_QUEUE, retry=retry, pass_context=True)
    async def send_notification_task(context: JobContext, /, **kwargs: Any) -> dict[str, Any]:
        args = SendArgs.model_validate(kwargs)
        attempts = context.job.attempts + 1
        return await send_notification(context.app, delivery, args,
                                       final_attempt=attempts > settings.notify_retries)

    return delivery
