"""The consumer's settings, read once from the environment at start-up and passed down."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TABLE = re.compile(r"^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")
DEFAULT_TABLES = ("public.listings", "public.offers", "public.ens_names")


def split_table(qualified: str) -> tuple[str, str]:
    """'public.listings' -> ('public', 'listings')."""
    schema, _, table = qualified.rpartition(".")
    return schema or "public", table


class ConsumerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAL_", extra="ignore")

    database_url: str = Field(
        validation_alias=AliasChoices("DATABASE_URL", "WAL_DATABASE_URL"),
        description="libpq URI of the marketplace database",
    )
    slot: str = Field("grails_workers", description="logical replication slot name")
    publication: str = Field("grails_workers", description="publication name")
    tables: Annotated[tuple[str, ...], NoDecode] = Field(
        DEFAULT_TABLES, description="published tables, comma separated, schema-qualified"
    )
    batch_max_jobs: int = Field(5000, ge=1, description="jobs per database transaction, at most")
    batch_max_delay_ms: int = Field(
        100, ge=0, description="how long finished source transactions may wait to be committed"
    )
    write_chunk_jobs: int = Field(1000, ge=1, description="jobs per INSERT statement")
    status_interval_s: float = Field(5.0, gt=0, description="standby status update period")
    reconnect_max_delay_s: float = Field(30.0, gt=0, description="backoff cap between reconnects")
    naive_timestamp_timezone: str = Field(
        "UTC",
        validation_alias=AliasChoices("NAIVE_TIMESTAMP_TIMEZONE", "WAL_NAIVE_TIMESTAMP_TIMEZONE"),
        description="time zone of `timestamp without time zone` columns",
    )
    log_level: str = Field(
        "INFO", validation_alias=AliasChoices("LOG_LEVEL", "WAL_LOG_LEVEL")
    )
    metrics_port: int = Field(
        0, ge=0, le=65535,
        description="port of the /metrics, /healthz and /readyz server (0: no server)")
    metrics_host: str = Field("0.0.0.0", description="address that server listens on")
    metrics_db_interval_s: float = Field(
        5.0, ge=0, description="slot and dead-letter figures are read from the database at "
        "most this often (at scrape time)")

    @field_validator("slot", "publication")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"{value!r} is not a plain lower-case identifier ([a-z_][a-z0-9_]*, <= 63 chars)"
            )
        return value

    @field_validator("tables", mode="before")
    @classmethod
    def _tables(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        tables = []
        for item in items:
            name = str(item).strip()
            if not name:
                continue
            if not _TABLE.match(name):
                raise ValueError(f"{name!r} is not a table name like public.listings")
            tables.append(name if "." in name else f"public.{name}")
        if not tables:
            raise ValueError("at least one table must be published")
        return tuple(tables)
