"""The consumer's exception hierarchy. Each error carries an exit code and a message a person on
call can act on: what is wrong and which setting or command fixes it."""

from __future__ import annotations


class WalConsumerError(Exception):
    """Base of every error the consumer raises on purpose."""

    exit_code = 1


class ConfigurationError(WalConsumerError):
    """A setting is missing or malformed."""

    exit_code = 2


class ServerNotReadyError(WalConsumerError):
    """The PostgreSQL server is not configured for logical replication (wal_level, slots...)."""

    exit_code = 3


class SetupMissingError(WalConsumerError):
    """`wal-consumer setup` has not been run (or not completely) on this database."""

    exit_code = 4


class SlotBusyError(WalConsumerError):
    """Another process is streaming from our slot."""

    exit_code = 5


class SlotLostError(WalConsumerError):
    """The slot is gone or invalidated; WAL it needed was removed."""

    exit_code = 6


class PermissionMissingError(WalConsumerError):
    """The connecting role lacks a right it needs (REPLICATION, SELECT...)."""

    exit_code = 7


class RouteError(WalConsumerError):
    """A change could not be turned into jobs (bad value, unexpected shape). It is dead-lettered."""
