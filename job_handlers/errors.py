"""What can go wrong in a handler, split by what the worker should do about it."""

from __future__ import annotations


class JobHandlerError(Exception):
    """Base of the errors handlers raise on purpose."""


class PermanentJobError(JobHandlerError):
    """Retrying cannot help (bad arguments, a row that no longer exists): fail at once."""


class RetryableJobError(JobHandlerError):
    """A transient condition (a provider down, a lock): retry with backoff, and not before
    `retry_after_s` when the condition says how long it lasts (Retry-After, an open breaker)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s
