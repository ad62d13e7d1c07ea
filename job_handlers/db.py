"""Database access shared by the handlers: the app's pool and what the marketplace has."""

from __future__ import annotations

from typing import Any

import psycopg
from procrastinate import App
from psycopg_pool import AsyncConnectionPool

_columns: dict[tuple[str, str], bool] = {}


def pool(app: App) -> AsyncConnectionPool:
    """The connection pool of procrastinate's connector: one pool per worker process."""
    connector: Any = app.connector
    result: AsyncConnectionPool = connector.pool
    return result


async def has_column(conn: psycopg.AsyncConnection[Any], table: str, column: str) -> bool:
    """Marketplace deployments differ (offers may lack updated_at): look once, remember."""
    key = (table, column)
    if key not in _columns:
        cur = await conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name = %s AND column_name = %s", [table, column])
        _columns[key] = await cur.fetchone() is not None
    return _columns[key]
