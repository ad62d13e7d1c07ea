from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from support import Server, consumer_env, create_database, drop_database, start_server

from wal_consumer.provision import setup
from wal_consumer.settings import ConsumerSettings


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    server = start_server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def database_url(pg_server: Server) -> Iterator[str]:
    """A fresh, empty database on the session's server (slots belong to a database)."""
    name = create_database(pg_server)
    try:
        yield pg_server.dsn(name)
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def settings(database_url: str) -> ConsumerSettings:
    return ConsumerSettings(database_url=database_url)  # type: ignore[call-arg]


@pytest.fixture
def ready_db(settings: ConsumerSettings) -> ConsumerSettings:
    """Marketplace dev tables + `wal-consumer setup` applied."""
    setup(settings, dev_schema=True)
    return settings


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return consumer_env(database_url)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
