"""Decoded row changes as the router sees them.

A ``RelationInfo`` is built once per Relation message: column positions and one psycopg text
loader per column, chosen by type OID (psycopg's own adapters map: numeric -> Decimal,
timestamptz -> datetime, jsonb -> dict...). A ``Change`` keeps the raw text of its tuples and
converts a column only when a route asks for it, so changes no route cares about cost almost
nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Literal

from psycopg.abc import AdaptContext
from psycopg.adapt import Transformer
from psycopg.pq import Format

from wal_consumer.errors import RouteError
from wal_consumer.protocol import (
    UNCHANGED_TOAST,
    BinaryValue,
    Relation,
    TupleData,
    TupleValue,
    format_lsn,
)

Operation = Literal["insert", "update", "delete"]
Loader = Callable[[bytes], Any]


def make_loaders(relation: Relation, context: AdaptContext | None = None) -> tuple[Loader, ...]:
    tx = Transformer(context)
    return tuple(tx.get_loader(col.type_oid, Format.TEXT).load for col in relation.columns)


@dataclass(slots=True)
class RelationInfo:
    relation: Relation
    index: dict[str, int]
    loaders: tuple[Loader, ...]
    type_names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def build(cls, relation: Relation, type_names: dict[int, str] | None = None) -> RelationInfo:
        index = {col.name: i for i, col in enumerate(relation.columns)}
        return cls(relation, index, make_loaders(relation), dict(type_names or {}))

    @property
    def schema(self) -> str:
        return self.relation.namespace

    @property
    def table(self) -> str:
        return self.relation.name

    @property
    def qualified_name(self) -> str:
        return f"{self.relation.namespace}.{self.relation.name}"

    def position(self, column: str) -> int:
        try:
            return self.index[column]
        except KeyError:
            raise RouteError(
                f"{self.qualified_name} has no column {column!r} "
                f"(columns: {', '.join(self.index)})"
            ) from None

    def column_types(self) -> dict[str, int]:
        return {col.name: col.type_oid for col in self.relation.columns}


def raw_to_json(value: TupleValue) -> Any:
    """How a raw tuple value is kept in the dead-letter table (JSON)."""
    if value is None:
        return None
    if value is UNCHANGED_TOAST:
        return {"unchanged_toast": True}
    if isinstance(value, BinaryValue):
        return {"binary_base64": base64.b64encode(value.data).decode()}
    assert isinstance(value, bytes)
    return value.decode("utf-8", errors="replace")


def raw_from_json(value: Any) -> TupleValue:
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("unchanged_toast"):
            return UNCHANGED_TOAST
        return BinaryValue(base64.b64decode(value["binary_base64"]))
    return str(value).encode()


@dataclass(slots=True)
class Change:
    """One row change of a committed transaction, identified by its WAL position."""

    operation: Operation
    info: RelationInfo
    new: TupleData | None
    old: TupleData | None
    commit_lsn: int
    ordinal: int
    commit_time: datetime
    naive_tz: tzinfo

    @property
    def table(self) -> str:
        return self.info.table

    @property
    def event_key(self) -> str:
        return f"{format_lsn(self.commit_lsn)}:{self.ordinal}"

    def _tuple(self, which: Literal["new", "old"]) -> TupleData:
        data = self.new if which == "new" else self.old
        if data is None:
            if which == "old":
                raise RouteError(
                    f"{self.operation} on {self.info.qualified_name} carries no old row: the "
                    "table's REPLICA IDENTITY is not FULL (run `wal-consumer setup`, or "
                    f"ALTER TABLE {self.info.qualified_name} REPLICA IDENTITY FULL)"
                )
            raise RouteError(f"{self.operation} on {self.info.qualified_name} has no new row")
        return data

    def raw(self, which: Literal["new", "old"], column: str) -> TupleValue:
        data = self._tuple(which)
        pos = self.info.position(column)
        if pos >= len(data):
            raise RouteError(
                f"{self.info.qualified_name}.{column}: tuple has {len(data)} values, "
                f"relation has {len(self.info.index)} columns"
            )
        return data[pos]

    def value(self, which: Literal["new", "old"], column: str) -> Any:
        raw = self.raw(which, column)
        if raw is None:
            return None
        if raw is UNCHANGED_TOAST:
            raise RouteError(
                f"{self.info.qualified_name}.{column}: unchanged TOAST value with no old value "
                "to take it from (REPLICA IDENTITY FULL is needed)"
            )
        if isinstance(raw, BinaryValue):
            raise RouteError(f"{self.info.qualified_name}.{column}: unexpected binary value")
        assert isinstance(raw, bytes)
        try:
            value = self.info.loaders[self.info.position(column)](raw)
        except Exception as exc:
            raise RouteError(
                f"{self.info.qualified_name}.{column}: cannot read {raw[:80]!r}: {exc}"
            ) from exc
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=self.naive_tz)
        return value

    def new_value(self, column: str) -> Any:
        return self.value("new", column)

    def old_value(self, column: str) -> Any:
        return self.value("old", column)

    def raw_differs(self, column: str) -> bool:
        """Cheap test: the text of ``column`` differs between old and new rows."""
        return self.raw("old", column) != self.raw("new", column)

    def raw_json(self, which: Literal["new", "old"]) -> dict[str, Any] | None:
        data = self.new if which == "new" else self.old
        if data is None:
            return None
        names = list(self.info.index)
        return {
            (names[i] if i < len(names) else f"#{i}"): raw_to_json(v) for i, v in enumerate(data)
        }
