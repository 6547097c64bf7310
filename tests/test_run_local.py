"""`python run_local.py` (what `make run` runs): the banner's commands work as printed, Ctrl-C stops all."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import need
from tests.stack import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def test_the_printed_walk_through_transcodes_the_sample_and_ctrl_c_stops_everything(tmp_path):
    need(bool(subprocess.run(["which", "ffmpeg", "curl"], capture_output=True).returncode == 0), "ffmpeg and curl")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SG_")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_local.py"), "--port", str(port), "--data-dir",
                             str(tmp_path / "var"), "--concurrency", "1"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("Ctrl-C stops everything" in line for line in lines) or proc.poll() is not None,
                 120, "run_local's banner")
        banner = "".join(lines)
        assert proc.poll() is None, banner
        token = re.search(r"export TOKEN=(\S+)", banner).group(1)
        base = re.search(r"export B=(\S+)", banner).group(1)
        # The first admin client's printed credentials get a token that can list every client
        client_id = re.search(r"client_id: (c_\w+)", banner).group(1)
        secret = re.search(r"secret: +(\S+)", banner).group(1)
        issued = requests.post(f"{base}/auth/access-token", data={"client_id": client_id, "secret": secret},
                               timeout=30)
        assert issued.status_code == 200, issued.text
        admin = {"Authorization": f"Bearer {issued.json()['access_token']}"}
        assert requests.get(f"{base}/admin/clients", headers=admin, timeout=30).status_code == 200
        # The submit command exactly as printed (a two-line shell command with a continuation)
        submit = re.search(r"^ +(UUID=\$\(.*?echo \$UUID)$", banner, re.M | re.S).group(1)
        shell_env = {**env, "TOKEN": token, "B": base}
        job_id = subprocess.run(["bash", "-c", submit], env=shell_env, capture_output=True, text=True,
                                check=True).stdout.strip()
        assert re.fullmatch(r"[0-9a-f-]{36}", job_id), job_id
        status = re.search(r'^ +for i in .*?"(\$B/transcode/status\?uuid=\$UUID)"', banner, re.M).group(1)

        def finished() -> str | None:
            out = subprocess.run(["bash", "-c", f'curl -s -H "Authorization: Bearer $TOKEN" "{status}"'],
                                 env={**shell_env, "UUID": job_id}, capture_output=True, text=True).stdout
            return out if '"SUCCESS"' in out or '"FAILURE"' in out else None
        assert '"SUCCESS"' in wait_for(finished, 180, "the sample transcode", interval_s=0.5)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        reader.join(timeout=10)
        proc.stdout.close()
    assert code == 0
    assert "run_local: stopped" in "".join(lines)
    wait_for(lambda: not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], 10,
             "every child of run_local to exit")
