"""The Python client of the gateway: tokens, submit, wait (live events), cancel, download, listings.

Only ``requests`` (with urllib3's ``Retry``) is needed: this module never imports Flask, Celery,
SQLAlchemy or kombu, so ``pip install 'service-gateway[client]'`` is enough to use it::

    from service_gateway.client import Client

    with Client("https://gateway.example.org", client_id="c_...", secret="sgs_...") as sg:
        job = sg.submit("transcode", "https://media.example/clip.mp4", preset="mp4-720p")
        final = job.wait(progress=lambda s: print(s["status"], s["progress"]))
        paths = job.download(output_dir="out")

Tokens are fetched from ``POST /auth/access-token`` and fetched again shortly before they
expire, and once more when a call is answered 401 with an expired (222) or revoked (224) token
code. Every error answer raises a :class:`GatewayError` subclass carrying the answer's
``status``, ``code``, ``error`` and ``description`` (docs/errors.md). docs/client.md has the rest.
"""
from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import tomllib
import uuid as uuid_mod
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .errors import CODES, ServiceGatewayError

__all__ = [
    "Client", "Job", "load_config", "safe_filename", "FINISHED",
    "ClientError", "ConfigError", "ConnectionFailed", "GatewayError", "BadRequest", "Unauthorized", "Forbidden",
    "NotFound", "MethodNotAllowed", "Conflict", "PayloadTooLarge", "TooManyRequests", "QuotaExceeded",
    "TooManyAttempts", "ServerError", "Unavailable", "JobFailed", "WaitTimeout",
]

#: Statuses after which a job changes no more.
FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED", "EXPIRED"})
#: Token answers worth one new login: expired (222) and revoked by a disable/enable (224).
RELOGIN_CODES = frozenset({222, 224})
DEFAULT_CONFIG = Path("service-gateway") / "client.toml"
CONFIG_KEYS = ("url", "client_id", "secret", "token")
ENV_NAMES = {"url": "SG_URL", "client_id": "SG_CLIENT_ID", "secret": "SG_SECRET", "token": "SG_TOKEN"}


# -- errors -------------------------------------------------------------------------------------
class ClientError(ServiceGatewayError):
    """Root of the client's errors. Each carries ``status`` (HTTP status or None), ``code``
    (uniform code or None), ``error`` (short name) and ``description`` (what to do)."""

    status: int | None = None
    code: int | None = None
    error: str = "ClientError"
    #: the exit status of `sg` when this error ends a command
    exit_code: int = 1

    def __init__(self, description: str, *, status: int | None = None, code: int | None = None,
                 error: str | None = None, retry_after: float | None = None,
                 response: requests.Response | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.status = status if status is not None else type(self).status
        self.code = code if code is not None else type(self).code
        self.error = error or type(self).error
        self.retry_after = retry_after
        self.response = response

    def __str__(self) -> str:
        where = " ".join(str(p) for p in (self.error, self.code) if p is not None)
        return f"{self.description} ({where})" if where else self.description

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "error": self.error, "description": self.description}


class ConfigError(ClientError):
    """The client is missing its URL or credentials, or a config file is malformed."""

    error = "ConfigError"
    exit_code = 2


class ConnectionFailed(ClientError):
    """The gateway could not be reached (refused, DNS, TLS, timeout) after the retries."""

    error = "ConnectionError"
    exit_code = 4


class GatewayError(ClientError):
    """The gateway answered an error (any status without a more precise class)."""

    error = "GatewayError"


class BadRequest(GatewayError):
    """400: unparsable body (200), invalid (204) or missing (206) parameter, bad doc_url (207), ..."""

    status = 400


class Unauthorized(GatewayError):
    """401: no (220), invalid (221), expired (222) or revoked (224) token; wrong credentials (225)."""

    status = 401


class Forbidden(GatewayError):
    """403 (223): the token's scopes do not allow this service or route."""

    status = 403


class NotFound(GatewayError):
    """404: no route (201), unknown service (202), unknown job (203), output (208) or client (213)."""

    status = 404


class MethodNotAllowed(GatewayError):
    status = 405


