"""Pieces of the worker SDK on their own: progress throttling, ffmpeg progress, URL and name safety."""
from __future__ import annotations

import pytest

from service_gateway.storage import LocalStorage, check_name
from service_gateway.urls import URLRefused, check_doc_url
from workers.sdk.context import ProgressReporter
from workers.sdk.media import FFmpegProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_throttled_monotonic_and_below_100():
    clock, writes = FakeClock(), []
    reporter = ProgressReporter(writes.append, interval_s=0.5, clock=clock)
    reporter.update(10)              # first value is written at once
    reporter.update(20)              # too soon: kept, not written
    clock.now = 0.6
    reporter.update(15)              # lower than seen: ignored
    reporter.update(30)
    clock.now = 1.2
    reporter.update(150)             # clamped: 100 is for SUCCESS only
    assert writes == [10, 30, 99]
    assert reporter.value == 99


def test_ffmpeg_progress_lines_become_percentages():
    seen = []
    progress = FFmpegProgress(total_s=20.0, report=seen.append)
    for line in ["frame=10", "out_time_us=5000000", "out_time_ms=10000000", "out_time_us=N/A",
                 "out_time_us=-9223372036854775807", "progress=continue", "out_time_us=30000000"]:
        progress(line)
    assert seen == [25.0, 50.0, 99.0]


@pytest.mark.parametrize("url", [
    "http://localhost/a", "http://127.0.0.1/a", "http://[::1]/a", "http://10.1.2.3/a", "http://192.168.0.1/a",
    "http://169.254.169.254/latest", "http://[::ffff:127.0.0.1]/a", "http://0.0.0.0/a", "gopher://x/a",
    "http://user:pw@example.com/a", "file:///etc/passwd", "https://example.com:99999/a", "",
])
def test_unsafe_urls_are_refused(url):
    with pytest.raises(URLRefused):
        check_doc_url(url, file_roots=[], allow_private=False)


def test_file_urls_only_under_roots_even_through_links(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"x")
    (root / "escape").symlink_to("/etc")
    assert check_doc_url(f"file://{root}/a.mp4", file_roots=[str(root)], allow_private=False) == "file"
    for url in [f"file://{root}/../a.mp4", f"file://{root}/escape/passwd", f"file://{root}/%2e%2e/x"]:
        with pytest.raises(URLRefused):
            check_doc_url(url, file_roots=[str(root)], allow_private=False)


def test_private_hosts_are_allowed_only_when_configured():
    assert check_doc_url("http://127.0.0.1:8000/a.mp4", file_roots=[], allow_private=True) == "http"


@pytest.mark.parametrize("name", ["../x", ".hidden", "-rf", "a/b", "", "x" * 200, "a\x00b"])
def test_output_names_cannot_escape(tmp_path, name):
    with pytest.raises(ValueError):
        check_name(name)
    assert LocalStorage(tmp_path).path("job", name) is None
