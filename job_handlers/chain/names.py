"""ENS names as the chain sees them: normalised (ENSIP-15, via web3's ENS module), hashed and
DNS-encoded."""

from __future__ import annotations

from ens.exceptions import ENSException
from ens.utils import dns_encode_name, label_to_hash, normal_name_to_hash, normalize_name


class InvalidName(ValueError):
    """The name cannot be normalised: it has no on-chain form."""


def normalize(name: str) -> str:
    try:
        normal: str = normalize_name(name)
    except (ENSException, ValueError, TypeError) as exc:
        raise InvalidName(f"{name!r} is not a valid ENS name: {exc}") from None
    if not normal:
        raise InvalidName(f"{name!r} is not a valid ENS name: it is empty")
    return normal


def namehash(normal: str) -> bytes:
    return bytes(normal_name_to_hash(normal))


def labelhash(label: str) -> bytes:
    return bytes(label_to_hash(label))


def dns_encode(normal: str) -> bytes:
    return bytes(dns_encode_name(normal))


def eth_second_level_label(normal: str) -> str | None:
    """'alice' for 'alice.eth'; None for anything else (subnames, other TLDs): only .eth
    second-level names are tokens of the BaseRegistrar."""
    labels = normal.split(".")
    return labels[0] if len(labels) == 2 and labels[1] == "eth" else None


def token_id(label: str) -> int:
    """The BaseRegistrar token id of a .eth label: uint256(labelhash)."""
    return int.from_bytes(labelhash(label), "big")


def node_id(normal: str) -> int:
    """The NameWrapper token id of a name: uint256(namehash)."""
    return int.from_bytes(namehash(normal), "big")