class Conflict(GatewayError):
    """409: the job has finished (210), the Idempotency-Key was used for another request (214), ..."""

    status = 409


class PayloadTooLarge(GatewayError):
    status = 413


class TooManyRequests(GatewayError):
    """429; ``retry_after`` says how many seconds to wait when waiting helps."""

    status = 429


class QuotaExceeded(TooManyRequests):
    """429 (401): the job would exceed a quota of the client; nothing was enqueued."""

    code = 401


class TooManyAttempts(TooManyRequests):
    """429 (402): too many failed logins for this client id."""

    code = 402


class ServerError(GatewayError):
    """500 (100): an unexpected error in the gateway."""

    status = 500


class Unavailable(GatewayError):
    """503 (400): broker, result backend or job store unreachable; ``retry_after`` seconds to wait."""

    status = 503


class JobFailed(ClientError):
    """A waited-for job ended FAILURE, REVOKED or EXPIRED (``wait(check=True)``).

    ``code``/``error`` come from the job's result (e.g. 109 Terminated), ``job_status`` is the
    final status and ``job`` the whole final status body. ``status`` is None (not an HTTP error).
    """

    error = "JobFailed"
    exit_code = 3

    def __init__(self, job: dict[str, Any]) -> None:
        result = job.get("result") if isinstance(job.get("result"), dict) else {}
        code = result.get("code") if isinstance(result.get("code"), int) else None
        name = CODES[code][1] if code in CODES else _UNCODED.get(str(job.get("status")), "JobFailed")
        message = result.get("message") or f"the job ended {job.get('status')}"
        super().__init__(f"job {job.get('uuid')} ended {job.get('status')}: {message}", code=code, error=name)
        self.job = job
        self.job_status = job.get("status")


_UNCODED = {"FAILURE": "JobFailed", "REVOKED": "Terminated", "EXPIRED": "ResultExpired"}


class WaitTimeout(ClientError, TimeoutError):
    """``wait(timeout=...)`` passed its deadline before the job finished; ``job`` is the last status seen."""

    error = "WaitTimeout"
    exit_code = 5

    def __init__(self, description: str, job: dict[str, Any] | None) -> None:
        super().__init__(description)
        self.job = job


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 405: MethodNotAllowed, 409: Conflict,
    413: PayloadTooLarge, 429: TooManyRequests, 500: ServerError, 503: Unavailable,
}
_BY_CODE: dict[int, type[GatewayError]] = {401: QuotaExceeded, 402: TooManyAttempts}


def error_from_response(response: requests.Response) -> GatewayError:
    """The typed exception for an error answer (the uniform JSON shape, or whatever a proxy sent)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if isinstance(body, dict) and isinstance(body.get("code"), int) and "description" in body:
        code = body["code"]
        cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, GatewayError)
        return cls(str(body["description"]), status=response.status_code, code=code,
                   error=str(body.get("error") or (CODES[code][1] if code in CODES else "GatewayError")),
                   retry_after=retry_after, response=response)
    cls = _BY_STATUS.get(response.status_code, GatewayError)
    text = " ".join((response.text or "").split())[:200]
    description = f"HTTP {response.status_code} {response.reason or ''} from {response.url}".strip()
    return cls(f"{description}: {text}" if text else description, status=response.status_code,
               error=response.reason or cls.error, retry_after=retry_after, response=response)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# -- helpers ------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^\w.\-+= ()\[\]@,]+")


def safe_filename(name: str, default: str = "output") -> str:
    """A file name that stays in its directory: no path parts, no leading dots, no control characters."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    base = base.lstrip(".-")
    return base[:200] or default


