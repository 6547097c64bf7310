"""``celery -A workers flower`` refuses to serve an open Flower.

Flower 2.x reads its options from ``FLOWER_*`` variables, its ``--conf`` file and its command line
into tornado's ``options``, then builds its application, which loads the Celery app's default
modules: Celery's ``import_modules`` signal. There the options are final, so that is where the
check runs — before Flower listens or connects to the broker. Flower itself serves its pages to
anyone when no auth is set (only its API wants ``FLOWER_UNAUTHENTICATED_API``); here an open Flower
takes an explicit ``SG_FLOWER_ALLOW_OPEN=true`` (e.g. behind a proxy that authenticates).
"""
from __future__ import annotations

import sys
from typing import Any

from celery import Celery, signals

MESSAGE = ("celery flower: refusing to start without auth: set FLOWER_BASIC_AUTH=user:password "
           "(or Flower's OAuth: FLOWER_AUTH, FLOWER_AUTH_PROVIDER, FLOWER_OAUTH2_KEY/_SECRET/_REDIRECT_URI), "
           "or SG_FLOWER_ALLOW_OPEN=true to serve Flower without auth")


def auth_problem(options: Any) -> str | None:
    """What is wrong with Flower's auth options, or None when every page and API call needs a login."""
    basic = [entry for entry in (options.basic_auth or []) if entry]
    if options.auth:
        return None                                   # OAuth: only the emails matching --auth get in
    if not basic:
        return "no auth configured"
    for entry in basic:
        user, _, password = entry.partition(":")
        if not user or not password:
            return "FLOWER_BASIC_AUTH entries must be user:password, with a password"
    return None


def refuse_open_flower(app: Celery) -> None:
    """Exit with code 2 when this process is ``celery flower`` and Flower has no auth (unless allowed)."""

    def check(sender: Any = None, **_: Any) -> None:
        import click
        ctx = click.get_current_context(silent=True)
        if ctx is None or ctx.command.name != "flower":
            return
        from flower.options import options

        from service_gateway.settings import load_settings
        problem = auth_problem(options)
        if problem and not load_settings().flower_allow_open:
            print(f"{MESSAGE} ({problem})", file=sys.stderr, flush=True)
            raise SystemExit(2)

    signals.import_modules.connect(check, sender=app, weak=False, dispatch_uid="sg-refuse-open-flower")
