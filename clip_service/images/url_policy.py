"""Which URLs and which resolved addresses the fetcher may connect to (SSRF policy).

Pure functions and data: no sockets are opened here. The fetcher asks
``UrlPolicy.check_url`` before it resolves a name, and ``UrlPolicy.check_address``
for every address the name resolves to, right before it connects to that
exact address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from .errors import ItemError
from .limits import FetchLimits

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}

# Ranges refused whatever ``ipaddress.is_global`` says in this Python version
# (its tables changed between releases); with is_global these cover loopback,
# private, link-local (the cloud metadata server), CGNAT, unspecified,
# multicast, reserved, documentation and benchmarking addresses.
_BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::/96", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
    "2001:db8::/32", "2002::/16", "3fff::/20", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
))

# IPv6 forms that carry an IPv4 address; the IPv4 address is checked too.
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_TEREDO = ipaddress.ip_network("2001::/32")

# Names refused before any lookup: they mean this machine or the metadata server
# wherever the service runs (RFC 6761 reserves every *.localhost name).
_BLOCKED_NAMES = ("localhost", "metadata.google.internal", "metadata.goog")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo)."""
    if ip.version != 6:
        return None
    value = int(ip)
    if ip in _MAPPED or (ip in _COMPATIBLE and value > 1):  # ::, ::1 are not IPv4 carriers
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:  # 2002:AABB:CCDD::/48
        return ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF)
    if ip in _NAT64[0]:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if ip in _NAT64[1]:  # RFC 6052 /48: IPv4 in bits 48..63 and 72..87 (bits 64..71 are zero)
        high = (value >> 64) & 0xFFFF
        low = (value >> 40) & 0xFFFF
        return ipaddress.IPv4Address((high << 16) | low)
    if ip in _TEREDO:  # the client's address is the bitwise inverse of the last 32 bits
        return ipaddress.IPv4Address(~value & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True only for a globally routable unicast address that embeds no blocked IPv4 address."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:  # a dual-stack socket really connects to the IPv4 address
            return is_public_address(ip.ipv4_mapped)
        carried = embedded_ipv4(ip)
        if carried is not None and not is_public_address(carried):
            return False
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        return False
    if any(ip in net for net in _BLOCKED_NETWORKS):
        return False
    return ip.is_global


@dataclass(frozen=True)
class Allowlist:
    """Operator exemptions: exact ``host:port`` pairs and CIDR blocks (any port)."""

    host_ports: frozenset[tuple[str, int]] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Allowlist":
        """Parse ``"127.0.0.1:8080, [::1]:9000, 10.0.0.0/8, images.internal:443"``; raise ValueError."""
        host_ports, networks = set(), []
        for raw in (part.strip() for part in text.split(",")):
            if not raw:
                continue
            if "/" in raw:
                networks.append(ipaddress.ip_network(raw, strict=False))
                continue
            host, sep, port = raw.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{raw!r} is neither host:port nor a CIDR block")
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            host_ports.add((normalise_host(host), int(port)))
        return cls(frozenset(host_ports), tuple(networks))

    def allows(self, host: str, port: int, ip: IPAddress | None = None) -> bool:
        if (host, port) in self.host_ports:
            return True
        if ip is not None:
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            return any(ip.version == net.version and ip in net for net in self.networks)
        return False


def parse_ports(text: str) -> frozenset[int]:
    """Parse ``"80,443"``; raise ValueError for anything that is not a TCP port."""
    ports = set()
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ValueError(f"{raw!r} is not a TCP port")
        ports.add(int(raw))
    if not ports:
        raise ValueError("no ports given")
    return frozenset(ports)


def normalise_host(host: str) -> str:
    """Lower-case, drop a trailing dot, turn an IP literal into its canonical spelling."""
    host = host.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@dataclass(frozen=True)
class Target:
    """A URL that passed the form checks, split into the parts a connection needs."""

    url: str
    scheme: str
    host: str  # normalised; IDNA-encoded when the URL had a Unicode name
    port: int
    path: str  # path and query, what goes on the request line


@dataclass(frozen=True)
class UrlPolicy:
    """The form and destination rules every URL and every redirect hop must pass."""

    allowed_ports: frozenset[int] = frozenset({80, 443})
    allowlist: Allowlist = field(default_factory=Allowlist)
    max_url_chars: int = FetchLimits.max_url_chars

    def check_url(self, url: str) -> Target:
        """Check scheme, form, length and port; raise ItemError (invalid_url or blocked_url)."""
        if not isinstance(url, str) or not url:
            raise ItemError("invalid_url", "the URL is empty")
        if len(url) > self.max_url_chars:
            raise ItemError("invalid_url", f"the URL is longer than {self.max_url_chars} characters")
        if any(ord(c) < 33 or ord(c) == 127 or c == "\\" for c in url):
            # Parsers disagree about whitespace, control characters and backslashes.
            raise ItemError("invalid_url", "the URL contains spaces, control characters or backslashes")
        try:
            parts: SplitResult = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ItemError("invalid_url", "the URL cannot be parsed") from None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ItemError("invalid_url", "only http and https URLs with a host are accepted")
        if "@" in parts.netloc:
            raise ItemError("invalid_url", "URLs with a user name or password are not accepted")
        host = normalise_host(parts.hostname)
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise ItemError("invalid_url", "the host name is not a valid domain name") from None
        if not host or any(c in host for c in "%[]"):  # zone ids and stray brackets
            raise ItemError("invalid_url", "the host name is not a valid domain name")
        port = DEFAULT_PORTS[parts.scheme] if port is None else port
        if port == 0:
            raise ItemError("invalid_url", "port 0 is not a valid port")
        if not self.allowlist.allows(host, port) and not self.allowlist.networks:
            self._check_port(port)
            self._check_name(host)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(url=url, scheme=parts.scheme, host=host, port=port, path=path)

    def check_address(self, target: Target, ip: IPAddress) -> None:
        """Refuse to connect ``target`` to ``ip`` unless it is public (or allowlisted) and the port allowed."""
        if self.allowlist.allows(target.host, target.port, ip):
            return
        self._check_port(target.port)
        self._check_name(target.host)
        if not is_public_address(ip):
            # Never name the resolved address: it would map the internal network for the caller.
            raise ItemError("blocked_url", "the URL points to a private, local or reserved address")

    def _check_port(self, port: int) -> None:
        if port not in self.allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(self.allowed_ports))
            raise ItemError("blocked_url", f"port {port} is not allowed; allowed ports: {allowed}")

    @staticmethod
    def _check_name(host: str) -> None:
        if host in _BLOCKED_NAMES or host.endswith(".localhost"):
            raise ItemError("blocked_url", "the URL points to a private, local or reserved address")
