"""Webhook delivery per Standard Webhooks: a signed POST to the checked address.

Headers `webhook-id` (stable across retries: the receiver's idempotency key), `webhook-timestamp`
and `webhook-signature` (signed by the `standardwebhooks` package with the user's `whsec_`
secret). The request connects to the address `ssrf.resolve` checked, with the URL's host in the
Host header and as the TLS server name, and never follows redirects. 2xx is delivered; 410 means
the endpoint is gone; 429 and 5xx are retried (not before Retry-After); other 4xx fail.
"""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from job_handlers.notify import ssrf

USER_AGENT = "grails-workers-webhooks/1"


@dataclass(frozen=True)
class WebhookResult:
    status_code: int
    retry_after_s: float | None

    @property
    def delivered(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410

    @property
    def retryable(self) -> bool:
        return self.status_code == 429 or self.status_code == 408 or self.status_code >= 500


def payload(webhook_type: str, data: dict[str, Any], at: datetime) -> bytes:
    body = {"type": webhook_type, "timestamp": at.isoformat().replace("+00:00", "Z"),
            "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _address_url(target: ssrf.Target, path: str) -> str:
    host = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    return f"{target.scheme}://{host}:{target.port}{path}"


async def deliver(client: httpx.AsyncClient, target: ssrf.Target, *, message_id: str,
                  body: bytes, secret: str, timeout_s: float) -> WebhookResult:
    """POST one signed message; httpx.TransportError when the endpoint cannot be reached."""
    _, _, _, path = ssrf.parse(target.url)
    now = datetime.now(UTC)
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host and not host_header.startswith("["):
        host_header = f"[{target.host}]" + ("" if target.port == default_port
                                             else f":{target.port}")
    headers = {
        "host": host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(timeout_s).as_dict()}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    request = client.build_request("POST", _address_url(target, path), headers=headers,
                                   content=body, extensions=extensions)
    response = await client.send(request, follow_redirects=False)
    await response.aclose()
    return WebhookResult(response.status_code, retry_after(response.headers.get("retry-after")))
