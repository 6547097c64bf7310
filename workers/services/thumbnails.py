"""thumbnails: JPEG/PNG images at given times, at an interval or N evenly spaced, plus an optional sprite sheet.

Each image is one fast ffmpeg call (seek to the time, decode one frame, scale with the display
aspect ratio kept), stored as a job output and listed as one ``thumbnail`` annotation. The sprite
sheet is a grid of all the images made with ffmpeg's ``tile`` filter.
"""
from __future__ import annotations

import math
from typing import Any

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result
from workers.sdk import JobContext, JobError, ParameterError, Service

#: Most images one job may make (whatever the mode), so that a request cannot fill the disk.
MAX_THUMBNAILS = 100
#: Images made when no mode is given.
DEFAULT_COUNT = 10
#: Width when neither width nor height is given.
DEFAULT_WIDTH = 320
EXTENSIONS = {"jpeg": "jpg", "png": "png"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
MODES = ("times", "interval", "count")
# Form posts (POST /thumbnails/annotate -d times=1,5.5) give the array's items as strings.
NUMBER_TEXT = r"^\s*[0-9]+(\.[0-9]*)?\s*$"

service = Service(
    name="thumbnails",
    version="1.0.0",
    description="Thumbnails (JPEG or PNG) at given times, at an interval, or N evenly spaced, scaled to a width or "
                "height with the aspect ratio kept, plus an optional sprite sheet; all stored as job outputs.",
    parameters={
        "type": "object",
        "properties": {
            "times": {"type": "array", "minItems": 1, "maxItems": MAX_THUMBNAILS,
                      "items": {"anyOf": [{"type": "number", "minimum": 0},
                                          {"type": "string", "pattern": NUMBER_TEXT}]},
                      "description": "Mode 1: times in seconds (form posts: comma-separated, e.g. 1,5.5,12)."},
            "interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400,
                         "description": "Mode 2: one image every `interval` seconds from 0 "
                                        f"(at most {MAX_THUMBNAILS} images, else the job fails with 307)."},
            "count": {"type": "integer", "minimum": 1, "maximum": MAX_THUMBNAILS,
                      "description": "Mode 3: N images evenly spaced, each in the middle of one of N equal parts "
                                     f"of the document. The default mode, with {DEFAULT_COUNT} images."},
            "width": {"type": "integer", "minimum": 16, "maximum": 3840,
                      "description": f"Image width in pixels; the height keeps the display aspect ratio. "
                                     f"Default {DEFAULT_WIDTH} when neither width nor height is given."},
            "height": {"type": "integer", "minimum": 16, "maximum": 2160,
                       "description": "Image height in pixels instead of width; the width keeps the aspect ratio."},
            "format": {"enum": sorted(EXTENSIONS), "default": "jpeg", "description": "Image format."},
            "sprite": {"type": "boolean", "default": False,
                       "description": "Also make sprite.<ext>: all the images in a grid, left to right, top to "
                                      "bottom (listed in summary.sprite)."},
            "sprite_columns": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5,
                               "description": "Images per row of the sprite sheet."},
        },
        "additionalProperties": False,
    },
    result_schema=RESULT_SCHEMA,
)


def check(params: dict[str, Any]) -> None:
    """One mode per request and one of width/height (run at the gateway and in the worker)."""
    modes = [m for m in MODES if m in params]
    if len(modes) > 1:
        raise ParameterError(modes[1], f"give one of times, interval and count, not {' and '.join(modes)}")
    if "width" in params and "height" in params:
        raise ParameterError("height", "give width or height, not both: the other keeps the aspect ratio")


service.check = check


def plan_times(params: dict[str, Any], duration: float, fps: float) -> list[float]:
    """The times (seconds) to take images at, clamped to the last frame.

    Raises:
        JobError: 307 when the times are past the end or the interval makes too many images.
    """
    last = max(0.0, duration - 1 / fps) if duration > 0 else None
    if "times" in params:
        times = [float(t) for t in params["times"]]
        late = [t for t in times if duration > 0 and t >= duration]
        if late:
            raise JobError(307, f"invalid parameter times: {', '.join(f'{t:g}' for t in late)} s is past the end "
                                f"of the document ({duration:.3f} s)")
    elif "interval" in params:
        if duration <= 0:
            raise JobError(307, "invalid parameter interval: the document's duration is unknown; give times")
        interval = float(params["interval"])
        count = math.ceil(duration / interval - 1e-9)
        if count > MAX_THUMBNAILS:
            raise JobError(307, f"invalid parameter interval: {interval:g} s on a {duration:.1f} s document makes "
                                f"{count} images, more than {MAX_THUMBNAILS}; use an interval of at least "
                                f"{math.ceil(duration / MAX_THUMBNAILS * 10) / 10:g} s")
        times = [k * interval for k in range(count)]
    else:
        if duration <= 0:
            raise JobError(307, "invalid parameter count: the document's duration is unknown; give times")
        count = int(params.get("count", DEFAULT_COUNT))
        times = [(k + 0.5) * duration / count for k in range(count)]
    # A seek past the last frame's start yields no frame at all.
    return [round(min(t, last) if last is not None else t, 3) for t in times]


