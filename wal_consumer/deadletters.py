"""Changes the router could not handle: list them, and replay them through the routes.

A dead letter keeps the raw text of both rows, the column types and the WAL position, so a
replay (after fixing the data, the schema or the code) yields the same event keys and the same
jobs the stream would have made. A replay writes the jobs and marks the letter in one
transaction, so running it twice enqueues nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row

from wal_consumer.changes import Change, RelationInfo, raw_from_json
from wal_consumer.enqueue import BatchWriter
from wal_consumer.errors import RouteError
from wal_consumer.protocol import Column, Relation, parse_lsn
from wal_consumer.routes import route


@dataclass(frozen=True, slots=True)
class ReplayResult:
    letter_id: int
    jobs: int
    error: str | None


def list_letters(
    conn: psycopg.Connection, *, include_replayed: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, event_key, commit_lsn::text AS commit_lsn, schema_name, table_name,"
            " operation, error, created_at, replayed_at, replay_error, old_values, new_values"
            " FROM grails_workers.dead_letters WHERE %s OR replayed_at IS NULL"
            " ORDER BY id LIMIT %s",
            [include_replayed, limit],
        )
        return cur.fetchall()


def _change_from_row(
    row: dict[str, Any], naive_tz: ZoneInfo, overrides: dict[str, str | None]
) -> Change:
    columns = tuple(
        Column(0, name, int(oid), -1) for name, oid in row["column_types"].items()
    )
    relation = Relation(0, row["schema_name"], row["table_name"], "f", columns)

    unknown = set(overrides) - {col.name for col in columns}
    if unknown:
        raise RouteError(
            f"cannot set {', '.join(sorted(unknown))}: {row['schema_name']}.{row['table_name']}"
            f" had columns {', '.join(col.name for col in columns)}"
        )

    def tuple_of(values: dict[str, Any] | None, edit: bool) -> tuple[Any, ...] | None:
        if values is None:
            return None
        merged = {**values, **overrides} if edit else values
        return tuple(raw_from_json(merged.get(col.name)) for col in columns)

    commit_time: datetime = row["commit_time"]
    return Change(
        row["operation"], RelationInfo.build(relation), tuple_of(row["new_values"], True),
        tuple_of(row["old_values"], False), parse_lsn(row["commit_lsn"]), row["ordinal"],
        commit_time, naive_tz,
    )


def replay(
    conn: psycopg.Connection, slot_name: str, letter_ids: list[int] | None, naive_tz: ZoneInfo,
    overrides: dict[str, str | None] | None = None,
) -> list[ReplayResult]:
    """Route each pending letter again; enqueue its jobs and mark it replayed, atomically.

    ``overrides`` replaces values of the new row (text, as PostgreSQL would print them; None
    for NULL) before routing: how a person repairs a value that can never parse.
    """
    writer = BatchWriter(conn, slot_name)
    results = []
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT id, commit_lsn::text AS commit_lsn, ordinal, commit_time, schema_name,"
            " table_name, operation, column_types, old_values, new_values"
            " FROM grails_workers.dead_letters"
            " WHERE replayed_at IS NULL AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]))"
            " ORDER BY id",
            [letter_ids, letter_ids],
        )
        rows = cur.fetchall()
    conn.commit()
    for row in rows:
        try:
            jobs = route(_change_from_row(row, naive_tz, overrides or {}))
        except RouteError as exc:
            conn.execute(
                "UPDATE grails_workers.dead_letters SET replay_error = %s WHERE id = %s",
                [str(exc), row["id"]],
            )  # the letter stays pending, with what went wrong this time
            conn.commit()
            results.append(ReplayResult(row["id"], 0, str(exc)))
            continue
        marked = conn.execute(
            "UPDATE grails_workers.dead_letters SET replayed_at = now(), replay_error = NULL"
            " WHERE id = %s AND replayed_at IS NULL RETURNING id",
            [row["id"]],
        ).fetchone()
        written = writer.jobs_written
        if marked:
            writer.write_jobs(jobs)  # a sync whose name has one pending is skipped
        conn.commit()
        results.append(ReplayResult(row["id"], writer.jobs_written - written, None))
    return results
