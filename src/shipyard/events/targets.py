"""Webhook URLs: what a URL may be, and where it may point (server-side request forgery).

A URL is http or https with a host and no credentials. At creation a literal address that is not
public is refused; at delivery the host is resolved and only a public address is used (unless private
networks are allowed), and the connection goes to that very address, so that a second resolution
(DNS rebinding) cannot send it elsewhere."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from shipyard.domain.errors import RequestInvalid

MAX_URL = 2048
# what a webhook URL may be, as the API documents it: a host name or IPv4 address (no credentials, no
# IPv6 literal), a port from 1 to 65535, a path and query of printable ASCII
URL_PATTERN = (
    r"^https?://[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*"
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
    r"([/?][!-~]*)?$"
)
_URL = re.compile(URL_PATTERN)


class TargetRefused(RequestInvalid):
    message = "webhook URL refused"


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    # path and query, as sent in the request line
    path: str


def parse(url: str) -> Target:
    if len(url) > MAX_URL:
        raise TargetRefused(f"a webhook URL has at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("a webhook URL is http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise TargetRefused("a webhook URL carries no credentials (user:password@)")
    if not parts.hostname:
        raise TargetRefused("a webhook URL names a host")
    if not _URL.match(url):
        raise TargetRefused(
            "a webhook URL is http:// or https://, a host name or IPv4 address, an optional port, and a "
            "path of printable ASCII without spaces"
        )
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path)


def refusal(address: str) -> str | None:
    """Why deliveries may not go to `address` (an IP address), or None when it is public."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for flag, name in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
    ):
        if flag:
            article = "an" if name[0] in "aeiou" else "a"
            return f"{address} is {article} {name} address"
    if not ip.is_global:
        return f"{address} is not a public address"
    return None


def literal_address(host: str) -> str | None:
    """The address a host names by itself, including the forms the C resolver reads as IPv4
    (`127.1`, `2130706433`, `0x7f.0.0.1`), which no DNS name can take."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(ipaddress.IPv4Address(socket.inet_aton(host)))
    except OSError:
        return None


def check_at_creation(url: str, allow_private: bool) -> Target:
    """The URL's target, if a webhook may have it: a literal non-public address is refused here (a
    name is resolved, and checked, at each delivery)."""
    target = parse(url)
    address = literal_address(target.host)
    if address is not None and not allow_private and (reason := refusal(address)) is not None:
        raise TargetRefused(
            f"{reason}: webhooks may not point into private networks (server-side request forgery)"
        )
    return target


def resolve(target: Target, allow_private: bool) -> str:
    """The address to connect to: the first the host resolves to that deliveries may reach."""
    literal = literal_address(target.host)
    if literal is not None:
        candidates = [literal]
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise TargetRefused(f"cannot resolve {target.host}: {exc.strerror}") from None
        candidates = list(dict.fromkeys(str(info[4][0]) for info in infos))
    reasons = []
    for address in candidates:
        reason = None if allow_private else refusal(address)
        if reason is None:
            return address
        reasons.append(reason)
    raise TargetRefused(f"{target.host}: {'; '.join(reasons)} (private networks are not allowed)")
