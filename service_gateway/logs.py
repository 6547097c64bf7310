"""Logging set-up shared by gateway and workers: JSON lines carrying the job id."""
from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar

#: The job the current code works on; every log record carries it as ``job_id``.
current_job_id: ContextVar[str | None] = ContextVar("current_job_id", default=None)
#: The HTTP request being served (X-Request-ID), carried into the job's task so worker lines match.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class JobIdFilter(logging.Filter):
    """Stamp records with the current job id and request id, unless the call gave them in ``extra``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_id", None):
            record.job_id = current_job_id.get()
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id.get()
        return True


def init_app(app) -> None:
    """Give every request an id (the client's X-Request-ID if sane, else a new one), echoed in the answer."""
    from flask import g, request

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        g._request_id_token = current_request_id.set(g.request_id)

    @app.after_request
    def _echo(response):
        if "request_id" in g:
            response.headers["X-Request-ID"] = g.request_id
        return response

    @app.teardown_request
    def _reset(_exc) -> None:
        token = g.pop("_request_id_token", None)
        if token is not None:
            current_request_id.reset(token)


def configure_logging(log_format: str, level: str) -> None:
    """Send the root logger to stderr as JSON lines (or plain text), replacing other handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobIdFilter())
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(job_id)s %(request_id)s %(process)d",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"},
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(job_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
