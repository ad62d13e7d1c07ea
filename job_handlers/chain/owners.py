"""Who really owns a .eth second-level name (CHAIN_AND_DELIVERY.md): the BaseRegistrar token
holder, or, when that is the NameWrapper, the wrapped token's holder. A lapsed registration
(grace period included) has no owner. The registry's `owner()` is only the manager.

For many names at once, in up to three rounds of batched calls: `nameExpires` for all (never
reverts), `ownerOf` for those still registered, NameWrapper `ownerOf` for the wrapped ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from eth_utils.address import is_same_address
from web3.exceptions import ContractLogicError

from job_handlers.chain import names
from job_handlers.chain.client import ChainClient
from job_handlers.chain.records import ZERO

OWNED = "owned"
EXPIRED = "expired"
UNREGISTERED = "unregistered"
NOT_A_TOKEN = "not-a-token"  # invalid, or not a .eth second-level name: no registrar token


@dataclass(frozen=True)
class Ownership:
    state: str
    owner: str | None = None
    wrapped: bool = False


async def owners(client: ChainClient, ens_names: list[str]) -> dict[str, Ownership]:
    result: dict[str, Ownership] = {}
    labels: dict[str, tuple[str, str]] = {}  # name -> (normalised, label)
    for name in ens_names:
        try:
            normal = names.normalize(name)
        except names.InvalidName:
            result[name] = Ownership(NOT_A_TOKEN)
            continue
        label = names.eth_second_level_label(normal)
        if label is None:
            result[name] = Ownership(NOT_A_TOKEN)
        else:
            labels[name] = (normal, label)
    registrar, wrapper = client.registrar.functions, client.wrapper.functions
    pending = list(labels)
    expiries = await client.call_many(
        [registrar.nameExpires(names.token_id(labels[n][1])) for n in pending])
    now = time.time()
    live: list[str] = []
    for name, expires in zip(pending, expiries, strict=True):
        if int(expires) == 0:
            result[name] = Ownership(UNREGISTERED)
        elif int(expires) <= now:
            result[name] = Ownership(EXPIRED)
        else:
            live.append(name)
    holders = await client.call_many(
        [registrar.ownerOf(names.token_id(labels[n][1])) for n in live])
    wrapped: list[str] = []
    for name, holder in zip(live, holders, strict=True):
        if isinstance(holder, ContractLogicError):  # expired since nameExpires was read
            result[name] = Ownership(EXPIRED)
        elif is_same_address(holder, client.wrapper.address):
            wrapped.append(name)
        else:
            result[name] = Ownership(OWNED, holder.lower())
    wrapped_holders = await client.call_many(
        [wrapper.ownerOf(names.node_id(labels[n][0])) for n in wrapped])
    for name, holder in zip(wrapped, wrapped_holders, strict=True):
        if isinstance(holder, ContractLogicError) or is_same_address(holder, ZERO):
            result[name] = Ownership(EXPIRED, wrapped=True)
        else:
            result[name] = Ownership(OWNED, holder.lower(), wrapped=True)
    return result
