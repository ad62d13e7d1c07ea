"""One process's access to the chain: web3 (async) over the guarded provider, web3's ENS
module, the registrar and wrapper contracts, JSON-RPC batching and the resolver cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ens import AsyncENS, abis
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContractFunction
from web3.exceptions import ContractLogicError

from job_handlers.breaker import CircuitBreaker
from job_handlers.chain import abis as our_abis
from job_handlers.chain.rpc import Acquire, GuardedProvider, GuardPolicy, RequestGuard, RpcStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChainConfig:
    rpc_url: str
    registry: str
    base_registrar: str
    name_wrapper: str
    universal_resolver: str
    batching: bool = True
    batch_size: int = 100
    timeout_s: float = 10.0
    resolver_cache_ttl_s: float = 3600.0
    policy: GuardPolicy = field(default_factory=GuardPolicy)
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0


class ResolverCache:
    """Name -> resolver address (None: no resolver), each entry good for `ttl_s`."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[str | None, float]] = {}

    def get(self, name: str) -> tuple[bool, str | None]:
        """(found, resolver)."""
        entry = self._entries.get(name)
        if entry is None or entry[1] <= time.monotonic():
            self._entries.pop(name, None)
            return False, None
        return True, entry[0]

    def put(self, name: str, resolver: str | None) -> None:
        if self.ttl_s > 0:
            self._entries[name] = (resolver, time.monotonic() + self.ttl_s)


Outcome = Any  # a call's decoded result, or the ContractLogicError it reverted with


class ChainClient:
    def __init__(self, config: ChainConfig, acquire: Acquire):
        self.config = config
        self.breaker = CircuitBreaker("eth-rpc", config.breaker_failures, config.breaker_reset_s)
        self.guard = RequestGuard(config.rpc_url, self.breaker, acquire, config.policy)
        self.w3 = AsyncWeb3(GuardedProvider(config.rpc_url, self.guard, config.timeout_s))
        # The validation middleware asks eth_chainId before every eth_call (a second request
        # per call); it checks transactions' chain ids, and we send none.
        self.w3.middleware_onion.remove("validation")
        self.ns = AsyncENS.from_web3(self.w3, addr=_address(config.registry))
        # web3 8 always calls the Universal Resolver at its mainnet address; point it at ours.
        self.universal_resolver = self.w3.eth.contract(
            address=_address(config.universal_resolver), abi=abis.UNIVERSAL_RESOLVER)
        self.ns._universal_resolver = self.universal_resolver
        self.resolver_abi = self.w3.eth.contract(abi=abis.PUBLIC_RESOLVER_2_EXTENDED)
        self.registrar = self.w3.eth.contract(address=_address(config.base_registrar),
                                              abi=our_abis.BASE_REGISTRAR)
        self.wrapper = self.w3.eth.contract(address=_address(config.name_wrapper),
                                            abi=our_abis.NAME_WRAPPER)
        self.resolvers = ResolverCache(config.resolver_cache_ttl_s)

    @property
    def stats(self) -> RpcStats:
        return self.guard.stats

    async def call_many(self, calls: Sequence[AsyncContractFunction]) -> list[Outcome]:
        """Each call's result, or the `ContractLogicError` it reverted with, in order.

        With batching, up to `batch_size` calls go in one JSON-RPC batch (one HTTP request).
        One revert fails a whole batch in web3, so a batch that reverts is asked again call
        by call to find which one did; callers avoid calls that are expected to revert.
        """
        if not self.config.batching or len(calls) <= 1:
            return [await self._one(c) for c in calls]
        results: list[Outcome] = []
        for start in range(0, len(calls), self.config.batch_size):
            chunk = calls[start:start + self.config.batch_size]
            try:
                async with self.w3.batch_requests() as batch:
                    for call in chunk:
                        batch.add(call)
                    results.extend(await batch.async_execute())
            except ContractLogicError as exc:
                log.info("a call of a batch of %d reverted (%s); asking them one by one",
                         len(chunk), exc)
                results.extend([await self._one(c) for c in chunk])
        return results

    async def _one(self, call: AsyncContractFunction) -> Outcome:
        try:
            return await call.call()
        except ContractLogicError as exc:
            return exc

    async def close(self) -> None:
        provider = self.w3.provider
        if isinstance(provider, GuardedProvider):
            await provider.disconnect()


def _address(value: str) -> ChecksumAddress:
    return AsyncWeb3.to_checksum_address(value)
