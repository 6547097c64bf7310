"""Usage for billing: GET /usage (the caller's own) and GET /admin/usage (every client), JSON or CSV."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

from flask import Blueprint, Response, g, jsonify, request

from ..auth import require_auth
from ..errors import APIError
from ..quotas import quota_usage
from . import runtime
from .jobs import _time_arg

bp = Blueprint("usage", __name__)

CSV_FIELDS = ("period", "owner", "service", "jobs", "succeeded", "media_seconds", "wall_seconds", "cpu_seconds",
              "output_bytes")
DEFAULT_PERIOD_DAYS = 31


def _report(owner: str | None):
    rt = runtime()
    until = _time_arg("until") or datetime.now(timezone.utc)
    since = _time_arg("since") or until - timedelta(days=DEFAULT_PERIOD_DAYS)
    service = request.args.get("service") or None
    if service and service not in rt.services:
        raise APIError(202, f"unknown service {service!r}; GET /services lists the services")
    rows = rt.clients.usage(owner=owner, since=since, until=until, service=service,
                            group=request.args.get("group", "day"))
    fmt = request.args.get("format", "json")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        name = f"usage-{since:%Y%m%d}-{until:%Y%m%d}.csv"
        return Response(out.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    if fmt != "json":
        raise APIError(204, "format: must be json or csv")
    body = {"since": since.isoformat(), "until": until.isoformat(), "usage": rows,
            "totals": {k: round(sum(r[k] for r in rows), 3) for k in CSV_FIELDS[3:]}}
    if owner is not None and g.identity.client_id:
        body["quotas"] = quota_usage(rt.store, owner, g.identity.quotas)
    return jsonify(body)


@bp.get("/usage")
@require_auth
def own_usage():
    """The caller's usage by ``group`` (day or month) and service: ``?since=&until=&service=&format=csv``."""
    return _report(g.identity.subject)


@bp.get("/admin/usage")
@require_auth
def all_usage():
    """Every client's usage (``?client=<id>`` for one), as /usage."""
    g.identity.require_admin()
    return _report(request.args.get("client") or None)
