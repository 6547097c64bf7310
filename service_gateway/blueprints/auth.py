"""The client-credentials flow: POST /auth/access-token exchanges client_id + secret for a JWT."""
from __future__ import annotations

import logging

from flask import Blueprint, g, jsonify, request

from ..auth import make_token, require_auth
from ..clients import verify_secret
from ..errors import APIError
from ..webhooks import webhook_secret
from . import runtime

bp = Blueprint("auth", __name__)
log = logging.getLogger("service_gateway.auth")

#: One answer for an unknown id, a wrong secret and a disabled client, so ids cannot be probed.
BAD_CREDENTIALS = "client_id and secret do not match an enabled client"


@bp.get("/auth/webhook-secret")
@require_auth
def webhook_secret_route():
    """The caller's webhook signing secret (it changes when the client's secret is rotated)."""
    rt = runtime()
    identity = g.identity
    client = rt.clients.get(identity.client_id) if identity.client_id else None
    secret = webhook_secret(rt.settings.secret, identity.subject, client.token_version if client else 0)
    response = jsonify({"webhook_secret": secret, "signature_header": "X-SG-Signature",
                        "scheme": "v1=hex(HMAC-SHA256(secret, X-SG-Timestamp + '.' + body))"})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/auth/access-token")
def access_token():
    """Exchange ``client_id`` + ``secret`` (form or JSON) for ``{"access_token", "token_type", "expires_in"}``."""
    rt = runtime()
    body = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(body, dict) and not hasattr(body, "get"):
        raise APIError(200, "send client_id and secret as form fields or a JSON object")
    client_id, secret = body.get("client_id"), body.get("secret")
    if not isinstance(client_id, str) or not client_id or not isinstance(secret, str) or not secret:
        raise APIError(206, "client_id and secret are required (form fields or JSON)")
    # Failures count per (client_id, address), so guesses from one place do not lock the client out
    # everywhere, and per client_id over all addresses, a higher ceiling against spread-out guessing.
    address = request.remote_addr
    wait_s = rt.clients.throttled_for(client_id, address)
    if wait_s:
        log.warning("login refused while locked out: client_id=%s from %s", client_id[:64], address)
        raise APIError(402, f"too many failed logins for this client_id; retry in {int(wait_s) + 1} s",
                       headers={"Retry-After": str(int(wait_s) + 1)})
    client = rt.clients.get(client_id[:64])
    # verify_secret spends the same Argon2 time when there is no such client (timing-safe).
    ok = verify_secret(client.secret_hash if client else None, secret) and client is not None and client.enabled
    if not ok:
        lock_s = rt.clients.login_failed(client_id, address)
        log.warning("failed login: client_id=%s from %s%s", client_id[:64], address,
                    f"; locked out for {lock_s:.0f} s" if lock_s else "")
        raise APIError(225, BAD_CREDENTIALS)
    rt.clients.login_succeeded(client_id, address)
    settings = rt.settings
    token = make_token(settings.secret, client.client_id, admin=client.admin, expires_in_s=settings.jwt_expires_s,
                       issuer=settings.jwt_issuer, audience=settings.jwt_audience, token_version=client.token_version)
    log.info("token issued: client_id=%s", client.client_id)
    response = jsonify({"access_token": token, "token_type": "Bearer", "expires_in": settings.jwt_expires_s})
    response.headers["Cache-Control"] = "no-store"
    return response
