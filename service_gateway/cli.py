"""The ``sg`` command: tokens, database upgrades, local runs of a service (more join as they are built)."""
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

    jobs = sub.add_parser("jobs", help="the failure list: inspect and requeue failed jobs",
                          description="Jobs that failed for good (past their retries, or a permanent fault) "
                          "stay in the failure list until an operator requeues them.")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    failed = jsub.add_parser("failed", help="list jobs that ended in FAILURE, newest first")
    failed.add_argument("--service", help="only this service")
    failed.add_argument("--limit", type=int, default=50)
    failed.set_defaults(func=cmd_jobs_failed)
    requeue = jsub.add_parser("requeue", help="run a FAILURE job again from the start")
    requeue.add_argument("uuid")
    requeue.set_defaults(func=cmd_jobs_requeue)
    for p in (failed, requeue):
        p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    infra = sub.add_parser("infra", help="infrastructure needs: backlog, workers, recommended workers per queue")
    infra.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    infra.set_defaults(func=cmd_infra)

    order = sub.add_parser("run-order", help="run a service locally on an order file, no broker needed",
                           description="Run one service in this process on a JSON order: "
                           '{"service": "loudness", "file": "clip.wav", "params": {...}}. Progress goes '
                           "to stderr, the result as JSON to stdout (exit 1 when the job fails).")
    order.add_argument("order", help="path of the order JSON file")
    order.add_argument("-o", "--output", help="write the result JSON to this file instead of stdout")
    order.set_defaults(func=cmd_run_order)
    return parser


def main(argv: list[str] | None = None) -> int:
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
        print(f"sg: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