def scale_filter(params: dict[str, Any]) -> str:
    """Scale to the width (or height) with the *display* aspect ratio kept, even other side, square pixels."""
    if params.get("height"):
        h = int(params["height"])
        return f"scale=2*trunc({h}*dar/2+0.5):{h},setsar=1"
    w = int(params.get("width") or DEFAULT_WIDTH)
    return f"scale={w}:2*trunc({w}/dar/2+0.5),setsar=1"


def image_args(ffmpeg: str, source: str, time_s: float, vf: str, fmt: str, dest: str) -> list[str]:
    """ffmpeg arguments for one image at ``time_s`` (input seek: fast, and exact since ffmpeg 2.1)."""
    quality = ["-q:v", "3"] if fmt == "jpeg" else []
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-ss", f"{time_s:.3f}", "-i", source,
            "-map", "0:v:0", "-an", "-sn", "-dn", "-frames:v", "1", "-vf", vf, *quality, "-y", dest]


def sprite_args(ffmpeg: str, pattern: str, columns: int, rows: int, fmt: str, dest: str) -> list[str]:
    """ffmpeg arguments to tile the numbered images ``pattern`` into one ``columns`` x ``rows`` grid."""
    quality = ["-q:v", "3"] if fmt == "jpeg" else []
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-start_number", "1", "-i", pattern,
            "-vf", f"tile={columns}x{rows}", "-frames:v", "1", *quality, "-y", dest]


def grid(count: int, columns: int) -> tuple[int, int]:
    """(columns, rows) of a sprite sheet of ``count`` images at most ``columns`` wide."""
    columns = max(1, min(columns, count))
    return columns, math.ceil(count / columns)


def _size(job: JobContext, path) -> tuple[int, int]:
    from workers.sdk.media import probe

    video = next(s for s in probe(job, path)["streams"] if s.get("codec_type") == "video")
    return int(video["width"]), int(video["height"])


def _failed(what: str, code: int, stderr: str, source: str) -> JobError:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit code {code}"
    return JobError(306, f"ffmpeg failed on {what}: {reason.replace(source, 'input')[:300]}")


@service.handler
def run(job: JobContext) -> dict:
    from workers.sdk.media import binary, duration_s, frame_rate, probe

    params = job.params
    info = probe(job, job.input_path)
    duration = duration_s(info)
    fps = frame_rate(info)
    times = plan_times(params, duration, fps)
    fmt = params.get("format", "jpeg")
    ext = EXTENSIONS[fmt]
    ffmpeg, source, vf = binary("ffmpeg"), str(job.input_path), scale_filter(params)
    steps = len(times) + (1 if params.get("sprite") else 0)
    job.progress(1)

    names: list[str] = []
    for index, time_s in enumerate(times, start=1):
        name = f"thumbnail-{index:03d}.{ext}"
        dest = job.output_path(name)
        code, stderr = job.run(image_args(ffmpeg, source, time_s, vf, fmt, str(dest)))
        if code != 0:
            raise _failed(f"the image at {time_s:g} s", code, stderr, source)
        if not dest.is_file():
            raise JobError(306, f"no frame could be decoded at {time_s:g} s")
        names.append(name)
        job.progress(1 + 96 * index / steps)
    width, height = _size(job, job.output_path(names[0]))

    summary: dict[str, Any] = {"count": len(names), "format": fmt, "width": width, "height": height}
    sprite_name = None
    if params.get("sprite"):
        columns, rows = grid(len(names), int(params.get("sprite_columns", 5)))
        sprite_name = f"sprite.{ext}"
        dest = job.output_path(sprite_name)
        code, stderr = job.run(sprite_args(ffmpeg, str(job.tmp_dir / f"thumbnail-%03d.{ext}"), columns, rows, fmt,
                                           str(dest)))
        if code != 0 or not dest.is_file():
            raise _failed("the sprite sheet", code, stderr, source)
        summary["sprite"] = {"name": sprite_name, "columns": columns, "rows": rows,
                             "width": columns * width, "height": rows * height}
        job.progress(98)

    job.storing()
    annotations = []
    for name, time_s in zip(names, times):
        job.add_output(name, content_type=CONTENT_TYPES[fmt])
        annotations.append(annotation(time_s, time_s, "thumbnail", output=name, width=width, height=height))
    if sprite_name:
        job.add_output(sprite_name, content_type=CONTENT_TYPES[fmt])
    return annotation_result(service, job.doc_url, duration, annotations, summary)
