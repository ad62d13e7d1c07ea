"""A name's resolver, ETH address and text records, read through web3's ENS module.

The ENS module resolves everything through the Universal Resolver (ENSIP-10): `findResolver`
for the resolver, `resolve(name, calldata)` for each record. Without batching those are its
own calls (`resolver`, `address`, `get_text`), one HTTP request each. With batching the same
`resolve` calls (same contract, same calldata) and the registrar's `nameExpires` go in one
JSON-RPC batch; the resolver address comes from the cache when it is fresh (`resolve` returns
the resolver it used, which refreshes the cache).

What a name can be: `synced`; `no-resolver`; `expired` or `unregistered` (a .eth second-level
name whose registration has lapsed, grace period included, or never was); `invalid-name` (it
cannot be normalised); `unresolvable` (the Universal Resolver reverts for it, e.g. an
off-chain resolver). All are final answers, recorded and not retried; only a node that does
not answer makes the job retry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ens.exceptions import ResolverNotFound
from eth_utils.address import is_same_address
from web3.exceptions import ContractLogicError

from job_handlers.chain import names
from job_handlers.chain.client import ChainClient

TEXT_KEYS = ("avatar", "description", "url", "com.twitter", "com.github", "email")
ZERO = "0x0000000000000000000000000000000000000000"

SYNCED = "synced"
NO_RESOLVER = "no-resolver"
EXPIRED = "expired"
UNREGISTERED = "unregistered"
INVALID_NAME = "invalid-name"
UNRESOLVABLE = "unresolvable"


@dataclass
class NameRecords:
    name: str
    outcome: str
    resolver: str | None = None
    address: str | None = None
    texts: dict[str, str | None] = field(default_factory=dict)
    detail: str = ""

    def metadata(self) -> dict[str, Any]:
        """What goes into ens_names.metadata: every key, null when unset (clears old values)."""
        data: dict[str, Any] = {key: self.texts.get(key) for key in TEXT_KEYS}
        data["eth_address"] = self.address
        return data


def _lower(address: str | None) -> str | None:
    return None if address is None or is_same_address(address, ZERO) else address.lower()


async def _resolver(client: ChainClient, normal: str, trust_negative: bool) -> str | None:
    found, resolver = client.resolvers.get(normal)
    if found and (resolver is not None or trust_negative):
        return resolver
    contract = await client.ns.resolver(normal)
    resolver = _lower(contract.address) if contract is not None else None
    client.resolvers.put(normal, resolver)
    return resolver


def _lapsed(expires: Any, name: str) -> NameRecords | None:
    if isinstance(expires, ContractLogicError) or expires is None:
        return None
    if int(expires) == 0:
        return NameRecords(name, UNREGISTERED, detail="the registrar has no registration")
    if int(expires) <= time.time():
        return NameRecords(name, EXPIRED, detail=f"registration expired at {int(expires)}")
    return None


async def fetch(client: ChainClient, name: str, trust_negative_cache: bool = True
                ) -> NameRecords:
    try:
        normal = names.normalize(name)
    except names.InvalidName as exc:
        return NameRecords(name, INVALID_NAME, detail=str(exc))
    label = names.eth_second_level_label(normal)
    resolver = await _resolver(client, normal, trust_negative_cache)
    expiry_call = ([client.registrar.functions.nameExpires(names.token_id(label))]
                   if label is not None else [])
    if resolver is None:
        expiry = await client.call_many(expiry_call)
        lapsed = _lapsed(expiry[0], name) if expiry else None
        return lapsed or NameRecords(name, NO_RESOLVER, detail="no resolver is set")
    if client.config.batching:
        return await _fetch_batched(client, name, normal, resolver, expiry_call)
    lapsed = _lapsed((await client.call_many(expiry_call))[0], name) if expiry_call else None
    return lapsed or await _fetch_one_by_one(client, name, normal, resolver)


async def _fetch_one_by_one(client: ChainClient, name: str, normal: str, resolver: str
                            ) -> NameRecords:
    """Through the ENS module's own methods, one request each."""
    try:
        address = await client.ns.address(normal)
        texts = {key: await client.ns.get_text(normal, key) or None for key in TEXT_KEYS}
    except ResolverNotFound as exc:
        return NameRecords(name, UNRESOLVABLE, resolver=resolver, detail=str(exc))
    return NameRecords(name, SYNCED, resolver=resolver, address=_lower(address), texts=texts)


async def _fetch_batched(client: ChainClient, name: str, normal: str, resolver: str,
                         expiry_call: list[Any]) -> NameRecords:
    """The ENS module's Universal Resolver calls, in one batch with the expiry."""
    node, dns = names.namehash(normal), names.dns_encode(normal)
    ur = client.universal_resolver.functions
    encode = client.resolver_abi.encode_abi
    calls = [*expiry_call, ur.resolve(dns, encode("addr", args=[node]))]
    calls += [ur.resolve(dns, encode("text", args=[node, key])) for key in TEXT_KEYS]
    results = await client.call_many(calls)
    if expiry_call:
        lapsed = _lapsed(results[0], name)
        if lapsed is not None:
            return lapsed
        results = results[1:]
    failed = next((r for r in results if isinstance(r, ContractLogicError)), None)
    if failed is not None:
        return NameRecords(name, UNRESOLVABLE, resolver=resolver,
                           detail=f"the Universal Resolver reverted: {failed}")
    codec = client.w3.codec
    (address,) = codec.decode(["address"], results[0][0]) if results[0][0] else (None,)
    texts: dict[str, str | None] = {}
    for key, (data, _) in zip(TEXT_KEYS, results[1:], strict=True):
        texts[key] = (codec.decode(["string"], data)[0] or None) if data else None
    used = _lower(results[0][1])
    client.resolvers.put(normal, used)
    return NameRecords(name, SYNCED, resolver=used or resolver, address=_lower(address),
                       texts=texts)
