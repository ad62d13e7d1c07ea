"""A circuit breaker: stop calling a provider that keeps failing, and try again later.

Closed: calls go through; `failure_threshold` failures in a row open the breaker. Open: calls
are refused with `CircuitOpen` (a retryable job error that says when to come back) until
`reset_after_s` has passed. Half-open: one trial call goes through; its success closes the
breaker, its failure opens it again. One breaker per provider per worker process — each process
finds out for itself that a provider is down, after a handful of calls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from job_handlers import metrics
from job_handlers.errors import RetryableJobError

log = logging.getLogger(__name__)


class State(Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitOpen(RetryableJobError):
    def __init__(self, name: str, retry_after_s: float, last_error: str | None):
        cause = f" (last error: {last_error})" if last_error else ""
        super().__init__(f"circuit breaker {name!r} is open after repeated failures{cause}; "
                         f"not calling it for another {retry_after_s:.1f} s",
                         retry_after_s=retry_after_s)
        self.name = name


class CircuitBreaker:
    def __init__(self, name: str, failure_threshold: int = 5, reset_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError(f"breaker {name!r}: failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self._last_error: str | None = None
        self._set(State.CLOSED)

    @property
    def state(self) -> State:
        return self._state

    def _set(self, state: State) -> None:
        self._state = state
        metrics.BREAKER_STATE.labels(self.name).set(state.value)

    def allow(self) -> None:
        """Raise `CircuitOpen` unless a call may be made now."""
        if self._state is State.CLOSED:
            return
        remaining = self._opened_at + self.reset_after_s - self._clock()
        if self._state is State.OPEN and remaining <= 0:
            self._set(State.HALF_OPEN)
            self._trial_running = False
        if self._state is State.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            log.info("breaker %s half-open: trying one call", self.name)
            return
        raise CircuitOpen(self.name, max(remaining, 1.0), self._last_error)

    def record_success(self) -> None:
        if self._state is not State.CLOSED:
            log.info("breaker %s closed: the trial call succeeded", self.name)
        self._failures = 0
        self._trial_running = False
        self._set(State.CLOSED)

    def record_failure(self, error: BaseException | str | None = None) -> None:
        self._failures += 1
        if error is not None:
            self._last_error = str(error)[:300]
        if self._state is State.HALF_OPEN or self._failures >= self.failure_threshold:
            if self._state is not State.OPEN:
                log.warning("breaker %s open for %.0f s after %d failure(s): %s", self.name,
                            self.reset_after_s, self._failures, self._last_error)
            self._opened_at = self._clock()
            self._trial_running = False
            self._set(State.OPEN)
