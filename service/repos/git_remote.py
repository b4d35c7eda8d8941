"""Which https git remotes a batch may reach, decided before any connection (SSRF guard).

A git URL names a host; a worker that clones it connects from inside the deployment, where
loopback, private networks and the cloud's metadata service (169.254.169.254, fd00:ec2::254)
are reachable. So the host is resolved here and *every* address it resolves to must be public
(`ipaddress`'s `is_global`, IPv4 inside IPv6 unwrapped), unless the operator allow-listed it
(`batches.git_allowed_hosts`: host names or CIDR blocks, for a private Git server).

The address checked is the address used: `pin` returns it and the clone hands it to curl
(`http.curloptResolve`), so a DNS answer that changes between check and connect (rebinding)
cannot swap it. Redirects are not followed (`http.followRedirects=false`), so a public server
cannot bounce the clone inward either.

IPv4 spellings that curl and `inet_aton` accept but `ipaddress` does not (2130706433, 0x7f.1,
0177.0.0.1, 127.1) are read as the address they mean.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

HTTPS_PORT = 443
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix: IPv4 inside
_IPV4_SPELLING = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)


class RemoteRefused(ValueError):
    """The remote may not be cloned; the message is the client's to read (no network detail
    beyond the host the client named)."""


@dataclass(frozen=True)
class PinnedRemote:
    """An https remote and the checked address the clone must connect to."""

    host: str
    port: int
    address: str
    literal: bool  # the URL names the address itself: nothing to resolve, nothing to pin

    def curl_resolve(self) -> str | None:
        """The `http.curloptResolve` entry that pins host:port to the checked address."""
        if self.literal:
            return None
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.host}:{self.port}:{address}"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0].split("%", 1)[0] for info in infos})


def literal_address(host: str) -> IPAddress | None:
    """The address a host that is an IP literal means (any spelling curl accepts), else None."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if _IPV4_SPELLING.match(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def refusal(address: IPAddress) -> str | None:
    """Why a clone may not connect to `address` (None: it is a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = (address.ipv4_mapped or (address.sixtofour if address.sixtofour else None)
                    or (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                        if address in _NAT64 else None))
        if address.teredo:
            return "a Teredo tunnel address"
        if embedded is not None:
            return refusal(embedded)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved or non-public address"
    return None


@dataclass(frozen=True)
class RemotePolicy:
    """What the operator allows: names and networks admitted although they are not public,
    and whether public hosts are allowed at all."""

    allowed_hosts: tuple[str, ...] = ()
    allow_public: bool = True

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in {h.lower().rstrip(".") for h in self.allowed_hosts
                                            if not _is_network(h)}

    def address_allowed(self, address: IPAddress) -> bool:
        return any(address in ipaddress.ip_network(h, strict=False)
                   for h in self.allowed_hosts if _is_network(h))


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
        return True
    except ValueError:
        return False


def pin(url: str, policy: RemotePolicy, resolver: Resolver | None = None) -> PinnedRemote:
    """The https URL's host, port and one checked address; RemoteRefused otherwise. Names are
    resolved with `resolver` (the system's by default); IP literals need no lookup."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise RemoteRefused("the https git URL has no host")
    if not host.isascii():
        # the name pinned for curl must be the one it looks up: ask for the punycode form
        raise RemoteRefused(f"git host {host!r}: write an international name in its ASCII "
                            "(xn--) form")
    try:
        port = parts.port or HTTPS_PORT
    except ValueError:
        raise RemoteRefused("the git URL's port is not a number from 1 to 65535") from None
    named = policy.host_allowed(host)
    literal = literal_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        if not named and not policy.allow_public:
            raise RemoteRefused(f"git host {host!r} is not on this service's allow-list")
        try:
            found = (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError):
            found = []
        addresses = [a for a in (literal_address(text) for text in found) if a is not None]
        if not addresses:
            raise RemoteRefused(f"git host {host!r} could not be resolved")
    for address in addresses:
        if named or policy.address_allowed(address):
            continue
        why = refusal(address)
        if why is not None:
            what = (f"git host {host!r} resolves to" if literal is None
                    else f"git host {str(literal)!r} is")
            raise RemoteRefused(f"{what} {why}; only public hosts, or hosts on this "
                                "service's allow-list, may be cloned")
        if not policy.allow_public:
            raise RemoteRefused(f"git host {host!r} is not on this service's allow-list")
    return PinnedRemote(host=host, port=port, address=str(addresses[0]),
                        literal=literal is not None)
