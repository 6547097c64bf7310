"""thumbnails on a long clip: progress, then a cancel that lands within 2 s (loudness, speech, faces and
transitions have theirs in their own test files)."""
from __future__ import annotations

import pytest

from tests.stack import wait_for
from tests.test_e2e_jobs import ffmpeg_children
from tests.truth import ffmpeg

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session")
def long_video(media):
    path = media / "long-640x360.mp4"               # 4 minutes, made in a few seconds
    if not path.exists():
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=240", "-c:v", "libx264",
               "-preset", "ultrafast", "-g", "250", str(path))
    return path


def test_a_hundred_thumbnails_show_progress_and_cancel_within_2_s(stack, long_video):
    job_id = stack.submit("thumbnails", f"file://{long_video}", count=100, width=640, sprite=True)
    stack.wait_status("thumbnails", job_id, {"PROGRESS"})
    wait_for(lambda: ffmpeg_children(job_id), 10, "the job's ffmpeg")
    assert stack.request("POST", "/thumbnails/cancel", params={"uuid": job_id}).status_code == 202
    final = stack.wait_status("thumbnails", job_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert final["status"] == "REVOKED" and final["result"]["code"] == 109
    wait_for(lambda: not ffmpeg_children(job_id), 2, "the job's ffmpeg to exit")
