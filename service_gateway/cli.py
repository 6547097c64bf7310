"""The ``sg`` command: the API client (submit, wait, status, cancel, jobs, services, download) and the
operator's tools (tokens, clients, the failure list, database upgrades, local runs of a service).

The client commands talk to a gateway over HTTP only (``service_gateway.client``): they read
``--url``/``SG_URL``, ``--client-id``/``SG_CLIENT_ID``, ``--secret``/``SG_SECRET`` or
``--token``/``SG_TOKEN`` and the client config file, never the server's settings. The operator
commands read the server's settings (``SG_JWT_SECRET``, ``SG_DATABASE_URL``, ...).
"""
from __future__ import annotations

import argparse
import sys

from .errors import APIError, ServiceGatewayError, SettingsError
from .settings import load_settings


def cmd_token(args: argparse.Namespace) -> int:
    """Print a signed token from the configured secret (as the original's `python -m VestaRestPackage.jwt_`)."""
    from .auth import make_token
    settings = load_settings()
    expires = args.expires_in if args.expires_in is not None else settings.jwt_expires_s
    print(make_token(settings.secret, args.sub, admin=args.admin, expires_in_s=expires,
                     issuer=settings.jwt_issuer, audience=settings.jwt_audience))
    return 0


def _clients():
    """The job store's clients, and the known service names (for checking scopes and quotas)."""
    from .clients import Clients
    from .services import load_services
    from .store import JobStore
    settings = load_settings()
    store = JobStore(settings.database)
    store.migrate()
    return Clients(store), set(load_services(settings.service_modules))


def _show(args: argparse.Namespace, body: dict, text: str) -> int:
    import json
    print(json.dumps(body, indent=2) if args.json else text)
    return 0


def cmd_clients_add(args: argparse.Namespace) -> int:
    from .clients import ADMIN_SCOPE, check_quotas, check_scopes
    clients, services = _clients()
    scopes = check_scopes(args.scopes, services) + ([ADMIN_SCOPE] if args.admin else [])
    quotas = check_quotas(_quota_args(args.quota), services)
    created = clients.add(args.name, scopes, quotas)
    body = {**created.client.to_dict(), "secret": created.secret}
    return _show(args, body, f"client_id: {created.client.client_id}\nsecret:    {created.secret}\n"
                             f"scopes:    {', '.join(created.client.scopes) or '(none)'}\n"
                             "The secret is shown this once; exchange both at POST /auth/access-token.")


def cmd_clients_list(args: argparse.Namespace) -> int:
    clients, _ = _clients()
    rows = [c.to_dict() for c in clients.all()]
    lines = [f"{'client_id':<20} {'name':<24} {'enabled':<8} scopes / quotas"]
    lines += [f"{r['client_id']:<20} {r['name'][:24]:<24} {str(r['enabled']).lower():<8} "
              f"{','.join(r['scopes']) or '-'} {r['quotas'] or ''}" for r in rows]
    return _show(args, {"clients": rows}, "\n".join(lines))


def _found(clients, ident: str):
    client = clients.find(ident)
    if client is None:
        raise SettingsError(f"no client with id or name {ident!r} (sg clients list)")
    return client


def cmd_clients_enable(args: argparse.Namespace) -> int:
    clients, _ = _clients()
    client = clients.update(_found(clients, args.client).client_id, enabled=args.enabled, revoke_tokens=True)
    state = "enabled" if client.enabled else "disabled; its tokens no longer work"
    return _show(args, client.to_dict(), f"{client.client_id} ({client.name}) {state}")


def cmd_clients_rotate(args: argparse.Namespace) -> int:
    clients, _ = _clients()
    rotated = clients.rotate_secret(_found(clients, args.client).client_id)
    return _show(args, {**rotated.client.to_dict(), "secret": rotated.secret},
                 f"client_id: {rotated.client.client_id}\nsecret:    {rotated.secret}\n"
                 "Its previous secret and tokens no longer work.")


