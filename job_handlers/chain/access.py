"""The chain client of one worker process, built on first use from the settings, with the
rate limit every process shares (`RateLimiter`, a row in PostgreSQL, through the app's pool)."""

from __future__ import annotations

from procrastinate import App

from job_handlers import db
from job_handlers.chain.client import ChainClient, ChainConfig
from job_handlers.chain.rpc import GuardPolicy
from job_handlers.ratelimit import RateLimiter
from job_handlers.settings import WorkerSettings

RATE_LIMIT_KEY = "eth-rpc"


def chain_config(settings: WorkerSettings) -> ChainConfig:
    if not settings.eth_rpc_url:
        raise ValueError("ETH_RPC_URL is not set: the ENS tasks need an Ethereum JSON-RPC "
                         "endpoint")
    return ChainConfig(
        rpc_url=settings.eth_rpc_url,
        registry=settings.ens_registry_address,
        base_registrar=settings.ens_base_registrar_address,
        name_wrapper=settings.ens_name_wrapper_address,
        universal_resolver=settings.ens_universal_resolver_address,
        batching=settings.ens_rpc_batching,
        batch_size=settings.ens_rpc_batch_size,
        timeout_s=settings.ens_rpc_timeout_s,
        resolver_cache_ttl_s=settings.ens_resolver_cache_ttl_s,
        policy=GuardPolicy(retries=settings.ens_rpc_retries,
                           retry_base_s=settings.ens_rpc_retry_base_s,
                           retry_cap_s=settings.ens_rpc_retry_cap_s,
                           tokens_per_call=settings.ens_rpc_rate_unit == "call"),
        breaker_failures=settings.ens_breaker_failures,
        breaker_reset_s=settings.ens_breaker_reset_s,
    )


class Chain:
    def __init__(self, settings: WorkerSettings):
        self.config = chain_config(settings)
        self.limiter = RateLimiter(RATE_LIMIT_KEY, settings.ens_rpc_rate_per_s,
                                   burst=settings.ens_rpc_burst,
                                   max_wait_s=settings.ens_rpc_max_wait_s)
        self._client: ChainClient | None = None

    def client(self, app: App) -> ChainClient:
        if self._client is None:
            async def acquire(tokens: int) -> float:
                async with db.pool(app).connection() as conn:
                    return await self.limiter.acquire(conn, tokens)

            self._client = ChainClient(self.config, acquire)
        return self._client
