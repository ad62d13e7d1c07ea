"""The retry policy every handler shares: exponential backoff with jitter and a cap.

procrastinate's own RetryStrategy has no jitter and no cap; this one asks the exception first:
a PermanentJobError (or invalid job arguments) fails the job at once, anything else retries
until the attempts are spent, and never sooner than a RetryableJobError's `retry_after_s`
(a provider's Retry-After, an open circuit breaker). Delay before retry n (n = 1, 2, ...):
a uniformly random value in [d/2, d] with d = min(cap, base * 2**(n-1)) — "equal jitter", so
retries of many jobs that failed together spread out but never come sooner than half the
nominal delay.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from pydantic import ValidationError

from job_handlers.errors import PermanentJobError, RetryableJobError

MAX_RETRY_AFTER_S = 24 * 3600.0  # a provider asking for more is not believed
NON_RETRYABLE: tuple[type[BaseException], ...] = (PermanentJobError, ValidationError)


class BackoffRetry(BaseRetryStrategy):
    def __init__(self, retries: int, base_s: float, cap_s: float,
                 rng: random.Random | None = None):
        self.retries = retries
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()

    def delay(self, retry_number: int) -> float:
        nominal = min(self.cap_s, self.base_s * 2 ** (retry_number - 1))
        return self.rng.uniform(nominal / 2, nominal)

    def get_retry_decision(self, *, exception: BaseException, job: Job
                           ) -> RetryDecision | None:
        if isinstance(exception, NON_RETRYABLE):
            return None
        attempts_done = job.attempts + 1  # job.attempts counts the retries already made
        if attempts_done > self.retries:
            return None
        delay = self.delay(attempts_done)
        retry_after = getattr(exception, "retry_after_s", None)
        if isinstance(exception, RetryableJobError) and retry_after is not None:
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER_S))
        return RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=delay))