def cmd_clients_scopes(args: argparse.Namespace) -> int:
    from .clients import check_scopes
    clients, services = _clients()
    client = clients.update(_found(clients, args.client).client_id, scopes=check_scopes(args.scopes, services))
    return _show(args, client.to_dict(), f"{client.client_id} scopes: {', '.join(client.scopes) or '(none)'}")


def cmd_clients_quota(args: argparse.Namespace) -> int:
    from .clients import QUOTAS, check_quotas, set_quota
    clients, services = _clients()
    client = _found(clients, args.client)
    if args.quota not in QUOTAS:
        raise SettingsError(f"unknown quota {args.quota!r}; known: {', '.join(QUOTAS)}")
    value = None if args.value in ("none", "null", "-") else float(args.value)
    quotas = check_quotas(set_quota(client.quotas, args.quota, value, args.service), services)
    client = clients.update(client.client_id, quotas=quotas)
    return _show(args, client.to_dict(), f"{client.client_id} quotas: {client.quotas or '(none)'}")


def cmd_jobs_failed(args: argparse.Namespace) -> int:
    """List jobs that ended in FAILURE (the failure list), newest first."""
    from .store import JobStore
    store = JobStore(load_settings().database)
    page, _ = store.list(owner=None, service=args.service, status="FAILURE", limit=args.limit)
    rows = [{**j.to_dict(), "error": {"code": j.error_code, "message": j.error_message}} for j in page]
    lines = [f"{j['uuid']}  {j['service']:<12} {j['finished_at']}  [{j['error']['code']}] {j['error']['message']}"
             for j in rows] or ["no failed jobs"]
    return _show(args, {"jobs": rows}, "\n".join(lines))


def cmd_jobs_requeue(args: argparse.Namespace) -> int:
    """Run a FAILURE job again (attempts reset), as POST /admin/jobs/<uuid>/requeue."""
    from .jobs import requeue_failed
    from .runtime import Runtime
    rt = Runtime(load_settings())
    job = rt.store.get(args.uuid)
    if job is None:
        raise SettingsError(f"no job {args.uuid!r}")
    row = requeue_failed(rt, job, "requeued with sg jobs requeue")
    return _show(args, row.to_dict(), f"{row.uuid} requeued ({row.service}); it is PENDING again")


def cmd_infra(args: argparse.Namespace) -> int:
    """Print GET /infrastructure's report: per queue backlog, workers and the recommended worker count."""
    from .infrastructure import report
    from .runtime import Runtime
    body = report(Runtime(load_settings()))
    lines = [f"{'queue':<12} {'backlog':>7} {'running':>7} {'procs':>5} {'jobs/min':>8} {'mean s':>7} {'advice':>6}"]
    for q in body["queues"]:
        mean = f"{q['mean_duration_s']:.1f}" if q["mean_duration_s"] is not None else "-"
        lines.append(f"{q['queue']:<12} {q['backlog']:>7} {q['running']:>7} {q['worker_processes']:>5} "
                     f"{q['throughput_per_min']:>8} {mean:>7} {q['recommended_worker_processes']:>6}")
    lines += ["", *[f"{q['queue']}: {q['reasoning']}" for q in body["queues"] if q["backlog"] or q["running"]]]
    return _show(args, body, "\n".join(lines))


