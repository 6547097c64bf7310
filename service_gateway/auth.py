"""JWT authentication: bearer or bare tokens, one clear 401 per failure, identity on ``g``."""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

import jwt as pyjwt
from flask import Flask, current_app, g, request
from flask_jwt_extended import JWTManager, get_jwt, verify_jwt_in_request

from .errors import APIError, error_response

ALGORITHM = "HS256"
DEFAULT_ISSUER = DEFAULT_AUDIENCE = "service-gateway"
jwt_manager = JWTManager()


@dataclass(frozen=True)
class Identity:
    """Who calls: the token's subject (owner of its jobs), its admin right and service scopes.

    ``scopes`` is None for operator tokens made with `sg token` (every service); a client's
    token carries the client's current scopes and quotas, read from the job store per request.
    """

    subject: str
    admin: bool = False
    scopes: frozenset[str] | None = None
    client_id: str | None = None
    quotas: dict[str, Any] = field(default_factory=dict)

    def may_use(self, service: str) -> bool:
        return self.admin or self.scopes is None or "*" in self.scopes or service in self.scopes

    def require(self, service: str) -> None:
        """Raise 403 (code 223) when the caller's scopes do not include ``service``."""
        if not self.may_use(service):
            allowed = ", ".join(sorted(self.scopes or ())) or "none"
            raise APIError(223, f"this client may not use {service!r}: its scopes are {allowed}; "
                                "an admin can change them with `sg clients set-scopes`")

    def require_admin(self) -> None:
        if not self.admin:
            raise APIError(223, "this route needs an admin token (a client with the admin scope, or "
                                "`sg token --admin`)")


def make_token(secret: str, subject: str, *, admin: bool = False, expires_in_s: int = 3600,
               issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE,
               token_version: int | None = None) -> str:
    """Sign an access token the gateway accepts (the claims flask-jwt-extended issues, plus ours).

    ``token_version`` marks a client's token (``cid`` claim = ``subject``): the gateway checks
    it against the client's current version, so disabling or rotating revokes the token.
    """
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iss": issuer, "aud": audience, "iat": now, "nbf": now,
                              "exp": now + expires_in_s, "jti": str(uuid.uuid4()), "type": "access", "fresh": False}
    if admin:
        claims["admin"] = True
    if token_version is not None:
        claims["cid"], claims["ver"] = subject, token_version
    return pyjwt.encode(claims, secret, algorithm=ALGORITHM)


class BareTokenMiddleware:
    """Accept the original gateway's bare ``Authorization: <jwt>`` by adding the Bearer prefix."""

    def __init__(self, wsgi_app: Callable) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable):
        value = environ.get("HTTP_AUTHORIZATION", "").strip()
        if value and " " not in value and value.count(".") == 2:
            environ["HTTP_AUTHORIZATION"] = f"Bearer {value}"
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask, secret: str, issuer: str = DEFAULT_ISSUER, audience: str = DEFAULT_AUDIENCE) -> None:
    app.config.update(
        JWT_SECRET_KEY=secret,
        JWT_ALGORITHM=ALGORITHM,
        JWT_DECODE_ALGORITHMS=[ALGORITHM],
        JWT_TOKEN_LOCATION=["headers"],
        JWT_ERROR_MESSAGE_KEY="description",
        JWT_DECODE_ISSUER=issuer,
        JWT_DECODE_AUDIENCE=audience,
        JWT_ENCODE_ISSUER=issuer,
        JWT_ENCODE_AUDIENCE=audience,
    )
    jwt_manager.init_app(app)
    app.extensions["sg_verified_tokens"] = VerifiedTokens()
    app.wsgi_app = BareTokenMiddleware(app.wsgi_app)

    @jwt_manager.unauthorized_loader
    def _missing(reason: str):
        if "Authorization" in reason and "Missing" in reason:
            return error_response(APIError(220, "no token: send `Authorization: Bearer <token>` "
                                                "(an operator makes one with `sg token`)"))
        return error_response(APIError(221, f"malformed Authorization header: {reason}"))

    @jwt_manager.invalid_token_loader
    def _invalid(reason: str):
        if "Signature" in reason:
            return error_response(APIError(221, "token signature is invalid: it was not signed with "
                                                "this gateway's secret"))
        lowered = reason.lower()
        if "audience" in lowered or '"aud"' in lowered:
            return error_response(APIError(221, f"token audience is wrong: it must be {audience!r} "
                                                "(a token for another service?)"))
        if "issuer" in lowered or '"iss"' in lowered:
            return error_response(APIError(221, f"token issuer is wrong: it must be {issuer!r}"))
        return error_response(APIError(221, f"token is malformed ({reason})"))

    @jwt_manager.expired_token_loader
    def _expired(_header: dict, _payload: dict):
        return error_response(APIError(222, "token has expired: request a new token"))


class VerifiedTokens:
    """The claims of tokens this app verified, until they expire (a bounded LRU, one per app).

    Verifying a token (flask-jwt-extended + PyJWT: signature, issuer, audience, times) was 10-15 %
    of the gateway's CPU per request, for the same few tokens over and over. A token's claims
    cannot change, so a verified token needs no second check before its ``exp``; a client's token
    is still checked against the client as it is now (identity_of), so revocation stays immediate.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._claims: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            claims = self._claims.get(token)
            if claims is None:
                return None
            now = time.time()
            if not claims.get("nbf", 0) <= now < claims.get("exp", 0):
                del self._claims[token]
                return None
            self._claims.move_to_end(token)
            return claims

    def put(self, token: str, claims: dict[str, Any]) -> None:
        if "exp" not in claims:      # never: make_token always sets it; such a token is checked every time
            return
        with self._lock:
            self._claims[token] = claims
            while len(self._claims) > self.size:
                self._claims.popitem(last=False)


def _bearer() -> str | None:
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() or None if kind == "Bearer" else None


def require_auth(view: Callable) -> Callable:
    """Decorate a view that needs a valid token; the caller's :class:`Identity` is ``g.identity``."""
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any):
        cache: VerifiedTokens = current_app.extensions["sg_verified_tokens"]
        token = _bearer()
        claims = cache.get(token) if token else None
        if claims is None:
            verify_jwt_in_request()
            claims = get_jwt()
            if token:
                cache.put(token, claims)
        g.identity = identity_of(claims)
        return view(*args, **kwargs)
    return wrapper


def identity_of(claims: dict[str, Any]) -> Identity:
    """The caller behind verified claims; a client's token is checked against the client as it is now."""
    if "cid" not in claims:
        return Identity(subject=str(claims["sub"]), admin=claims.get("admin") is True)
    from .blueprints import runtime
    client = runtime().clients.get(str(claims["cid"]))
    if client is None or not client.enabled:
        raise APIError(224, "token revoked: its client is disabled or deleted; ask an admin")
    if claims.get("ver") != client.token_version:
        raise APIError(224, "token revoked: the client's secret was rotated or the client re-enabled; "
                            "request a new token with the current secret")
    return Identity(subject=client.client_id, admin=client.admin, scopes=frozenset(client.scopes),
                    client_id=client.client_id, quotas=client.quotas)
