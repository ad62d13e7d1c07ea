"""The shared retry policy: exponential backoff with equal jitter and a cap; permanent errors
and spent attempts fail at once."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from procrastinate.jobs import Job
from pydantic import BaseModel, ValidationError

from job_handlers.errors import PermanentJobError
from job_handlers.retry import BackoffRetry


def job(attempts: int) -> Job:
    return Job(id=1, queue="expiry", lock=None, queueing_lock=None, task_name="expire-orders",
               attempts=attempts, task_kwargs={})


@pytest.mark.parametrize("retry_number, low, high", [
    (1, 30, 60), (2, 60, 120), (3, 120, 240), (7, 1800, 3600), (20, 1800, 3600),
])
def test_delay_doubles_with_jitter_and_is_capped(retry_number: int, low: float,
                                                 high: float) -> None:
    policy = BackoffRetry(retries=3, base_s=60, cap_s=3600, rng=random.Random(1))
    delays = [policy.delay(retry_number) for _ in range(500)]
    assert low <= min(delays) and max(delays) <= high
    assert max(delays) - min(delays) > (high - low) / 2  # really jittered


def test_three_retries_then_fail() -> None:
    policy = BackoffRetry(retries=3, base_s=60, cap_s=3600)
    now = datetime.now(UTC)
    for attempts in range(3):
        decision = policy.get_retry_decision(exception=TimeoutError("slow"), job=job(attempts))
        assert decision is not None and decision.retry_at is not None
        wait = (decision.retry_at - now).total_seconds()
        assert 30 * 2**attempts - 1 <= wait <= 60 * 2**attempts + 1
    assert policy.get_retry_decision(exception=TimeoutError("slow"), job=job(3)) is None


class Args(BaseModel):
    id: int


def test_permanent_errors_and_bad_arguments_are_not_retried() -> None:
    policy = BackoffRetry(retries=3, base_s=60, cap_s=3600)
    assert policy.get_retry_decision(exception=PermanentJobError("gone"), job=job(0)) is None
    with pytest.raises(ValidationError) as info:
        Args.model_validate({"id": "x"})
    assert policy.get_retry_decision(exception=info.value, job=job(0)) is None
    assert policy.get_retry_decision(exception=ConnectionError("lost"), job=job(0)) is not None