def _quota_args(items: list[str]) -> dict:
    """--quota max_in_flight=2 --quota transcode.max_jobs_per_day=10 -> the quotas object."""
    from .clients import set_quota
    quotas: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        service, _, name = key.rpartition(".")
        if not sep:
            raise SettingsError(f"--quota {item!r}: use NAME=VALUE or SERVICE.NAME=VALUE")
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(f"--quota {item!r}: the value must be a number") from None
        quotas = set_quota(quotas, name, int(number) if number.is_integer() else number, service or None)
    return quotas


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring the job store schema to the newest revision."""
    from .migrations import current
    from .store import JobStore
    store = JobStore(load_settings().database)
    store.migrate()
    print(f"job store at revision {current(store.engine)}")
    return 0


def cmd_run_order(args: argparse.Namespace) -> int:
    """Run one service in this process on a JSON order file (no broker): how a worker author tries it."""
    from workers.sdk.local import main as run_order_main
    return run_order_main(args.order, args.output)


# -- the client commands: the API over HTTP, configured by flags > SG_URL... > the config file --------
#: exit statuses of the client commands (docs/client.md)
EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_UNREACHABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = (
    0, 1, 2, 3, 4, 5, 130)


def _api(args: argparse.Namespace):
    """The HTTP client for a client command, from its flags, the SG_* client variables and the config file."""
    from .client import Client, load_config
    config = load_config(args.config, overrides={"url": args.url, "client_id": args.client_id,
                                                 "secret": args.secret, "token": args.token})
    return Client(config.get("url", ""), config.get("client_id"), config.get("secret"), token=config.get("token"))


def _params(items: list[str] | None, flag: str) -> dict:
    from .client import parse_param
    values = {}
    for item in items or []:
        try:
            key, value = parse_param(item)
        except ValueError as exc:
            raise SettingsError(f"{flag} {exc}") from None
        values[key] = value
    return values


def _print_json(body) -> None:
    import json
    print(json.dumps(body, indent=2, default=str))


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _error_text(result) -> str:
    from .errors import CODES
    if not isinstance(result, dict):
        return ""
    code = result.get("code")
    name = CODES[code][1] if code in CODES else ""
    return f"[{code}{' ' + name if name else ''}] {result.get('message', '')}".strip()


class _ProgressBar:
    """A tqdm bar on stderr for a job's progress 0-100, its status as the postfix."""

    def __init__(self, service: str | None, uuid: str) -> None:
        import shutil

        from tqdm import tqdm
        self.name = f"{service or 'job'} {uuid[:8]}"
        # disable=False: drawn on a pipe too (tqdm's \r updates), so logs of CI jobs show the progress.
        # The size: the terminal's, else 100x24 (a pipe, or a pseudo-terminal that reports 0x0 —
        # `script`, some CI runners, `docker exec -t` — where tqdm would hide the bar as off-screen).
        size = shutil.get_terminal_size((100, 24))
        self.bar = tqdm(total=100, desc=f"{self.name} {'PENDING':<8}", unit="%", file=sys.stderr,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}]",
                        ncols=min(size.columns, 120), nrows=max(size.lines, 2), leave=True, disable=False)
        self.piped, self.step = False, ""      # a pipeline: its running step(s) follow the status

    def update(self, body: dict) -> None:
        result = body.get("result")
        if isinstance(result, dict) and "steps" in result:
            self.piped = True
            self.step = result.get("step") or ""
        self.bar.set_description_str(f"{self.name} {body.get('status', ''):<8}"
                                     + (f" {self.step:<14.14}" if self.piped else ""), refresh=False)
        progress = body.get("progress") or 0
        if progress > self.bar.n:
            self.bar.update(progress - self.bar.n)
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _finish(args: argparse.Namespace, api, job_id: str, service: str | None) -> int:
    """Wait for a job (progress bar unless --json), download its outputs, print the result."""
    from .client import outputs_of, saved_as
    bar = None if args.json else _ProgressBar(service, job_id)
    try:
        final = api.wait(job_id, progress=bar.update if bar else None, timeout=args.timeout,
                         events=not args.no_events)
    except KeyboardInterrupt:
        print(f"\nsg: stopped waiting; the job goes on (sg status {job_id}, sg cancel {job_id})", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar:
            bar.close()
    ok = final["status"] == "SUCCESS"
    saved = []
    if ok and not args.no_download:
        for item in outputs_of(final):
            path = api.download(job_id, item["name"], args.output_dir, **saved_as(item, final))
            saved.append({"name": item["name"], "path": str(path), "size": path.stat().st_size})
    if args.json:
        _print_json({**final, "downloaded": saved})
    else:
        print(f"{job_id} {final['status']} ({final.get('service') or service or 'job'})")
        if ok:
            result = final.get("result")
            _print_json(result)
            for step in (result.get("steps") or []) if isinstance(result, dict) else []:
                outputs = ", ".join(o["name"] for o in outputs_of(step)) or "no outputs"
                print(f"step {step.get('name')} ({step.get('service')}): {step.get('status')}, {outputs}")
        else:
            print(f"sg: job {job_id} ended {final['status']}: {_error_text(final.get('result'))}", file=sys.stderr)
        for item in saved:
            print(f"saved {item['path']} ({_size(item['size'])})")
    return EXIT_OK if ok else EXIT_JOB_FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a job (POST /<service>/process); with --wait, follow it to the end and download its outputs."""
    params, misc = _params(args.param, "--param"), _params(args.misc, "--misc")
    api = _api(args)
    job = api.submit(args.service, args.doc_url, params=params, misc=misc, callback_url=args.callback_url,
                     callback_progress=args.callback_progress, ann_doc_id=args.ann_doc_id,
                     idempotency_key=args.idempotency_key)
    if args.wait:
        if not args.json:
            print(f"submitted {job.uuid}", file=sys.stderr)
        return _finish(args, api, job.uuid, args.service)
    if args.json:
        _print_json({"uuid": job.uuid, "service": args.service})
    else:
        print(job.uuid)
    return EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    """Follow an existing job to its end (as submit --wait)."""
    api = _api(args)
    return _finish(args, api, args.uuid, api.status(args.uuid).get("service"))


def cmd_status(args: argparse.Namespace) -> int:
    """GET /jobs/<uuid>: the job's record and status."""
    body = _api(args).status(args.uuid)
    if args.json:
        _print_json(body)
        return EXIT_OK
    from .client import outputs_of
    rows = [("uuid", body.get("uuid")), ("service", body.get("service")),
            ("status", f"{body.get('status')} {body.get('progress', 0)}%"), ("doc_url", body.get("doc_url")),
            ("params", _compact(body.get("params"))), ("created", body.get("created_at")),
            ("started", body.get("started_at")), ("finished", body.get("finished_at"))]
    result = body.get("result")
    if body.get("status") in ("FAILURE", "REVOKED"):
        rows.append(("error", _error_text(result)))
    elif body.get("status") == "SUCCESS":
        rows += [("output", f"{o['name']} ({_size(o.get('size'))})") for o in outputs_of(body)]
        rows.append(("result", _compact(result)))
    elif body.get("status") == "EXPIRED":
        rows.append(("result", (result or {}).get("message", "expired") if isinstance(result, dict) else "expired"))
    print("\n".join(f"{k + ':':<10}{v}" for k, v in rows if v not in (None, "")))
    return EXIT_OK


def _compact(value, width: int = 200) -> str:
    import json
    if value in (None, {}, []):
        return ""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_cancel(args: argparse.Namespace) -> int:
    """DELETE /jobs/<uuid>: cancel a queued or running job."""
    body = _api(args).cancel(args.uuid)
    if args.json:
        _print_json(body)
    elif body.get("status") == "REVOKED":
        print(f"{args.uuid} REVOKED")
    else:
        print(f"{args.uuid} cancel requested ({body.get('status')} {body.get('progress', 0)}%); "
              "a running job stops within about a second")
    return EXIT_OK


def cmd_jobs_list(args: argparse.Namespace) -> int:
    """GET /jobs: the caller's jobs, newest first, page after page."""
    api = _api(args)
    rows = list(api.jobs(service=args.service, status=args.status, since=args.since, until=args.until,
                         oldest_first=args.oldest_first, all_owners=args.all, limit=args.limit or None))
    if args.json:
        _print_json({"jobs": rows})
        return EXIT_OK
    lines = [f"{'uuid':<36}  {'service':<12} {'status':<9} {'%':>3}  created"]
    lines += [f"{j['uuid']:<36}  {j['service'][:12]:<12} {j['status']:<9} {j.get('progress') or 0:>3}  "
              f"{j.get('created_at') or ''}" for j in rows]
    print("\n".join(lines) if rows else "no jobs")
    return EXIT_OK


def cmd_services(args: argparse.Namespace) -> int:
    """GET /services: each service with its parameters."""
    items = _api(args).services()
    if args.json:
        _print_json({"services": items})
        return EXIT_OK
    out = []
    for spec in items:
        out.append(f"{spec['name']} {spec.get('version', '')}  (queue {spec.get('queue')}, "
                   f"{spec.get('workers_online', 0)} worker slots online)")
        if spec.get("description"):
            out.append(f"  {spec['description']}")
        schema = spec.get("parameters") or {}
        required = set(schema.get("required") or ())
        for name, prop in (schema.get("properties") or {}).items():
            out.append(f"    {name:<16} {_kind(prop)}{' (required)' if name in required else ''}"
                       f"{'  ' + prop['description'] if prop.get('description') else ''}")
        out.append("")
    print("\n".join(out).rstrip() or "no services")
    return EXIT_OK


def _kind(prop: dict) -> str:
    """A parameter's type in a few words: 'one of a, b', 'integer 1..100', 'number, default 5'."""
    if "enum" in prop:
        text = "one of " + ", ".join(str(v) for v in prop["enum"])
    else:
        kind = prop.get("type") or "/".join(str(b.get("type")) for b in prop.get("anyOf", []) + prop.get("oneOf", []))
        text = "/".join(kind) if isinstance(kind, list) else str(kind or "any")
        low, high = prop.get("minimum", prop.get("exclusiveMinimum")), prop.get("maximum", prop.get("exclusiveMaximum"))
        if low is not None or high is not None:
            text += f" {'' if low is None else low}..{'' if high is None else high}"
    if "default" in prop:
        text += f", default {prop['default']}"
    return text


def cmd_download(args: argparse.Namespace) -> int:
    """Download a job's outputs (all, or the names given) into --output-dir."""
    from .client import outputs_of, saved_as
    api = _api(args)
    if args.names:
        items = [({"name": name}, {}) for name in args.names]
    else:
        status = api.status(args.uuid)
        items = [(o, saved_as(o, status)) for o in outputs_of(status)]
    saved = []
    for item, how in items:
        path = api.download(args.uuid, item["name"], args.output_dir, **how)
        saved.append({"name": item["name"], "path": str(path), "size": path.stat().st_size})
    if args.json:
        _print_json({"uuid": args.uuid, "downloaded": saved})
    else:
        print("\n".join(f"saved {s['path']} ({_size(s['size'])})" for s in saved) or "the job lists no outputs")
    return EXIT_OK


def _client_options() -> argparse.ArgumentParser:
    """The options every client command takes (flags win over SG_* variables, which win over the file)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("gateway and credentials (else SG_URL, SG_CLIENT_ID, SG_SECRET, SG_TOKEN, "
                                      "else the config file)")
    group.add_argument("--url", help="the gateway's base URL, e.g. https://gateway.example.org")
    group.add_argument("--client-id", help="client id (sg clients add) exchanged for tokens with --secret")
    group.add_argument("--secret", help="the client's secret (prefer SG_SECRET or the config file: "
                                        "command lines are visible to other users)")
    group.add_argument("--token", help="a ready access token instead of client id + secret")
    group.add_argument("--config", metavar="FILE", help="client config file (default "
                       "$SG_CLIENT_CONFIG, else ~/.config/service-gateway/client.toml)")
    common.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    return common


def _wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", default=".", metavar="DIR", help="where outputs are saved (default: here)")
    parser.add_argument("--no-download", action="store_true", help="do not download the outputs")
    parser.add_argument("--timeout", type=float, metavar="S", help="give up waiting after S seconds (exit 5)")
    parser.add_argument("--no-events", action="store_true", help="poll the status instead of the event stream")


def _add_client_commands(sub, jsub) -> None:
    common = _client_options()
    submit = sub.add_parser("submit", parents=[common], help="submit a job; --wait follows it with a progress bar",
                            description="Submit a job to a service. --param values are JSON when they parse "
                            "(numbers, true/false), else text. With --wait: a progress bar on stderr, the result "
                            "on stdout, outputs downloaded into --output-dir.")
    submit.add_argument("service", help="service or pipeline name (sg services)")
    submit.add_argument("--doc-url", required=True, help="the media document: http(s):// or file:// URL")
    submit.add_argument("--param", "-p", action="append", metavar="KEY=VALUE",
                        help="a service parameter, e.g. preset=mp4-720p or height=480 (repeatable)")
    submit.add_argument("--misc", action="append", metavar="KEY=VALUE", help="a free-form value kept with the job")
    submit.add_argument("--callback-url", help="URL that receives the final status (webhook)")
    submit.add_argument("--callback-progress", action="store_true",
                        help="also send throttled, signed progress deliveries to --callback-url (docs/webhooks.md)")
    submit.add_argument("--ann-doc-id", help="annotation document the result is posted to")
    submit.add_argument("--idempotency-key", metavar="KEY",
                        help="repeat-safe submit: the same key and request give the same job (default: a new UUID)")
    submit.add_argument("--wait", action="store_true", help="wait for the end, show progress, download outputs")
    _wait_options(submit)
    submit.set_defaults(func=cmd_submit)

    wait = sub.add_parser("wait", parents=[common], help="follow a job to its end (progress bar), download outputs")
    wait.add_argument("uuid")
    _wait_options(wait)
    wait.set_defaults(func=cmd_wait)

    status = sub.add_parser("status", parents=[common], help="a job's status and record")
    status.add_argument("uuid")
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a queued or running job")
    cancel.add_argument("uuid")
    cancel.set_defaults(func=cmd_cancel)

    download = sub.add_parser("download", parents=[common], help="download a finished job's outputs")
    download.add_argument("uuid")
    download.add_argument("names", nargs="*", metavar="NAME", help="output names (default: all)")
    download.add_argument("--output-dir", default=".", metavar="DIR", help="where outputs are saved (default: here)")
    download.set_defaults(func=cmd_download)

    services = sub.add_parser("services", parents=[common], help="the services and their parameters")
    services.set_defaults(func=cmd_services)

    listing = jsub.add_parser("list", parents=[common], help="your jobs through the API, newest first "
                              "(the default of `sg jobs`)")
    listing.add_argument("--service", help="only this service")
    listing.add_argument("--status", help="only this status (SUCCESS, FAILURE, PROGRESS, ...)")
    listing.add_argument("--since", metavar="TIME", help="created at or after (ISO 8601)")
    listing.add_argument("--until", metavar="TIME", help="created before (ISO 8601)")
    listing.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50; 0 = all)")
    listing.add_argument("--oldest-first", action="store_true", help="oldest first")
    listing.add_argument("--all", action="store_true", help="every client's jobs (admin tokens)")
    listing.set_defaults(func=cmd_jobs_list)


#: `sg jobs` alone (or with list options) means `sg jobs list`
JOBS_SUBCOMMANDS = ("list", "failed", "requeue")


def _default_jobs_command(argv: list[str]) -> list[str]:
    if argv and argv[0] == "jobs" and (len(argv) == 1 or argv[1] not in (*JOBS_SUBCOMMANDS, "-h", "--help")):
        return ["jobs", "list", *argv[1:]]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sg", description="Service Gateway command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    token = sub.add_parser("token", help="print a signed access token")
    token.add_argument("--sub", default="admin", help="subject (job owner) of the token; default admin")
    token.add_argument("--admin", action="store_true", help="the token may see and cancel every job")
    token.add_argument("--expires-in", type=int, metavar="S", help="lifetime in seconds (default SG_JWT_EXPIRES_S)")
    token.set_defaults(func=cmd_token)

    db = sub.add_parser("db", help="job store schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply the Alembic migrations").set_defaults(func=cmd_db_upgrade)

    clients = sub.add_parser("clients", help="client applications: credentials, scopes, quotas",
                             description="Manage the client applications that exchange a client_id and "
                             "secret for tokens at POST /auth/access-token. Add --json for scripts.")
    csub = clients.add_subparsers(dest="clients_command", required=True)
    add = csub.add_parser("add", help="create a client; prints its client_id and secret (shown once)")
    add.add_argument("name")
    add.add_argument("--scopes", default="", help="services it may use, comma separated; * = all")
    add.add_argument("--admin", action="store_true", help="also the admin routes and every client's jobs")
    add.add_argument("--quota", action="append", metavar="[SERVICE.]NAME=N",
                     help="a quota, e.g. max_in_flight=4 or transcode.max_jobs_per_day=100 (repeatable)")
    add.set_defaults(func=cmd_clients_add)
    csub.add_parser("list", help="list clients").set_defaults(func=cmd_clients_list)
    for name, enabled, helptext in (("disable", False, "disable a client; its tokens stop working at once"),
                                    ("enable", True, "enable a client again (it must request new tokens)")):
        p = csub.add_parser(name, help=helptext)
        p.add_argument("client", help="client_id or name")
        p.set_defaults(func=cmd_clients_enable, enabled=enabled)
    rotate = csub.add_parser("rotate-secret", help="new secret (shown once); old secret and tokens stop working")
    rotate.add_argument("client", help="client_id or name")
    rotate.set_defaults(func=cmd_clients_rotate)
    scopes = csub.add_parser("set-scopes", help="replace a client's scopes")
    scopes.add_argument("client", help="client_id or name")
    scopes.add_argument("scopes", help="comma separated service names, * = all, admin")
    scopes.set_defaults(func=cmd_clients_scopes)
    quota = csub.add_parser("set-quota", help="set or remove (value none) one quota")
    quota.add_argument("client", help="client_id or name")
    quota.add_argument("quota", help="max_in_flight, max_jobs_per_day or max_media_minutes_per_month")
    quota.add_argument("value", help="a number, or none to remove the limit")
    quota.add_argument("--service", help="the quota applies to this service only")
    quota.set_defaults(func=cmd_clients_quota)
    for p in (add, rotate, scopes, quota, *[csub.choices[n] for n in ("list", "disable", "enable")]):
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    jobs = sub.add_parser("jobs", help="your jobs (sg jobs [list]); the failure list (sg jobs failed|requeue)",
                          description="`sg jobs` (= `sg jobs list`) lists your jobs through the API, like the "
                          "other client commands. `failed` and `requeue` are operator commands on the job store "
                          "(server settings): jobs that failed for good (past their retries, or a permanent "
                          "fault) stay in the failure list until an operator requeues them.")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    failed = jsub.add_parser("failed", help="(operator, job store) list jobs that ended in FAILURE, newest first")
    failed.add_argument("--service", help="only this service")
    failed.add_argument("--limit", type=int, default=50)
    failed.set_defaults(func=cmd_jobs_failed)
    requeue = jsub.add_parser("requeue", help="(operator, job store) run a FAILURE job again from the start")
    requeue.add_argument("uuid")
    requeue.set_defaults(func=cmd_jobs_requeue)
    for p in (failed, requeue):
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    infra = sub.add_parser("infra", help="infrastructure needs: backlog, workers, recommended workers per queue")
    infra.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    infra.set_defaults(func=cmd_infra)

    _add_client_commands(sub, jsub)

    order = sub.add_parser("run-order", help="run a service locally on an order file, no broker needed",
                           description="Run one service in this process on a JSON order: "
                           '{"service": "loudness", "file": "clip.wav", "params": {...}}. Progress goes '
                           "to stderr, the result as JSON to stdout (exit 1 when the job fails).")
    order.add_argument("order", help="path of the order JSON file")
    order.add_argument("-o", "--output", help="write the result JSON to this file instead of stdout")
    order.set_defaults(func=cmd_run_order)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = _default_jobs_command(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"sg: configuration error: {exc}", file=sys.stderr)
        return 2
    except APIError as exc:
        print(f"sg: {exc.description}", file=sys.stderr)
        return 1
    except ServiceGatewayError as exc:
        # The client's errors (service_gateway.client): one line with the description and the code,
        # the error object on stdout too under --json, and an exit status per kind (docs/client.md).
        if getattr(args, "json", False) and hasattr(exc, "to_dict"):
            _print_json({"error": exc.to_dict()})
        print(f"sg: {' '.join(str(exc).split())}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except ModuleNotFoundError as exc:
        # A client-only install (docs/client.md) has no server packages for the operator commands.
        print(f"sg {args.command}: needs the server install (pip install 'service-gateway[server]'); missing module "
              f"{exc.name}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