def parse_param(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value); the value is JSON when it parses (numbers, booleans, null,
    lists, objects, quoted strings), else the text as it is."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{item!r}: use KEY=VALUE")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT, read without verifying it (only to time a refresh)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The client's settings: the config file, then ``SG_URL``/``SG_CLIENT_ID``/``SG_SECRET``/``SG_TOKEN``,
    then ``overrides`` (command-line flags); later sources win, key by key.

    The file is ``path``, else ``$SG_CLIENT_CONFIG``, else ``$XDG_CONFIG_HOME/service-gateway/client.toml``
    (``~/.config/...``) when it exists: TOML with ``url``, ``client_id``, ``secret`` and/or ``token``.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    explicit = path or environ.get("SG_CLIENT_CONFIG")
    if explicit:
        file = Path(explicit).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
    else:
        home = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
        file = Path(home) / DEFAULT_CONFIG
    if file.is_file():
        try:
            with file.open("rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: not a readable TOML file ({exc})") from None
        unknown = sorted(set(data) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"{file}: unknown key(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
        for key, value in data.items():
            if not isinstance(value, str):
                raise ConfigError(f"{file}: {key} must be a string")
            values[key] = value
    for key, env in ENV_NAMES.items():
        if environ.get(env):
            values[key] = environ[env]
    for key, value in (overrides or {}).items():
        if value:
            values[key] = value
    return values


class _Retry(Retry):
    """urllib3's Retry, retrying only 503s (and the status_forcelist) and capping ``Retry-After``.

    urllib3 would also retry a 429 or 413 that carries ``Retry-After``: not here, a quota (429,
    until midnight or the 1st) or a login lock-out is the caller's to see at once.
    """

    RETRY_AFTER_STATUS_CODES = frozenset({503})
    MAX_RETRY_AFTER_S = 30.0

    def get_retry_after(self, response):  # noqa: ANN001 - urllib3's signature
        seconds = super().get_retry_after(response)
        return None if seconds is None else min(seconds, self.MAX_RETRY_AFTER_S)


# -- the client ---------------------------------------------------------------------------------
class Client:
    """A session with one gateway.

    Args:
        url: the gateway's base URL, e.g. ``https://gateway.example.org`` (a path prefix is kept).
        client_id, secret: credentials exchanged at ``POST /auth/access-token`` (tokens are renewed).
        token: a ready JWT (e.g. from ``sg token``); used first, renewed with the credentials when given.
        timeout: seconds to connect and to wait for each answer.
        retries: retries of idempotent calls on connection errors and 502/503/504, and of a submit
            or login answered 503 (a submit always carries an Idempotency-Key, so a retry cannot
            create a second job).
        refresh_margin_s: renew the token this long before it expires (default: a tenth of its
            lifetime, at most 60 s).
        session: a ``requests.Session`` to use (its adapters are replaced by retrying ones).
    """

    def __init__(self, url: str, client_id: str | None = None, secret: str | None = None, *,
                 token: str | None = None, timeout: float = 30.0, retries: int = 3,
                 refresh_margin_s: float | None = None, session: requests.Session | None = None,
                 user_agent: str | None = None) -> None:
        if not url:
            raise ConfigError("no gateway URL: pass url= (sg: --url, SG_URL or the config file)")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"gateway URL {url!r} must start with http:// or https://")
        if bool(client_id) != bool(secret):
            raise ConfigError("client_id and secret go together: pass both (or a token)")
        if not (client_id or token):
            raise ConfigError("no credentials: pass client_id= and secret=, or token= "
                              "(sg: SG_CLIENT_ID + SG_SECRET, or SG_TOKEN)")
        self.url = url.rstrip("/")
        self.client_id, self._secret = client_id, secret
        self.timeout = timeout
        self.refresh_margin_s = refresh_margin_s
        self._lock = threading.Lock()
        self._token = token
        self._token_expires_at = _jwt_expiry(token) if token else None     # time.time() scale
        self._token_lifetime: float | None = None
        backoff = dict(backoff_factor=0.5, raise_on_status=False, respect_retry_after_header=True)
        # Idempotent calls: retried on connection errors and on 502/503/504 (honouring Retry-After).
        self.session = session or requests.Session()
        self.session.mount("http://", HTTPAdapter(max_retries=_Retry(
            total=retries, status_forcelist=(502, 503, 504), **backoff)))
        self.session.mount("https://", self.session.get_adapter("http://"))
        # Submits and logins (POST): retried on connection errors and 503 only.
        self._post_session = requests.Session()
        adapter = HTTPAdapter(max_retries=_Retry(total=retries, allowed_methods=frozenset({"POST"}),
                                                 status_forcelist=(503,), **backoff))
        self._post_session.mount("http://", adapter)
        self._post_session.mount("https://", adapter)
        from . import __version__
        agent = user_agent or f"service-gateway-client/{__version__} {requests.utils.default_user_agent()}"
        self.session.headers["User-Agent"] = self._post_session.headers["User-Agent"] = agent
        self._post_session.hooks = self.session.hooks      # one set of response hooks for every call

    @classmethod
    def from_config(cls, path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None,
                    **overrides: Any) -> "Client":
        """A client from the config file and ``SG_*`` client variables (see :func:`load_config`)."""
        options = {k: overrides.pop(k) for k in CONFIG_KEYS if k in overrides}
        config = load_config(path, environ, options)
        return cls(config.get("url", ""), config.get("client_id"), config.get("secret"),
                   token=config.get("token"), **overrides)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()
        self._post_session.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, client_id={self.client_id!r})"

    # -- tokens ---------------------------------------------------------------------------------
    def login(self) -> str:
        """Exchange the client id and secret for a new token now, and return it."""
        if not self.client_id:
            raise ConfigError("this client has a fixed token and no client_id/secret to renew it with")
        answer = self._send(self._post_session, "POST", "/auth/access-token",
                            json={"client_id": self.client_id, "secret": self._secret})
        body = answer.json()
        lifetime = float(body.get("expires_in") or 0) or None
        with self._lock:
            self._token = body["access_token"]
            self._token_lifetime = lifetime
            self._token_expires_at = time.time() + lifetime if lifetime else _jwt_expiry(self._token)
        return self._token

    @property
    def token(self) -> str:
        """A token valid for a while yet (logs in or renews it when needed)."""
        with self._lock:
            token, expires_at = self._token, self._token_expires_at
        due = expires_at is not None and time.time() >= expires_at - self._margin()
        if self.client_id and (token is None or due):
            return self.login()
        assert token is not None
        return token

    def _margin(self) -> float:
        if self.refresh_margin_s is not None:
            return self.refresh_margin_s
        if self._token_lifetime is None:
            return 30.0                 # a ready token: its lifetime is unknown, its expiry is not
        return min(60.0, 0.1 * self._token_lifetime)

    def _drop_token(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    # -- HTTP -----------------------------------------------------------------------------------
    def _send(self, session: requests.Session, method: str, path: str, *, timeout: Any = None,
              **kwargs: Any) -> requests.Response:
        # Always under the configured base URL: the token is never sent to another host.
        try:
            response = session.request(method, self.url + path, timeout=timeout or self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ConnectionFailed(f"cannot reach the gateway at {self.url}: {_reason(exc)}") from exc
        if response.status_code >= 400:
            try:
                raise error_from_response(response)
            finally:
                response.close()
        return response

    def request(self, method: str, path: str, *, post_retries: bool = False, headers: dict | None = None,
                **kwargs: Any) -> requests.Response:
        """An authenticated call; renews the token once on an expired (222) or revoked (224) answer.

        Raises a :class:`GatewayError` subclass for an error answer, :class:`ConnectionFailed`
        when the gateway cannot be reached.
        """
        session = self._post_session if post_retries else self.session
        for attempt in (1, 2):
            token = self.token
            try:
                return self._send(session, method, path, headers={**(headers or {}),
                                                                 "Authorization": f"Bearer {token}"}, **kwargs)
            except Unauthorized as exc:
                if attempt == 2 or exc.code not in RELOGIN_CODES or not self.client_id:
                    raise
                self._drop_token(token)
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        with self.request(method, path, **kwargs) as response:
            return response.json()

    # -- the API --------------------------------------------------------------------------------
    def services(self) -> list[dict[str, Any]]:
        """``GET /services``: name, version, description, queue, parameters (JSON Schema), workers_online."""
        return self._json("GET", "/services")["services"]

    def submit(self, service: str, doc_url: str, *, callback_url: str | None = None,
               callback_progress: bool = False,
               ann_doc_id: str | None = None, misc: Mapping[str, Any] | None = None,
               idempotency_key: str | None = None, params: Mapping[str, Any] | None = None,
               **more_params: Any) -> "Job":
        """``POST /<service>/process`` and return the job's handle.

        The service's parameters (``GET /services``) are the keyword arguments, or ``params``
        (a dict, for names that clash with this method's own); ``misc`` holds free-form values
        kept with the job; ``callback_url`` gets the final status (webhooks), and with
        ``callback_progress=True`` throttled progress deliveries before it (docs/webhooks.md).

        An ``Idempotency-Key`` is always sent (a new UUID unless given), so the retries of a
        submit answered 503 or cut off by the network never make a second job; pass your own key
        to make a submit repeatable across runs of your program.
        """
        body: dict[str, Any] = {"doc_url": doc_url, "params": {**(params or {}), **more_params}}
        if misc:
            body["misc"] = dict(misc)
        if callback_url:
            body["callback_url"] = callback_url
        if callback_progress:
            body["callback_progress"] = True
        if ann_doc_id:
            body["ann_doc_id"] = ann_doc_id
        key = idempotency_key or str(uuid_mod.uuid4())
        answer = self._json("POST", f"/{quote(service, safe='')}/process", json=body, post_retries=True,
                            headers={"Idempotency-Key": key})
        return Job(self, answer["uuid"], service)

    def job(self, uuid: str, service: str | None = None) -> "Job":
        """A handle on an existing job."""
        return Job(self, uuid, service)

    def status(self, uuid: str) -> dict[str, Any]:
        """``GET /jobs/<uuid>``: the job's record (service, params, times) and its status fields."""
        return self._json("GET", f"/jobs/{_segment(uuid)}")

    def cancel(self, uuid: str) -> dict[str, Any]:
        """``DELETE /jobs/<uuid>``: cancel a queued or running job; returns its status (a running
        job may still show PROGRESS for about a second before REVOKED)."""
        return self._json("DELETE", f"/jobs/{_segment(uuid)}")

    def jobs(self, *, service: str | None = None, status: str | None = None, since: str | None = None,
             until: str | None = None, oldest_first: bool = False, all_owners: bool = False,
             page_size: int = 50, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The caller's jobs (``GET /jobs``), newest first, following ``next_cursor`` page after page.

        ``since``/``until`` are ISO 8601 times; ``all_owners=True`` (admin tokens) lists everyone's;
        ``limit`` stops after that many jobs.
        """
        query: dict[str, Any] = {"limit": max(1, min(200, page_size if limit is None else min(page_size, limit)))}
        for name, value in (("service", service), ("status", status), ("since", since), ("until", until)):
            if value:
                query[name] = value
        if oldest_first:
            query["sort"] = "created_at"
        if all_owners:
            query["all"] = "true"
        count = 0
        while True:
            page = self._json("GET", "/jobs", params=query)
            for item in page["jobs"]:
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def wait(self, uuid: str, progress: Callable[[dict[str, Any]], Any] | None = None, *,
             timeout: float | None = None, events: bool = True, check: bool = False) -> dict[str, Any]:
        """Wait for the job to finish and return its final status body.

        ``progress(status)`` is called with each new status body (the final one included). The
        event stream ``GET /jobs/<uuid>/events`` is read (resuming with ``Last-Event-ID`` when it
        ends or breaks); where the gateway has none, or it keeps failing, the status is polled
        with a backoff (0.5 s up to 5 s). ``events=False`` polls from the start.

        Raises:
            WaitTimeout: ``timeout`` seconds passed first.
            JobFailed: ``check=True`` and the job ended FAILURE, REVOKED or EXPIRED.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watcher = _Watcher(progress)
        final = None
        if events:
            final = self._wait_events(uuid, watcher, deadline)
        if final is None:
            final = self._wait_polling(uuid, watcher, deadline)
        if check and final["status"] != "SUCCESS":
            raise JobFailed(final)
        return final

    def _remaining(self, deadline: float | None, watcher: "_Watcher", uuid: str) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"job {uuid} did not finish in time (last status "
                              f"{(watcher.last or {}).get('status', 'unknown')})", watcher.last)
        return left

    def _wait_events(self, uuid: str, watcher: "_Watcher", deadline: float | None) -> dict[str, Any] | None:
        """Read the event stream until the result; None when polling should take over."""
        last_id, failures, retry_s = "", 0, 1.0
        while True:
            left = self._remaining(deadline, watcher, uuid)
            read_timeout = 60.0 if left is None else max(0.5, min(60.0, left))
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            opened = time.monotonic()
            got_event = False
            try:
                with self.request("GET", f"/jobs/{_segment(uuid)}/events", headers=headers, stream=True,
                                  timeout=(self.timeout, read_timeout)) as answer:
                    if not answer.headers.get("Content-Type", "").startswith("text/event-stream"):
                        return None
                    for event in _sse_events(answer):
                        if "retry" in event:
                            retry_s = min(max(event["retry"] / 1000.0, 0.1), 10.0)
                        if "data" not in event:
                            continue
                        if event.get("id"):
                            last_id = event["id"]
                        try:
                            body = json.loads(event["data"])
                        except ValueError:
                            continue
                        got_event = True
                        watcher.see(body)
                        if event.get("event") == "result" or body.get("status") in FINISHED:
                            return body
                failures = 0
            except (NotFound, MethodNotAllowed) as exc:
                if exc.code in (201, None) or isinstance(exc, MethodNotAllowed):
                    return None                       # a gateway without the event stream
                raise
            except (ConnectionFailed, Unavailable, ServerError, requests.RequestException):
                failures += 1
                if failures >= 3:
                    return None             # polling takes over (with its own retries)
            left = self._remaining(deadline, watcher, uuid)
            # A stream the server ended on purpose is resumed at once; a quick or broken one after ``retry``.
            if failures or (not got_event and time.monotonic() - opened < 1.0):
                time.sleep(retry_s if left is None else min(retry_s, left))

    def _wait_polling(self, uuid: str, watcher: "_Watcher", deadline: float | None) -> dict[str, Any]:
        interval = 0.5
        while True:
            body = self.status(uuid)
            changed = watcher.see(body)
            if body.get("status") in FINISHED:
                return body
            interval = 0.5 if changed else min(interval * 1.5, 5.0)
            left = self._remaining(deadline, watcher, uuid)
            time.sleep(interval if left is None else min(interval, left))

    def download(self, uuid: str, name: str, output_dir: str | os.PathLike = ".", *,
                 filename: str | None = None, step: str | None = None, chunk_size: int = 1 << 16) -> Path:
        """Stream output ``name`` of a job into ``output_dir`` and return the file's path.

        A pipeline serves its steps' outputs; ``step`` names the step when two made the same name.

        The file is named after the output, made safe (no directories, no leading dots), unless
        ``filename`` is given. It appears complete or not at all (written to a ``.part`` file
        first, then renamed over any file of that name); an interrupted transfer resumes with a
        ``Range`` request.
        """
        directory = Path(output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / (filename or safe_filename(name))
        part = target.with_name(target.name + ".part")
        path = f"/jobs/{_segment(uuid)}/outputs/{_segment(name)}"
        written, expected, attempts = 0, None, 0
        try:
            with open(part, "wb") as fh:
                while True:
                    headers = {"Accept-Encoding": "identity"}
                    if written:
                        headers["Range"] = f"bytes={written}-"
                    try:
                        with self.request("GET", path, stream=True, headers=headers,
                                          params={"step": step} if step else None) as answer:
                            if written and answer.status_code != 206:
                                fh.seek(0)               # the range was not honoured: start again
                                fh.truncate()
                                written = 0
                            if answer.status_code == 200 and answer.headers.get("Content-Length", "").isdigit():
                                expected = int(answer.headers["Content-Length"])
                            for chunk in answer.iter_content(chunk_size):
                                fh.write(chunk)
                                written += len(chunk)
                    except (ConnectionFailed, requests.RequestException) as exc:
                        attempts += 1
                        if attempts > 3:
                            raise ConnectionFailed(f"download of {name!r} broke off: {_reason(exc)}") from exc
                        continue
                    if expected is None or written >= expected:
                        break
                    attempts += 1
                    if attempts > 3:
                        raise ConnectionFailed(f"download of {name!r} ended early: {written} of {expected} bytes")
            os.replace(part, target)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return target

    def download_outputs(self, uuid: str, output_dir: str | os.PathLike = ".",
                         status: dict[str, Any] | None = None) -> list[Path]:
        """Download every output a finished job lists in its result; returns the paths written."""
        body = status if status is not None else self.status(uuid)
        return [self.download(uuid, item["name"], output_dir, **saved_as(item, body))
                for item in outputs_of(body)]


def saved_as(item: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """``download`` arguments for one listed output: a pipeline step's output whose name another
    step also made is fetched with its step and saved as ``<step>-<name>``."""
    step = item.get("step")
    if not step or sum(o["name"] == item["name"] for o in outputs_of(status)) < 2:
        return {}
    return {"step": step, "filename": safe_filename(f"{step}-{item['name']}")}


def outputs_of(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``outputs`` a status body's result lists (empty when none)."""
    result = status.get("result")
    outputs = result.get("outputs") if isinstance(result, dict) else None
    return [o for o in outputs or [] if isinstance(o, dict) and o.get("name")]


class Job:
    """A submitted job: ``uuid`` and ``service``, and the calls on it. ``str(job)`` is its uuid."""

    def __init__(self, client: Client, uuid: str, service: str | None = None) -> None:
        self.client, self.uuid, self.service = client, uuid, service
        self.last: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"Job({self.uuid!r}, service={self.service!r})"

    def __str__(self) -> str:
        return self.uuid

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Job):
            return other.uuid == self.uuid
        return isinstance(other, str) and other == self.uuid

    def __hash__(self) -> int:
        return hash(self.uuid)

    def status(self) -> dict[str, Any]:
        self.last = self.client.status(self.uuid)
        self.service = self.service or self.last.get("service")
        return self.last

    def wait(self, progress: Callable[[dict[str, Any]], Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        self.last = self.client.wait(self.uuid, progress, **kwargs)
        return self.last

    def cancel(self) -> dict[str, Any]:
        self.last = self.client.cancel(self.uuid)
        return self.last

    def download(self, name: str | None = None, output_dir: str | os.PathLike = ".") -> list[Path]:
        """Download output ``name``, or every output of the finished job; returns the paths."""
        if name is not None:
            return [self.client.download(self.uuid, name, output_dir)]
        last = self.last if self.last and self.last.get("status") in FINISHED else None
        return self.client.download_outputs(self.uuid, output_dir, last)


class _Watcher:
    """Calls ``progress`` once per new (status, progress) and remembers the last body."""

    def __init__(self, progress: Callable[[dict[str, Any]], Any] | None) -> None:
        self.progress = progress
        self.last: dict[str, Any] | None = None

    def see(self, body: dict[str, Any]) -> bool:
        key = (body.get("status"), body.get("progress"))
        changed = self.last is None or key != (self.last.get("status"), self.last.get("progress"))
        self.last = body
        if changed and self.progress is not None:
            self.progress(body)
        return changed


def _sse_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream as it arrives (fields id, event, data, retry; comments skipped)."""
    buffer = b""
    event: dict[str, Any] = {}
    data: list[str] = []
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while True:
            match = re.search(rb"\r\n|\n|\r", buffer)
            if match is None or (match.group() == b"\r" and match.end() == len(buffer)):
                break                                    # a lone \r at the end may be half of \r\n
            line, buffer = buffer[:match.start()].decode("utf-8", "replace"), buffer[match.end():]
            if line == "":
                if data:
                    event["data"] = "\n".join(data)
                if event:
                    yield event
                event, data = {}, []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field in ("id", "event"):
                event[field] = value
            elif field == "retry" and value.isdigit():
                yield {"retry": int(value)}


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _reason(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, in one line."""
    reason: Any = exc
    for _ in range(5):
        inner = getattr(reason, "reason", None) or (reason.args[0] if getattr(reason, "args", None) else None)
        if inner is None or inner is reason or isinstance(inner, str):
            break
        reason = inner
    text = str(reason)
    return " ".join(text.split())[:300] or type(exc).__name__
