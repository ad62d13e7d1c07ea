"""The notification events: which watchlist flag each one needs and who caused it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EventKind:
    name: str
    watch_flag: str | None  # watchlist column that must be true; None: not a watcher event
    actor_field: str | None  # argument naming the address that caused the event (not told)
    webhook_type: str  # Standard Webhooks' event type


EVENTS: dict[str, EventKind] = {
    kind.name: kind
    for kind in (
        EventKind("new-listing", "notify_on_listing", "seller_address", "listing.created"),
        EventKind("price-change", "notify_on_price_change", "seller_address",
                  "listing.price_changed"),
        EventKind("sale", "notify_on_sale", None, "listing.sold"),
        EventKind("new-offer", "notify_on_offer", "buyer_address", "offer.created"),
        EventKind("listing-cancelled-ownership-change", None, None,
                  "listing.cancelled_ownership_change"),
    )
}
WATCHER_EVENTS = sorted(name for name, kind in EVENTS.items() if kind.watch_flag)
