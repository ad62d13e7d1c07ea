"""Worker settings: cron expressions are checked at start-up, and the defaults mean what the
README says they mean."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

import croniter
import pytest
from pydantic import ValidationError

from job_handlers.settings import WorkerSettings


def next_runs(cron: str, count: int = 3) -> list[datetime]:
    it = croniter.croniter(cron, datetime(2026, 1, 1, 12, 0, 3))
    return [it.get_next(datetime) for _ in range(count)]


def test_default_schedules() -> None:
    settings = WorkerSettings(database_url="postgresql://x")  # type: ignore[call-arg]
    rescue = next_runs(settings.rescue_cron)
    assert [(b - a).total_seconds() for a, b in pairwise(rescue)] == [10, 10]
    expire = next_runs(settings.batch_expire_cron)
    assert [(b - a).total_seconds() for a, b in pairwise(expire)] == [60, 60]


def test_a_bad_cron_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValidationError, match="is not a cron expression"):
        WorkerSettings(database_url="postgresql://x", rescue_cron="every 10 s")  # type: ignore[call-arg]
