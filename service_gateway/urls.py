"""Document URL safety: which doc_urls a job may fetch (gateway check, re-checked by the worker)."""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

MAX_URL_LENGTH = 4096


class URLRefused(ValueError):
    """Raised when a URL may not be fetched; the message says why, without echoing secrets."""


def check_doc_url(url: str, *, file_roots: list[str], allow_private: bool) -> str:
    """Return the URL's kind ("http" or "file") when it may be fetched.

    No DNS here (submit never waits on it): literal addresses and loopback names are checked; a
    host name is resolved and its addresses checked when a connection is made to it, once, by
    :func:`resolve_checked` (:mod:`service_gateway.pinned_http` connects to those very addresses).

    Args:
        url: the untrusted document URL.
        file_roots: directories under which file:// paths are allowed.
        allow_private: allow loopback/private/link-local hosts.

    Raises:
        URLRefused: the URL is malformed, of another scheme, outside the roots or private.
    """
    if not url or len(url) > MAX_URL_LENGTH:
        raise URLRefused("must be a URL of at most 4096 characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        local_path(url, file_roots)
        return "file"
    if scheme not in ("http", "https"):
        raise URLRefused(f"scheme {scheme or '(none)'!r} is not allowed; use http, https or an allowed file://")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise URLRefused("the host or port is malformed") from None
    if not host:
        raise URLRefused("has no host")
    if parts.username or parts.password:
        raise URLRefused("credentials in the URL are not accepted")
    if not allow_private:
        check_host(host)
    return "http"


def check_host(host: str) -> None:
    """Refuse loopback names and literal non-public addresses (names are checked once resolved)."""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        raise URLRefused("loopback hosts are not allowed (SG_ALLOW_PRIVATE_URLS is false)")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    _check_addresses(host, [address])


def resolve_checked(host: str, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` once and return its addresses, every one checked unless private ones are allowed.

    The connection must then go to these addresses (see :mod:`service_gateway.pinned_http`): a second
    resolution could answer differently (DNS rebinding) and reach an address nobody checked.

    Raises:
        URLRefused: the host does not resolve, or one of its addresses is not public.
    """
    if not allow_private:
        check_host(host)                          # the loopback names, before any lookup
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = _resolve(host)
    if not allow_private:
        _check_addresses(host, addresses)
    return list(dict.fromkeys(str(address) for address in addresses))


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise URLRefused(f"host {host!r} does not resolve") from None
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def _check_addresses(host: str, addresses: list) -> None:
    for address in addresses:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if not address.is_global or address.is_multicast:
            raise URLRefused(f"host {host!r} is a private, loopback or link-local address "
                             "(SG_ALLOW_PRIVATE_URLS is false)")


def local_path(url: str, file_roots: list[str]) -> Path:
    """Return the real path of a file:// URL that lies under one of ``file_roots``."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise URLRefused("file:// URLs must not name a host")
    if not file_roots:
        raise URLRefused("file:// URLs are not allowed here (SG_FILE_ROOTS is empty)")
    path = Path(os.path.realpath(unquote(parts.path)))
    for root in file_roots:
        real_root = Path(os.path.realpath(root))
        if path == real_root or real_root in path.parents:
            return path
    raise URLRefused("file:// path is outside the allowed roots (SG_FILE_ROOTS)")
