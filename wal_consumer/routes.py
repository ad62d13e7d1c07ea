"""The event -> job table of DESIGN.md, as pure functions.

One decoded ``Change`` in, a list of ``JobRequest`` out: no database, no clock, no I/O. Every
rule of the table is a function below; ``ROUTES`` maps (table, operation) to it. A change no rule
covers yields nothing. A change a rule cannot read (a value that does not parse, a missing column)
raises ``RouteError`` and is dead-lettered by the caller.

Values are compared, never assumed to have one type: ``price_wei`` may be varchar(78) or numeric,
timestamps may or may not carry a time zone (naive ones are read in the configured zone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from wal_consumer.changes import Change
from wal_consumer.errors import RouteError

# The task-name contract shared with job_handlers (DESIGN.md, "Public contracts").
EXPIRE_ORDERS = "expire-orders"
SYNC_ENS_DATA = "sync-ens-data"
UPDATE_OWNERSHIP = "update-ownership"
NOTIFY_WATCHERS = "notify-watchers"

QUEUES = {
    EXPIRE_ORDERS: "expiry",
    SYNC_ENS_DATA: "ens-sync",
    UPDATE_OWNERSHIP: "ownership",
    NOTIFY_WATCHERS: "notifications",
}
HIGH_PRIORITY = 10
NORMAL_PRIORITY = 0

LISTING_ACTIVE = b"active"
LISTING_SOLD = "sold"
OFFER_PENDING = b"pending"


@dataclass(frozen=True, slots=True)
class JobRequest:
    task_name: str
    args: dict[str, Any]
    scheduled_at: datetime | None = None
    priority: int = NORMAL_PRIORITY
    queue: str = field(default="")
    # procrastinate's queueing lock: at most one `todo` job per value (the writer skips a job
    # whose lock is already pending, see enqueue.py); and its lock: one such job runs at a time.
    queueing_lock: str | None = None
    lock: str | None = None

    def __post_init__(self) -> None:
        if not self.queue:
            object.__setattr__(self, "queue", QUEUES[self.task_name])


def wei(change: Change, which: str, column: str) -> str | None:
    """A wei amount as a canonical decimal string, whatever the column type."""
    value = change.value("new" if which == "new" else "old", column)
    if value is None:
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise RouteError(
            f"{change.info.qualified_name}.{column}: {value!r} is not a number of wei"
        ) from None
    if not amount.is_finite() or amount != amount.to_integral_value() or amount < 0:
        raise RouteError(
            f"{change.info.qualified_name}.{column}: {value!r} is not a whole, non-negative "
            "number of wei"
        )
    return str(int(amount))


def timestamp(change: Change, which: str, column: str) -> datetime | None:
    value = change.value("new" if which == "new" else "old", column)
    if value is not None and not isinstance(value, datetime):
        raise RouteError(
            f"{change.info.qualified_name}.{column}: expected a timestamp, got {value!r}"
        )
    return value


def identifier(change: Change, which: str, column: str) -> int:
    value = change.value("new" if which == "new" else "old", column)
    if isinstance(value, bool) or value is None:
        raise RouteError(f"{change.info.qualified_name}.{column}: expected an id, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RouteError(
            f"{change.info.qualified_name}.{column}: expected an id, got {value!r}"
        ) from None


def address(change: Change, which: str, column: str) -> str | None:
    value = change.value("new" if which == "new" else "old", column)
    return None if value is None else str(value).lower()


def sync_ens_data(ens_name_id: int, reason: str, event_key: str,
                  priority: int = HIGH_PRIORITY) -> JobRequest:
    """A sync of one name's ENS data; a name never has two pending (queueing lock per name)."""
    return JobRequest(
        SYNC_ENS_DATA,
        {"ens_name_id": ens_name_id, "reason": reason, "event_key": event_key},
        priority=priority,
        queueing_lock=f"{SYNC_ENS_DATA}:{ens_name_id}",
        lock=f"{SYNC_ENS_DATA}:{ens_name_id}",
    )


def _expire(kind: str, order_id: int, expires_at: datetime, event_key: str) -> JobRequest:
    return JobRequest(
        EXPIRE_ORDERS,
        {"type": kind, "id": order_id, "expires_at": expires_at.isoformat(),
         "event_key": event_key},
        scheduled_at=expires_at,
    )


