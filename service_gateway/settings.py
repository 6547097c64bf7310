"""Settings: defaults declared here, a TOML settings file over them, ``SG_*`` environment over both.

Every setting is declared once in :data:`SETTINGS` with its type, default and a one-line doc;
docs/configuration.md is checked against this table by the tests.
"""
from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import SettingsError

ENV_PREFIX = "SG_"
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "settings.toml"


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


#: The one table of settings. Order is the order of docs/configuration.md.
SETTINGS: tuple[Setting, ...] = (
    Setting("config", str, "", "Path of a TOML settings file read before the environment "
            "(default: config/settings.toml of the checkout when present)."),
    Setting("data_dir", str, "./var", "Directory for the embedded default's SQLite files, local outputs "
            "and the generated JWT secret."),
    Setting("broker_url", str, "", "Celery broker URL, e.g. amqp://guest:guest@127.0.0.1:5672//. "
            "Empty = embedded SQLite broker under data_dir."),
    Setting("result_backend", str, "", "Celery result backend, e.g. redis://127.0.0.1:6379/0 or "
            "db+postgresql://.... Empty = SQLite file under data_dir."),
    Setting("database_url", str, "", "SQLAlchemy URL of the job store, e.g. postgresql://user@host/db. "
            "Empty = SQLite file under data_dir."),
    Setting("jwt_secret", str, "", "HMAC secret that signs tokens. Required when a broker is configured; "
            "on the embedded default a random one is kept in data_dir/jwt_secret."),
    Setting("jwt_expires_s", int, 3600, "Lifetime of access tokens (POST /auth/access-token, and `sg token` "
            "by default), in seconds."),
    Setting("jwt_issuer", str, "service-gateway", "The iss claim the gateway puts in tokens and requires."),
    Setting("jwt_audience", str, "service-gateway", "The aud claim the gateway puts in tokens and requires."),
    Setting("output_url", str, "", "Where workers store outputs: file:///path. Empty = data_dir/outputs."),
    Setting("allow_private_urls", bool, False, "Allow doc_url to point at loopback/private/link-local "
            "addresses (true under run_local.py)."),
    Setting("file_roots", list, [], "Directories under which file:// doc_urls are allowed "
            "(comma separated in the environment). Empty = file:// refused."),
    Setting("storage_doc_url", str, "", "URL template resolving POST /<svc>/annotate/<storage_doc_id>, "
            "with {storage_doc_id}; the original's GET_STORAGE_DOC_REQ_URL."),
    Setting("annotation_storage_url", str, "", "URL template the worker POSTs a job's result to when it was "
            "submitted with ann_doc_id, with {ann_doc_id}; the original's POST_ANNOTATIONS_REQ_URL."),
    Setting("annotation_storage_retries", int, 4, "Retries of an annotation-storage POST that failed "
            "(connection error or 5xx), with exponential backoff, before the job fails with code 302."),
    Setting("annotation_storage_timeout_s", float, 30.0, "Connect and read timeout of one annotation-storage POST."),
    Setting("service_modules", list, ["workers.services.probe", "workers.services.transcode",
                                      "workers.services.thumbnails", "workers.services.transitions",
                                      "workers.services.loudness", "workers.services.speech",
                                      "workers.services.faces"],
            "Python modules that declare the services (light imports only)."),
    Setting("result_expires_s", int, 86400, "How long the result backend keeps a job's result; after "
            "that its status is EXPIRED."),
    Setting("status_cache_s", float, 30.0, "How long a gateway process may answer a SUCCESS job's status from "
            "memory (never past its result's expiry); 0 reads the job store and result backend every time."),
    Setting("progress_interval_s", float, 0.5, "Minimum time between two progress writes of one job."),
    Setting("cancel_poll_interval_s", float, 0.5, "How often a running job checks the job store for a "
            "cancel request."),
    Setting("download_timeout_s", float, 30.0, "Connect and read timeout of media downloads."),
    Setting("download_deadline_s", float, 3600.0, "Longest a whole media download may take (connection, "
            "redirects, body), whatever its pace; past it the download fails as a transient fault (301), retried."),
    Setting("download_max_bytes", int, 20 * 1024**3, "Largest media file a worker downloads."),
    Setting("max_request_bytes", int, 1024 * 1024, "Largest request body the gateway accepts (413 above)."),
    Setting("publish_timeout_s", float, 5.0, "How long a submit waits for the broker to confirm the task "
            "before answering 503."),
    Setting("retry_after_s", int, 5, "Retry-After sent with 503 answers."),
    Setting("embedded_polling_interval_s", float, 0.05, "How often workers poll the embedded SQLite broker."),
    Setting("worker_heartbeat_s", float, 10.0, "How often a worker records itself as online in the job store."),
    Setting("time_limit_s", float, 0.0, "Longest a job may run before it fails with code 108 "
            "(its children killed); 0 = no limit. Per service: time_limits."),
    Setting("time_limits", list, [], "Per-service time limits overriding time_limit_s, as service=seconds "
            "(e.g. transcode=7200,faces=1800; comma separated in the environment)."),
    Setting("time_limit_grace_s", float, 60.0, "The hard time limit: this long past a job's time limit (which "
            "stops it cleanly with code 108), a job that did not stop (a handler stuck outside the SDK) has its "
            "pool process killed by Celery; its lease then expires and it is recovered as after a lost worker. "
            "Per service: time_limit_graces."),
    Setting("time_limit_graces", list, [], "Per-service hard time limit graces overriding time_limit_grace_s, as "
            "service=seconds (e.g. transcode=300)."),
    Setting("job_lease_s", float, 30.0, "A running job renews its lease in the job store every third of this; "
            "a job whose lease expired (its worker died) is requeued, or failed with code 110 past its retries."),
    Setting("max_retries", int, 3, "Times a job is run again after a transient fault (download timeout, 5xx "
            "from the media server) or a lost worker, before it fails. Per service: retries."),
    Setting("retries", list, [], "Per-service retry limits overriding max_retries, as service=count "
            "(e.g. transcode=5,probe=1)."),
    Setting("retry_backoff_s", float, 2.0, "First wait before a retry; it doubles with each attempt (with "
            "full jitter) up to retry_backoff_max_s."),
    Setting("retry_backoff_max_s", float, 300.0, "Longest wait between two attempts of a job."),
    Setting("state_write_retry_s", float, 300.0, "How long a worker keeps retrying the final state of a job "
            "while the result backend or job store is unreachable."),
    Setting("idempotency_ttl_s", int, 86400, "How long an Idempotency-Key is remembered (per client)."),
    Setting("proxy_hops", int, 0, "Reverse proxies in front of the gateway whose X-Forwarded-For/-Proto/-Host/"
            "-Prefix headers are trusted (werkzeug ProxyFix); 0 = none."),
    Setting("infra_target_drain_s", float, 600.0, "GET /infrastructure recommends enough workers to drain each "
            "queue's backlog within this many seconds."),
    Setting("infra_window_s", float, 900.0, "Recent past over which GET /infrastructure measures throughput and "
            "mean job duration."),
    Setting("sse_poll_s", float, 0.5, "How often an event stream (GET /jobs/<uuid>/events) looks for a change."),
    Setting("sse_max_s", float, 30.0, "Longest life of one event stream; the client reconnects with Last-Event-ID "
            "(EventSource does it by itself), so a stream never holds a gateway thread for long."),
    Setting("public_url", str, "", "The gateway's public base URL (https://gw.example.org): makes output URLs "
            "absolute in webhook bodies, which workers send without a request to take it from."),
    Setting("webhook_retries", int, 5, "Retries of a webhook delivery that failed (connection error or non-2xx), "
            "with exponential backoff from webhook_backoff_s."),
    Setting("webhook_backoff_s", float, 2.0, "First wait before a webhook retry; it doubles each time (with jitter)."),
    Setting("webhook_timeout_s", float, 10.0, "Connect and read timeout of one webhook delivery."),
    Setting("webhook_progress_interval_s", float, 5.0, "Minimum time between two progress deliveries of one job "
            "that asked for them (callback_progress); each is tried once, only the latest value is sent."),
    Setting("worker_metrics_port", int, 0, "Port on which each worker serves its Prometheus metrics (job "
            "durations, queue waits); 0 = off."),
    Setting("flower_allow_open", bool, False, "Let `celery -A workers flower` serve without auth; by default it "
            "refuses to start unless FLOWER_BASIC_AUTH or Flower's OAuth (FLOWER_AUTH) is set."),
    Setting("work_dir", str, "", "Parent of the private temp dirs of running jobs. Empty = system temp dir."),
    Setting("log_format", str, "json", "json or text."),
    Setting("log_level", str, "INFO", "Log level of gateway and workers."),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(setting: Setting, value: Any, origin: str) -> Any:
    """Convert a raw value from a file or the environment to the setting's type."""
    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{origin}: expected {expected}, got {value!r}")

    kind = setting.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad("true or false")
    if kind in (int, float):
        if isinstance(value, bool):
            raise bad("a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise bad("an integer" if kind is int else "a number") from None
        if number < 0:
            raise bad("a number >= 0")
        return number
    if kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad("a list of strings")
    if not isinstance(value, str):
        raise bad("a string")
    return value


@dataclass
class Settings:
    """Resolved settings; attribute access by setting name (``settings.broker_url``)."""

    values: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: everything runs on SQLite files under data_dir."""
        return not self.broker_url

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def broker(self) -> str:
        """The broker URL in force (the embedded SQLite file when none is configured)."""
        return self.broker_url or f"sqla+sqlite:///{self.data_path / 'broker.sqlite'}"

    @property
    def backend(self) -> str:
        """The result backend URL in force."""
        return self.result_backend or f"db+sqlite:///{self.data_path / 'results.sqlite'}"

    @property
    def database(self) -> str:
        """The job store URL in force."""
        return self.database_url or f"sqlite:///{self.data_path / 'jobs.sqlite'}"

    @property
    def output_dir(self) -> Path:
        """The local directory outputs are stored under."""
        if self.output_url:
            return Path(self.output_url[len("file://"):]).resolve()
        return self.data_path / "outputs"

    def time_limit_for(self, service: str) -> float:
        """The time limit of a service's jobs in seconds (0 = none)."""
        for item in self.time_limits:
            name, _, seconds = item.partition("=")
            if name.strip() == service:
                return float(seconds)
        return self.time_limit_s

    def hard_time_limit_for(self, service: str) -> float:
        """Celery's hard time limit of a service's jobs: the time limit plus its grace (0 = none)."""
        soft = self.time_limit_for(service)
        if not soft:
            return 0.0
        grace = self.time_limit_grace_s
        for item in self.time_limit_graces:
            name, _, seconds = item.partition("=")
            if name.strip() == service:
                grace = float(seconds)
        return soft + grace

    def max_retries_for(self, service: str) -> int:
        """How many times a job of ``service`` may be run again after a transient fault."""
        for item in self.retries:
            name, _, count = item.partition("=")
            if name.strip() == service:
                return int(count)
        return self.max_retries

    @property
    def secret(self) -> str:
        """The JWT secret in force."""
        return self.jwt_secret or embedded_jwt_secret(self.data_path)

    def as_env(self) -> dict[str, str]:
        """Return the settings as ``SG_*`` variables, for handing to child processes."""
        env = {}
        for s in SETTINGS:
            value = self.values[s.name]
            if s.kind is list:
                value = ",".join(value)
            elif s.kind is bool:
                value = "true" if value else "false"
            env[s.env] = str(value)
        return env


def load_settings(overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve settings: defaults, then the settings file, then ``SG_*`` variables, then overrides.

    Args:
        overrides: values by setting name that win over everything (tests, run_local.py).
        environ: the environment to read (default ``os.environ``).

    Raises:
        SettingsError: a setting is unknown, malformed or missing; the message names it.
    """
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    values = {s.name: s.default for s in SETTINGS}
    extra: dict[str, Any] = {}

    config_path = overrides.get("config") or environ.get("SG_CONFIG") or ""
    if config_path or REPO_CONFIG.is_file():
        path = Path(config_path) if config_path else REPO_CONFIG
        file_values = _read_file(path, explicit=bool(config_path))
        for key, raw in file_values.items():
            if isinstance(raw, dict):
                extra[key] = raw          # tables (e.g. [canarie]) are for the parts that own them
            elif key in _BY_NAME:
                values[key] = _coerce(_BY_NAME[key], raw, f"{path}: {key}")
            else:
                raise SettingsError(f"{path}: unknown setting {key!r}")
        values["config"] = str(path)

    for s in SETTINGS:
        if s.env in environ and s.name != "config":
            values[s.name] = _coerce(s, environ[s.env], s.env)
    for key, raw in overrides.items():
        if key not in _BY_NAME:
            raise SettingsError(f"unknown setting {key!r}")
        values[key] = _coerce(_BY_NAME[key], raw, key)

    settings = Settings(values, extra)
    _check(settings)
    return settings


def _read_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"SG_CONFIG: settings file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None


_CHECKS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("log_format", lambda v: v in ("json", "text"), "json or text"),
    ("log_level", lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"),
    ("output_url", lambda v: v == "" or v.startswith("file://"), "a file:// URL"),
    ("storage_doc_url", lambda v: v == "" or "{storage_doc_id}" in v, "a URL containing {storage_doc_id}"),
    ("annotation_storage_url", lambda v: v == "" or ("{ann_doc_id}" in v and v.startswith(("http://", "https://"))),
     "an http(s) URL containing {ann_doc_id}"),
    ("time_limits", lambda v: all(_time_limit_item(i) for i in v), "service=seconds items, seconds > 0"),
    ("time_limit_grace_s", lambda v: v > 0, "a number > 0"),
    ("time_limit_graces", lambda v: all(_time_limit_item(i) for i in v), "service=seconds items, seconds > 0"),
    ("retries", lambda v: all(_time_limit_item(i.replace("=0", "=0.5")) and i.split("=")[1].strip().isdigit()
                              for i in v), "service=count items"),
    ("job_lease_s", lambda v: v >= 2, "a number >= 2"),
    ("progress_interval_s", lambda v: v > 0, "a number > 0"),
    ("webhook_progress_interval_s", lambda v: v > 0, "a number > 0"),
    ("cancel_poll_interval_s", lambda v: 0 < v <= 1.5, "a number in (0, 1.5] (cancel must land within 2 s)"),
    ("embedded_polling_interval_s", lambda v: 0 < v <= 5, "a number in (0, 5]"),
)


def _time_limit_item(item: str) -> bool:
    name, sep, seconds = item.partition("=")
    try:
        return bool(sep and name.strip() and float(seconds) > 0)
    except ValueError:
        return False


def _check(settings: Settings) -> None:
    for name, ok, expected in _CHECKS:
        if not ok(settings.values[name]):
            raise SettingsError(f"{_BY_NAME[name].env}: expected {expected}, got {settings.values[name]!r}")
    if not settings.embedded and not settings.jwt_secret:
        raise SettingsError("SG_JWT_SECRET: required when SG_BROKER_URL is set (production); "
                            "set it to a long random string shared by gateway and `sg token`")
    if settings.jwt_secret and len(settings.jwt_secret) < 32:
        raise SettingsError("SG_JWT_SECRET: too short, use at least 32 characters (HS256 wants a 256-bit key)")


def embedded_jwt_secret(data_dir: Path) -> str:
    """Return the embedded default's JWT secret, creating it (mode 0600) on first use."""
    path = data_dir / "jwt_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        tmp = data_dir / f".jwt_secret.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
        try:
            os.link(tmp, path)        # atomic: a file that exists is always complete
        except FileExistsError:       # another process made it first: theirs wins
            secret = path.read_text().strip()
        finally:
            tmp.unlink()
        return secret
