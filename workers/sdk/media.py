"""ffprobe/ffmpeg helpers shared by the media services (run through :meth:`JobContext.run`)."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from service_gateway.errors import JobError

from .context import JobContext

FFPROBE_TIMEOUT_S = 120


def binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise JobError(306, f"{name} is not installed on this worker")
    return path


def probe(job: JobContext, path: Path) -> dict[str, Any]:
    """Return ffprobe's format and streams of ``path``.

    The job's own input is probed once: later calls reuse the answer (``job.media_info``), which
    also gives the usage ledger the document's duration.

    Raises:
        JobError: 305 when the file is not media ffprobe can read (or has no audio/video stream).
    """
    if path == job.input_path and job.media_info is not None:
        return job.media_info
    out: list[str] = []
    code, stderr = job.run([binary("ffprobe"), "-v", "error", "-print_format", "json", "-show_format",
                            "-show_streams", str(path)], on_stdout_line=out.append, timeout_s=FFPROBE_TIMEOUT_S)
    info = None
    if code == 0:
        try:
            info = json.loads("\n".join(out))
        except json.JSONDecodeError:
            pass
    if not isinstance(info, dict):
        reason = stderr.strip().splitlines()[-1] if stderr.strip() else f"ffprobe exit code {code}"
        raise JobError(305, f"not a media file ffmpeg can read: {_clean(reason, path)}")
    if not any(s.get("codec_type") in ("audio", "video") for s in info.get("streams", [])):
        raise JobError(305, "the document has no audio or video stream")
    if path == job.input_path:
        job.media_info = info
    return info


def stream_of(info: dict[str, Any], kind: str, purpose: str = "") -> dict[str, Any]:
    """The first ``kind`` ("audio" or "video") stream of a probed file.

    Raises:
        JobError: 305 when there is none (``purpose`` says what it was needed for).
    """
    stream = next((s for s in info.get("streams", []) if s.get("codec_type") == kind), None)
    if stream is None:
        raise JobError(305, f"the document has no {kind} stream" + (f" {purpose}" if purpose else ""))
    return stream


def frame_rate(info: dict[str, Any]) -> float:
    """The video stream's frame rate (average, else nominal), 25 when ffprobe does not know it."""
    video = stream_of(info, "video")
    for key in ("avg_frame_rate", "r_frame_rate"):
        rate = _rate(video.get(key))
        if rate is not None and 1 <= rate <= 1000:
            return rate
    return 25.0


def _clean(message: str, path: Path) -> str:
    """Drop the worker's temp path from ffmpeg's messages: it means nothing to the client."""
    return message.replace(str(path) + ": ", "").replace(str(path), "input")[:300]


def duration_s(info: dict[str, Any]) -> float:
    """Best duration of a probed file in seconds (format, else longest stream), 0 when unknown."""
    for value in [info.get("format", {}).get("duration")] + [s.get("duration") for s in info.get("streams", [])]:
        try:
            if value is not None and float(value) > 0:
                return float(value)
        except ValueError:
            continue
    return 0.0


def summarize(info: dict[str, Any]) -> dict[str, Any]:
    """The probe result of DESIGN.md: container, duration and the audio/video streams."""
    fmt = info.get("format", {})
    streams = []
    for s in info.get("streams", []):
        kind = s.get("codec_type")
        if kind not in ("audio", "video"):
            continue
        item: dict[str, Any] = {"index": s.get("index"), "type": kind, "codec": s.get("codec_name"),
                                "profile": s.get("profile"), "bit_rate": _int(s.get("bit_rate")),
                                "duration": _float(s.get("duration"))}
        if kind == "video":
            item.update(width=s.get("width"), height=s.get("height"), pix_fmt=s.get("pix_fmt"),
                        frame_rate=_rate(s.get("avg_frame_rate")) or _rate(s.get("r_frame_rate")),
                        frames=_int(s.get("nb_frames")))
        else:
            item.update(sample_rate=_int(s.get("sample_rate")), channels=s.get("channels"),
                        channel_layout=s.get("channel_layout"))
        streams.append({k: v for k, v in item.items() if v is not None})
    return {
        "container": {"format_name": fmt.get("format_name"), "format_long_name": fmt.get("format_long_name"),
                      "size": _int(fmt.get("size")), "bit_rate": _int(fmt.get("bit_rate"))},
        "duration": round(duration_s(info), 3),
        "streams": streams,
    }


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return round(float(value), 3)
    except (TypeError, ValueError):
        return None


def _rate(value: Any) -> float | None:
    try:
        rate = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return round(float(rate), 3) if rate > 0 else None


class FFmpegProgress:
    """Turn ffmpeg ``-progress pipe:1`` lines into a percentage of ``total_s`` of output time."""

    def __init__(self, total_s: float, report: Callable[[float], None]) -> None:
        self.total_s = total_s
        self.report = report
        self.seconds = 0.0

    def __call__(self, line: str) -> None:
        key, _, value = line.partition("=")
        if key in ("out_time_us", "out_time_ms") and value.strip().isdigit():
            # ffmpeg writes microseconds under both names (out_time_ms is a historical misnomer).
            seconds = int(value) / 1_000_000
            if seconds > self.seconds and self.total_s > 0:
                self.seconds = seconds
                self.report(min(99.0, 100.0 * seconds / self.total_s))
