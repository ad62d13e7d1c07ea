"""Notification content: a pure context builder and the jinja2 templates it fills.

HTML is autoescaped, so a name or text record holding `<script>` arrives as text. Plain-text
bodies and subjects are not HTML; subjects lose any line break (no header injection). Prices
are computed from wei with integers: 1234500000000000000 wei is exactly "1.2345" ETH.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any
from urllib.parse import quote

import jinja2

from job_handlers.notify.events import EVENTS

WEI_PER_ETH = 10**18


def wei_to_eth(wei: int | str | None) -> str | None:
    """Exact decimal ETH from wei, without float rounding or trailing zeros."""
    if wei is None:
        return None
    value = int(wei)
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), WEI_PER_ETH)
    digits = f"{fraction:018d}".rstrip("0")
    return f"{sign}{whole:,}" + (f".{digits}" if digits else "")


@lru_cache(maxsize=4096)
def normalise_name(name: str) -> str:
    """The ENS-normalised form (ENSIP-15) to show; the name as stored when it does not
    normalise (it is still shown, escaped). Memoised: an event's 50 watchers share one name,
    and normalising costs milliseconds."""
    try:
        from ens.utils import normalize_name

        return str(normalize_name(name))
    except Exception:  # any name the normaliser rejects is shown as stored
        return name


def short_address(address: str | None) -> str | None:
    if not address:
        return None
    return address if len(address) < 12 else f"{address[:6]}…{address[-4:]}"


def _text_record(metadata: Any, key: str) -> str | None:
    if not isinstance(metadata, dict):
        return None
    nested = metadata.get("text_records")
    records: dict[str, Any] = nested if isinstance(nested, dict) else metadata
    value = records.get(key)
    return str(value) if value else None


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def build_context(event: str, name: str, data: dict[str, Any], *, public_base_url: str,
                  unsubscribe_url: str | None) -> dict[str, Any]:
    """Everything a template may show, computed from the event's arguments."""
    if event not in EVENTS:
        raise ValueError(f"unknown notification event {event!r}")
    shown = normalise_name(name)
    base = public_base_url.rstrip("/")
    listing_ids = data.get("listing_ids") or []
    return {
        "event": event,
        "name": shown,
        "name_url": f"{base}/names/{quote(shown, safe='')}",
        "price_eth": wei_to_eth(data.get("price_wei")),
        "previous_price_eth": wei_to_eth(data.get("previous_price_wei")),
        "amount_eth": wei_to_eth(data.get("amount_wei")),
        "buyer": short_address(data.get("buyer_address")),
        "seller": short_address(data.get("seller_address")),
        "new_owner": short_address(data.get("new_owner")),
        "listing_count": len(listing_ids),
        "listing_ids": listing_ids,
        "expires_at": data.get("expires_at"),
        "description": _text_record(data.get("metadata"), "description"),
        "unsubscribe_url": unsubscribe_url,
        "site_url": base,
    }


@cache
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    loader = jinja2.PackageLoader("job_handlers", "templates")
    html = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    text = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True)
    return html, text


def render(context: dict[str, Any]) -> Rendered:
    html_env, text_env = _environments()
    event = context["event"]
    subject = text_env.get_template(f"{event}/subject.txt").render(context)
    return Rendered(
        subject=" ".join(subject.split()),
        html=html_env.get_template(f"{event}/body.html").render(context),
        text=text_env.get_template(f"{event}/body.txt").render(context),
    )


def warm_up() -> None:
    """Load the ENS normaliser and compile every template now, at start-up: done by the first
    send instead, it blocks the worker's event loop for most of a second."""
    normalise_name("warm-up.eth")
    html_env, text_env = _environments()
    for event in EVENTS:
        text_env.get_template(f"{event}/subject.txt")
        html_env.get_template(f"{event}/body.html")
        text_env.get_template(f"{event}/body.txt")
