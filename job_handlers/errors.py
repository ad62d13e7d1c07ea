"""What can go wrong in a handler, split by what the worker should do about it."""

from __future__ import annotations


class JobHandlerError(Exception):
    """Base of the errors handlers raise on purpose."""


class PermanentJobError(JobHandlerError):
    """Retrying cannot help (bad arguments, a row that no longer exists): fail at once."""


class RetryableJobError(JobHandlerError):
    """A transient condition (a provider down, a lock): retry with backoff."""