def _notify(event: str, change: Change, **data: Any) -> JobRequest:
    return JobRequest(
        NOTIFY_WATCHERS,
        {"event": event, "event_key": change.event_key,
         "ens_name_id": identifier(change, "new", "ens_name_id"),
         "committed_at": change.commit_time.isoformat(), **data},
    )


def listing_inserted(change: Change) -> list[JobRequest]:
    if change.raw("new", "status") != LISTING_ACTIVE:
        return []
    listing_id = identifier(change, "new", "id")
    ens_name_id = identifier(change, "new", "ens_name_id")
    expires_at = timestamp(change, "new", "expires_at")
    jobs = [
        _notify(
            "new-listing", change, listing_id=listing_id,
            price_wei=wei(change, "new", "price_wei"),
            seller_address=address(change, "new", "seller_address"),
            expires_at=expires_at.isoformat() if expires_at else None,
        ),
        sync_ens_data(ens_name_id, "new-listing", change.event_key),
    ]
    if expires_at is not None:
        jobs.append(_expire("listing", listing_id, expires_at, change.event_key))
    return jobs


def listing_updated(change: Change) -> list[JobRequest]:
    old_status, new_status = change.raw("old", "status"), change.raw("new", "status")
    if old_status != new_status:
        if change.new_value("status") == LISTING_SOLD:
            return [
                _notify(
                    "sale", change, listing_id=identifier(change, "new", "id"),
                    price_wei=wei(change, "new", "price_wei"),
                    seller_address=address(change, "new", "seller_address"),
                )
            ]
        return []
    if new_status != LISTING_ACTIVE:
        return []
    jobs: list[JobRequest] = []
    if change.raw_differs("price_wei"):
        old_price, new_price = wei(change, "old", "price_wei"), wei(change, "new", "price_wei")
        if old_price != new_price:
            jobs.append(
                _notify(
                    "price-change", change, listing_id=identifier(change, "new", "id"),
                    previous_price_wei=old_price, price_wei=new_price,
                    seller_address=address(change, "new", "seller_address"),
                )
            )
    if change.raw_differs("expires_at"):
        old_expiry = timestamp(change, "old", "expires_at")
        new_expiry = timestamp(change, "new", "expires_at")
        if new_expiry is not None and new_expiry != old_expiry:
            jobs.append(
                _expire("listing", identifier(change, "new", "id"), new_expiry, change.event_key)
            )
    return jobs


def offer_inserted(change: Change) -> list[JobRequest]:
    if change.raw("new", "status") != OFFER_PENDING:
        return []
    offer_id = identifier(change, "new", "id")
    expires_at = timestamp(change, "new", "expires_at")
    jobs = [
        _notify(
            "new-offer", change, offer_id=offer_id,
            amount_wei=wei(change, "new", "offer_amount_wei"),
            buyer_address=address(change, "new", "buyer_address"),
            expires_at=expires_at.isoformat() if expires_at else None,
        )
    ]
    if expires_at is not None:
        jobs.append(_expire("offer", offer_id, expires_at, change.event_key))
    return jobs


def offer_updated(change: Change) -> list[JobRequest]:
    if change.raw("new", "status") != OFFER_PENDING or change.raw("old", "status") != OFFER_PENDING:
        return []
    if not change.raw_differs("expires_at"):
        return []
    old_expiry = timestamp(change, "old", "expires_at")
    new_expiry = timestamp(change, "new", "expires_at")
    if new_expiry is None or new_expiry == old_expiry:
        return []
    return [_expire("offer", identifier(change, "new", "id"), new_expiry, change.event_key)]


def ens_name_updated(change: Change) -> list[JobRequest]:
    if not change.raw_differs("owner_address"):
        return []
    previous, new = address(change, "old", "owner_address"), address(change, "new", "owner_address")
    if previous == new:
        return []
    return [
        JobRequest(
            UPDATE_OWNERSHIP,
            {"ens_name_id": identifier(change, "new", "id"), "previous_owner": previous,
             "new_owner": new, "event_key": change.event_key},
        )
    ]


Route = Callable[[Change], list[JobRequest]]
ROUTES: dict[tuple[str, str], Route] = {
    ("listings", "insert"): listing_inserted,
    ("listings", "update"): listing_updated,
    ("offers", "insert"): offer_inserted,
    ("offers", "update"): offer_updated,
    ("ens_names", "update"): ens_name_updated,
}


def route(change: Change) -> list[JobRequest]:
    """The jobs one change calls for; ``RouteError`` when the change cannot be read."""
    rule = ROUTES.get((change.table, change.operation))
    return rule(change) if rule is not None else []
