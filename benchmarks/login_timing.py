#!/usr/bin/env python3
"""POST /auth/access-token: time of a login with an unknown client_id vs a wrong secret.

    .venv/bin/python benchmarks/login_timing.py [--logins 20]

Runs the gateway in process (Flask test client, embedded SQLite store in a temp dir), creates one
client, then alternates failed logins with unknown ids and with that client's id and a wrong
secret (each from its own address, so the login throttle never answers instead). Prints the
median of each and their ratio: both run one Argon2id verify, so the ratio stays close to 1 and
the time does not tell which ids exist. The tests check the same property without timing
(tests/test_clients.py: one verify each, against hashes of the same cost).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service_gateway import create_app  # noqa: E402
from service_gateway.clients import THROTTLE_CLIENT_FAILURES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=20, help="failed logins of each kind (default 20)")
    args = parser.parse_args()
    if not 1 <= args.logins < THROTTLE_CLIENT_FAILURES:
        parser.error(f"--logins: 1 to {THROTTLE_CLIENT_FAILURES - 1} (more would lock the client out)")
    with tempfile.TemporaryDirectory() as data_dir:
        app = create_app({"data_dir": data_dir, "jwt_secret": "bench-secret-0123456789abcdef0123456789",
                          "log_format": "text", "log_level": "ERROR"})
        client_id = app.extensions["service_gateway"].clients.add("bench-login", ["probe"]).client.client_id
        web = app.test_client()

        def login(ident: str, n: int) -> float:
            started = time.perf_counter()
            answer = web.post("/auth/access-token", data={"client_id": ident, "secret": "guess"},
                              environ_base={"REMOTE_ADDR": f"10.1.{n // 250}.{n % 250}"})
            elapsed = time.perf_counter() - started
            assert answer.status_code == 401, answer.get_data(as_text=True)
            return elapsed

        login("c_warmup", 0)          # the dummy hash is made on first use
        unknown, wrong = [], []
        for n in range(args.logins):
            unknown.append(login("c_" + uuid.uuid4().hex[:16], 2 * n + 1))
            wrong.append(login(client_id, 2 * n + 2))
    u_ms, w_ms = statistics.median(unknown) * 1000, statistics.median(wrong) * 1000
    print(f"median login, unknown client_id: {u_ms:.1f} ms; wrong secret: {w_ms:.1f} ms; "
          f"ratio {u_ms / w_ms:.3f} ({args.logins} each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
