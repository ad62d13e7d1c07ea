"""The route table as a pure function: changes built by hand, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from wal_consumer.changes import Change, RelationInfo
from wal_consumer.errors import RouteError
from wal_consumer.protocol import UNCHANGED_TOAST, Column, Relation
from wal_consumer.routes import HIGH_PRIORITY, route

INT4, VARCHAR, NUMERIC, TIMESTAMP, TIMESTAMPTZ, JSONB = 23, 1043, 1700, 1114, 1184, 3802
COMMIT = datetime(2026, 1, 1, tzinfo=UTC)

LISTING_COLUMNS = [("id", INT4), ("ens_name_id", INT4), ("seller_address", VARCHAR),
                   ("price_wei", VARCHAR), ("status", VARCHAR), ("expires_at", TIMESTAMP),
                   ("order_data", JSONB)]
OFFER_COLUMNS = [("id", INT4), ("ens_name_id", INT4), ("buyer_address", VARCHAR),
                 ("offer_amount_wei", VARCHAR), ("status", VARCHAR), ("expires_at", TIMESTAMP)]
NAME_COLUMNS = [("id", INT4), ("name", VARCHAR), ("owner_address", VARCHAR)]


def relation(table: str, columns: list[tuple[str, int]]) -> RelationInfo:
    cols = tuple(Column(0, name, oid, -1) for name, oid in columns)
    return RelationInfo.build(Relation(16384, "public", table, "f", cols))


def encode(value: Any) -> Any:
    if value is None or value is UNCHANGED_TOAST:
        return value
    return str(value).encode()


def change(table: str, columns: list[tuple[str, int]], operation: str,
           new: dict[str, Any] | None, old: dict[str, Any] | None = None,
           tz: str = "UTC") -> Change:
    info = relation(table, columns)

    def tup(row: dict[str, Any] | None) -> Any:
        return None if row is None else tuple(encode(row.get(n)) for n, _ in columns)

    return Change(operation, info, tup(new), tup(old), 0x16B374D848, 3,  # type: ignore[arg-type]
                  COMMIT, ZoneInfo(tz))


LISTING = {"id": 7, "ens_name_id": 3, "seller_address": "0xABC", "price_wei": "1000",
           "status": "active", "expires_at": "2030-01-02 03:04:05.5", "order_data": "{}"}
OFFER = {"id": 9, "ens_name_id": 3, "buyer_address": "0xDEF", "offer_amount_wei": "5",
         "status": "pending", "expires_at": "2030-01-02 00:00:00"}


def listing_update(**new: Any) -> Change:
    return change("listings", LISTING_COLUMNS, "update", {**LISTING, **new}, LISTING)


def test_event_key_is_commit_lsn_and_ordinal() -> None:
    assert listing_update().event_key == "16/B374D848:3"


def test_new_active_listing() -> None:
    jobs = route(change("listings", LISTING_COLUMNS, "insert", LISTING))
    assert [j.task_name for j in jobs] == ["notify-watchers", "sync-ens-data", "expire-orders"]
    notify, sync, expire = jobs
    assert notify.queue == "notifications"
    assert notify.args == {
        "event": "new-listing", "event_key": "16/B374D848:3", "ens_name_id": 3, "listing_id": 7,
        "price_wei": "1000", "seller_address": "0xabc",
        "expires_at": "2030-01-02T03:04:05.500000+00:00",
        "committed_at": notify.args["committed_at"],
    }
    assert datetime.fromisoformat(notify.args["committed_at"]).tzinfo is not None
    assert sync.priority == HIGH_PRIORITY and sync.queue == "ens-sync"
    assert sync.args == {"ens_name_id": 3, "reason": "new-listing", "event_key": "16/B374D848:3"}
    assert expire.queue == "expiry"
    assert expire.scheduled_at == datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert expire.args["type"] == "listing" and expire.args["id"] == 7


def test_naive_timestamps_are_read_in_the_configured_zone() -> None:
    jobs = route(change("listings", LISTING_COLUMNS, "insert", LISTING, tz="Europe/Paris"))
    assert jobs[2].scheduled_at == datetime(2030, 1, 2, 2, 4, 5, 500000, tzinfo=UTC)


def test_timestamptz_and_numeric_columns() -> None:
    columns = [(n, {"price_wei": NUMERIC, "expires_at": TIMESTAMPTZ}.get(n, t))
               for n, t in LISTING_COLUMNS]
    row = {**LISTING, "price_wei": "1000.000", "expires_at": "2030-01-02 03:04:05+05:30"}
    jobs = route(change("listings", columns, "insert", row))
    assert jobs[0].args["price_wei"] == "1000"
    assert jobs[2].scheduled_at == datetime(2030, 1, 2, 3, 4, 5,
                                            tzinfo=timezone(timedelta(hours=5, minutes=30)))
    same_value = change("listings", columns, "update", {**row, "price_wei": "1000"}, row)
    assert route(same_value) == []


def test_listing_without_expiry_and_inactive_listing() -> None:
    no_expiry = route(change("listings", LISTING_COLUMNS, "insert", {**LISTING,
                                                                    "expires_at": None}))
    assert [j.task_name for j in no_expiry] == ["notify-watchers", "sync-ens-data"]
    assert route(change("listings", LISTING_COLUMNS, "insert", {**LISTING, "status": "sold"})) == []


@pytest.mark.parametrize("update, expected", [
    ({"price_wei": "2000"}, [("notify-watchers", "price-change")]),
    ({"price_wei": "1000"}, []),
    ({"expires_at": "2031-01-01 00:00:00"}, [("expire-orders", None)]),
    ({"expires_at": None}, []),
    ({"status": "sold"}, [("notify-watchers", "sale")]),
    ({"status": "sold", "price_wei": "5"}, [("notify-watchers", "sale")]),
    ({"status": "cancelled"}, []),
    ({"status": "expired"}, []),
    ({"order_data": '{"a": 1}'}, []),
    ({"price_wei": "3", "expires_at": "2031-01-01 00:00:00"},
     [("notify-watchers", "price-change"), ("expire-orders", None)]),
])
def test_listing_updates(update: dict[str, Any], expected: list[tuple[str, str | None]]) -> None:
    jobs = route(listing_update(**update))
    assert [(j.task_name, j.args.get("event")) for j in jobs] == expected


def test_price_change_args() -> None:
    (job,) = route(listing_update(price_wei="2500"))
    assert job.args["previous_price_wei"] == "1000" and job.args["price_wei"] == "2500"
    assert job.args["listing_id"] == 7 and job.args["ens_name_id"] == 3


def test_sold_listing_that_was_not_active_still_notifies_sale() -> None:
    old = {**LISTING, "status": "pending"}
    jobs = route(change("listings", LISTING_COLUMNS, "update", {**old, "status": "sold"}, old))
    assert [j.args["event"] for j in jobs] == ["sale"]


def test_changes_of_a_sold_listing_make_nothing() -> None:
    old = {**LISTING, "status": "sold"}
    updated = change("listings", LISTING_COLUMNS, "update", {**old, "price_wei": "1"}, old)
    assert route(updated) == []


def test_offers() -> None:
    jobs = route(change("offers", OFFER_COLUMNS, "insert", OFFER))
    assert [(j.task_name, j.args.get("event")) for j in jobs] == [
        ("notify-watchers", "new-offer"), ("expire-orders", None)]
    assert jobs[0].args["amount_wei"] == "5" and jobs[0].args["buyer_address"] == "0xdef"
    assert jobs[1].args["type"] == "offer" and jobs[1].args["id"] == 9
    assert route(change("offers", OFFER_COLUMNS, "insert", {**OFFER, "status": "accepted"})) == []
    moved = {**OFFER, "expires_at": "2030-02-01 00:00:00"}
    (job,) = route(change("offers", OFFER_COLUMNS, "update", moved, OFFER))
    assert job.scheduled_at == datetime(2030, 2, 1, tzinfo=UTC)
    assert route(change("offers", OFFER_COLUMNS, "update", {**OFFER, "offer_amount_wei": "6"},
                        OFFER)) == []
    accepted = {**moved, "status": "accepted"}
    assert route(change("offers", OFFER_COLUMNS, "update", accepted, OFFER)) == []


@pytest.mark.parametrize("old_owner, new_owner, jobs", [
    ("0xAAA", "0xaaa", 0), ("0xaaa", "0xbbb", 1), ("0xaaa", None, 1), (None, "0xbbb", 1),
])
def test_owner_changes(old_owner: str | None, new_owner: str | None, jobs: int) -> None:
    old = {"id": 3, "name": "a.eth", "owner_address": old_owner}
    result = route(change("ens_names", NAME_COLUMNS, "update",
                          {**old, "owner_address": new_owner}, old))
    assert len(result) == jobs
    if jobs:
        assert result[0].task_name == "update-ownership" and result[0].queue == "ownership"
        assert result[0].args["previous_owner"] == (old_owner.lower() if old_owner else None)
        assert result[0].args["new_owner"] == (new_owner.lower() if new_owner else None)


@pytest.mark.parametrize("table, columns, operation, row", [
    ("ens_names", NAME_COLUMNS, "insert", {"id": 1, "name": "a.eth"}),
    ("listings", LISTING_COLUMNS, "delete", None),
    ("watchlist", [("id", INT4)], "insert", {"id": 1}),
])
def test_changes_outside_the_table(table: str, columns: list[tuple[str, int]], operation: str,
                                   row: dict[str, Any] | None) -> None:
    assert route(change(table, columns, operation, row, {"id": 1})) == []


@pytest.mark.parametrize("row, message", [
    ({**LISTING, "price_wei": "12abc"}, "price_wei: '12abc' is not a number of wei"),
    ({**LISTING, "price_wei": "1.5"}, "not a whole, non-negative number"),
    ({**LISTING, "price_wei": "-1"}, "not a whole, non-negative number"),
    ({**LISTING, "expires_at": "infinity"}, "expires_at: cannot read b'infinity'"),
    ({**LISTING, "ens_name_id": None}, "ens_name_id: expected an id"),
])
def test_unreadable_values_raise_route_error(row: dict[str, Any], message: str) -> None:
    with pytest.raises(RouteError, match=r"public\.listings") as info:
        route(change("listings", LISTING_COLUMNS, "insert", row))
    assert message in str(info.value)


def test_missing_column_names_the_columns() -> None:
    columns = [c for c in OFFER_COLUMNS if c[0] != "offer_amount_wei"]
    with pytest.raises(RouteError, match="has no column 'offer_amount_wei'"):
        route(change("offers", columns, "insert", OFFER))


def test_update_without_old_row_names_the_fix() -> None:
    c = change("listings", LISTING_COLUMNS, "update", LISTING, None)
    with pytest.raises(RouteError, match="REPLICA IDENTITY FULL"):
        route(c)


def test_unchanged_toast_without_old_value_is_an_error_not_null() -> None:
    row = {**LISTING, "price_wei": UNCHANGED_TOAST}
    old = {**LISTING, "price_wei": UNCHANGED_TOAST}
    c = change("listings", LISTING_COLUMNS, "update", row, old)
    with pytest.raises(RouteError, match="unchanged TOAST"):
        c.new_value("price_wei")
