"""Which webhook targets may be called: only globally routable addresses (SSRF).

The host is resolved once; every address must be global (`ipaddress`'s `is_global`, which
refuses loopback, private, link-local/metadata, CGNAT `100.64.0.0/10` and IPv4-mapped forms such
as `::ffff:127.0.0.1`), and the request then goes to the checked address itself, so a second DNS
answer (rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(ValueError):
    """The webhook URL may not be called (permanently, until the user changes it)."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # as written in the URL (Host header, TLS server name)
    port: int
    address: IPAddress  # the checked address the request connects to


def redact(url: str) -> str:
    """A webhook URL fit for logs: paths and queries often carry the endpoint's secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme or '?'}://{host}/…"


def parse(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    shown = redact(url)
    if parts.scheme not in ("https", "http"):
        raise UnsafeTarget(f"webhook URL {shown}: scheme must be https or http")
    if not parts.hostname:
        raise UnsafeTarget(f"webhook URL {shown} has no host")
    if parts.username or parts.password:
        raise UnsafeTarget(f"webhook URL {shown}: credentials in the URL are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeTarget(f"webhook URL {shown}: the port is not a number in 0-65535"
                           ) from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def check_address(address: IPAddress, host: str, allow_private: bool) -> None:
    mapped = getattr(address, "ipv4_mapped", None)
    effective = mapped or address
    if not allow_private and not effective.is_global:
        raise UnsafeTarget(f"webhook host {host!r} resolves to {address}, which is not a public "
                           "address (loopback, private, link-local or reserved): refused")


async def resolve(url: str, allow_private: bool) -> Target:
    """Check a webhook URL and pick the address to connect to; UnsafeTarget when refused."""
    scheme, host, port, _ = parse(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UnsafeTarget(f"webhook host {host!r} does not resolve: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise UnsafeTarget(f"webhook host {host!r} has no address")
    for address in addresses:
        check_address(address, host, allow_private)
    return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])
