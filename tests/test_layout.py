"""Layout rules: the gateway starts without worker libraries; every queue has a worker."""
from __future__ import annotations

import subprocess
import sys

from service_gateway.settings import load_settings
from service_gateway.runtime import Runtime


def test_gateway_does_not_import_heavy_worker_modules(tmp_path):
    code = ("import sys, service_gateway as s; s.create_app({'data_dir': %r}); "
            "print(sorted(m for m in ('ffmpeg', 'cv2', 'webrtcvad', 'numpy') if m in sys.modules))" % str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_service_has_a_queue_and_a_task_and_run_local_consumes_them(tmp_path):
    from workers.sdk.app import build
    rt = Runtime(load_settings({"data_dir": str(tmp_path)}))
    app = build(rt)
    for spec in rt.services.values():
        assert f"sg.{spec.name}" in app.tasks
        assert spec.queue in app.amqp.queues
        assert app.amqp.router.route({}, f"sg.{spec.name}")["queue"].name == spec.queue
    import run_local
    assert sorted(run_local.load_queues(rt.settings)) == rt.queues
