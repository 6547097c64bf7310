"""HTTP for untrusted URLs: connect to the address that was checked, and give up at a deadline.

``urls.check_doc_url`` resolves a host and checks its addresses; if ``requests`` then resolved the
host again on its own, a DNS answer that changed in between (DNS rebinding) would send the request
to an address nobody checked (a metadata service, a database on the private network). The adapter
here resolves each request's host once, checks every address (unless private ones are allowed) and
connects to those very addresses, while the Host header, TLS SNI and the certificate check still
use the host name. Redirects are requests of their own, so each one is resolved and checked again.

:meth:`PinnedAdapter.abort` cuts every connection the adapter opened (a blocked read returns at
once) and refuses new ones: a timer calls it to bound a download's total time, which per-read
timeouts alone do not (a server that sends a byte now and then never trips them).
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import SSL_KEYWORDS
from urllib3.util import connection

from .urls import resolve_checked


class _Registry:
    """The sockets of one adapter, so that :meth:`PinnedAdapter.abort` can cut them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.aborted = False


class _PinnedHTTPConnection(HTTPConnection):
    addresses: tuple[str, ...] = ()
    registry: _Registry | None = None

    def _new_conn(self) -> socket.socket:
        """Connect to the checked addresses in turn (never to a new DNS answer for ``self.host``)."""
        error: Exception = NewConnectionError(self, "no address to connect to")
        for address in self.addresses:
            if self.registry is not None and self.registry.aborted:
                raise NewConnectionError(self, "the download's deadline has passed")
            try:
                sock = connection.create_connection((address, self.port), self.timeout,
                                                    source_address=self.source_address,
                                                    socket_options=self.socket_options)
            except TimeoutError:
                error = ConnectTimeoutError(self, f"connection to {self.host} timed out")
                continue
            except OSError as exc:
                error = NewConnectionError(self, f"failed to connect: {exc}")
                continue
            if self.registry is not None:
                with self.registry.lock:
                    self.registry.sockets.append(sock)
                    if self.registry.aborted:
                        sock.close()
                        raise NewConnectionError(self, "the download's deadline has passed")
            return sock
        raise error


class _PinnedHTTPSConnection(HTTPSConnection):
    addresses: tuple[str, ...] = ()
    registry: _Registry | None = None
    _new_conn = _PinnedHTTPConnection._new_conn     # TLS (SNI, certificate) still uses self.host


class _PinnedPool:
    """A connection pool for one host whose connections go to ``addresses``."""

    addresses: tuple[str, ...] = ()
    registry: _Registry | None = None

    def _new_conn(self):
        conn = super()._new_conn()  # type: ignore[misc]
        conn.addresses, conn.registry = self.addresses, self.registry
        return conn


class _PinnedHTTPPool(_PinnedPool, HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(_PinnedPool, HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class PinnedAdapter(HTTPAdapter):
    """A requests transport that connects only to addresses it resolved and checked itself.

    Args:
        allow_private: SG_ALLOW_PRIVATE_URLS: when true, addresses are resolved once and pinned
            but not checked.

    Raises (from a request): URLRefused, when the host does not resolve or an address is not public.
    """

    def __init__(self, allow_private: bool, **kwargs) -> None:
        self.allow_private = allow_private
        self.registry = _Registry()
        self._pools: dict[tuple, HTTPConnectionPool] = {}
        super().__init__(**kwargs)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        parts = urlsplit(request.url)
        scheme, host = parts.scheme.lower(), parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        addresses = tuple(resolve_checked(host, allow_private=self.allow_private))
        key = (scheme, host, port, addresses, repr(verify), repr(cert))
        pool = self._pools.get(key)
        if pool is None:
            _, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
            pool_cls = _PinnedHTTPSPool if scheme == "https" else _PinnedHTTPPool
            if scheme != "https":          # as urllib3's PoolManager does: no TLS options for http
                pool_kwargs = {k: v for k, v in pool_kwargs.items() if k not in SSL_KEYWORDS}
            pool = pool_cls(host, port, maxsize=1, **pool_kwargs)
            pool.addresses, pool.registry = addresses, self.registry
            self._pools[key] = pool
        return pool

    def abort(self) -> None:
        """Cut every connection this adapter opened and refuse new ones (called from another thread)."""
        with self.registry.lock:
            self.registry.aborted = True
            sockets = list(self.registry.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def aborted(self) -> bool:
        return self.registry.aborted

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        super().close()


def pinned_session(allow_private: bool) -> tuple[requests.Session, PinnedAdapter]:
    """A session for untrusted URLs: no proxies or .netrc from the environment, connections pinned."""
    session = requests.Session()
    session.trust_env = False
    adapter = PinnedAdapter(allow_private)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session, adapter
