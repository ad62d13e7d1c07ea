"""The few contract functions the handlers call, as on mainnet (web3's ENS module brings the
registry, resolver and Universal Resolver ABIs)."""

from __future__ import annotations

from typing import Any

BASE_REGISTRAR: list[dict[str, Any]] = [
    {"type": "function", "name": "ownerOf", "stateMutability": "view",
     "inputs": [{"name": "tokenId", "type": "uint256"}],
     "outputs": [{"name": "", "type": "address"}]},
    {"type": "function", "name": "nameExpires", "stateMutability": "view",
     "inputs": [{"name": "id", "type": "uint256"}],
     "outputs": [{"name": "", "type": "uint256"}]},
]

NAME_WRAPPER: list[dict[str, Any]] = [
    {"type": "function", "name": "ownerOf", "stateMutability": "view",
     "inputs": [{"name": "id", "type": "uint256"}],
     "outputs": [{"name": "owner", "type": "address"}]},
]
