"""The JSON-RPC provider every chain call goes through, and what guards it.

`GuardedProvider` is web3's `AsyncHTTPProvider` with one hook: each HTTP request, single or a
JSON-RPC batch, goes through `RequestGuard.send`. The guard
- asks the circuit breaker first (an open breaker raises `CircuitOpen`, a retryable job error);
- takes its share of the rate limit shared by every worker process (`RateLimiter`, a row in
  PostgreSQL): one token per HTTP request, or one per call in it (`JOB_ENS_RPC_RATE_UNIT`);
- retries timeouts, connection errors, HTTP 429/5xx and JSON-RPC "limit exceeded" answers with
  exponential backoff and jitter (honouring Retry-After), each attempt rate limited again;
- after the last attempt raises `RpcUnavailable` (retryable: the job is retried later).
web3's own retry is switched off so that every attempt is seen, limited and counted here.
A revert (`ContractLogicError`) is an answer, not a failure: the breaker counts it a success.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from web3 import AsyncHTTPProvider
from web3.types import RPCEndpoint, RPCResponse

from job_handlers.breaker import CircuitBreaker
from job_handlers.errors import RetryableJobError

log = logging.getLogger(__name__)
T = TypeVar("T")
Acquire = Callable[[int], Awaitable[float]]

# JSON-RPC error codes providers use for "slow down" (EIP-1474 -32005; some send 429).
RATE_LIMIT_CODES = {-32005, 429}


class RpcUnavailable(RetryableJobError):
    """The node did not answer usefully after every attempt."""


class TransientRpcError(Exception):
    """An answer that means "try again later" (a rate-limit error in the JSON-RPC body)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class RpcStats:
    """What this process sent: HTTP requests, JSON-RPC calls in them, failed attempts."""

    requests: int = 0
    calls: int = 0
    batches: int = 0
    failed_attempts: int = 0
    rate_limit_wait_s: float = 0.0


@dataclass(frozen=True)
class GuardPolicy:
    retries: int = 3
    retry_base_s: float = 0.5
    retry_cap_s: float = 8.0
    tokens_per_call: bool = False  # False: one token per HTTP request


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None)
    value = headers.get("Retry-After") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                            TimeoutError, TransientRpcError))


def _check_rate_limited(response: Any) -> None:
    answers = response if isinstance(response, list) else [response]
    for answer in answers:
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict) and error.get("code") in RATE_LIMIT_CODES:
            raise TransientRpcError(f"the node says slow down: {error.get('message')}")


class RequestGuard:
    def __init__(self, url: str, breaker: CircuitBreaker, acquire: Acquire,
                 policy: GuardPolicy, rng: random.Random | None = None):
        self.url = url
        self.breaker = breaker
        self.acquire = acquire
        self.policy = policy
        self.stats = RpcStats()
        self._rng = rng or random.Random()

    def _delay(self, attempt: int, exc: BaseException) -> float:
        nominal = min(self.policy.retry_cap_s, self.policy.retry_base_s * 2 ** (attempt - 1))
        delay = self._rng.uniform(nominal / 2, nominal)
        hinted = _retry_after(exc) or getattr(exc, "retry_after_s", None)
        return max(delay, min(float(hinted), self.policy.retry_cap_s)) if hinted else delay

    async def send(self, calls: int, what: str, request: Callable[[], Awaitable[T]]) -> T:
        attempts = self.policy.retries + 1
        for attempt in range(1, attempts + 1):
            self.breaker.allow()
            self.stats.rate_limit_wait_s += await self.acquire(
                calls if self.policy.tokens_per_call else 1)
            self.stats.requests += 1
            self.stats.calls += calls
            self.stats.batches += calls > 1
            try:
                response = await request()
                _check_rate_limited(response)
            except Exception as exc:
                if not _transient(exc):
                    raise
                self.stats.failed_attempts += 1
                self.breaker.record_failure(f"{type(exc).__name__}: {exc}")
                if attempt == attempts:
                    raise RpcUnavailable(
                        f"RPC node {self.url} failed {attempts} time(s) on {what}: "
                        f"{type(exc).__name__}: {exc or 'no detail'}") from exc
                delay = self._delay(attempt, exc)
                log.warning("RPC %s to %s failed (%s: %s); attempt %d of %d in %.2f s", what,
                            self.url, type(exc).__name__, exc, attempt + 1, attempts, delay)
                await asyncio.sleep(delay)
                continue
            self.breaker.record_success()
            return response
        raise AssertionError("unreachable")


class GuardedProvider(AsyncHTTPProvider):
    """web3's async HTTP provider whose every request goes through a `RequestGuard`."""

    def __init__(self, url: str, guard: RequestGuard, timeout_s: float):
        super().__init__(url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout_s)},
                         exception_retry_configuration=None)
        self.guard = guard

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        parent = super().make_request
        return await self.guard.send(1, str(method), lambda: parent(method, params))

    async def make_batch_request(self, batch_requests: list[tuple[RPCEndpoint, Any]]
                                 ) -> list[RPCResponse] | RPCResponse:
        parent = super().make_batch_request
        return await self.guard.send(len(batch_requests), f"batch of {len(batch_requests)}",
                                     lambda: parent(batch_requests))
