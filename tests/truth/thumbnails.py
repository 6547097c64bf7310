"""Ground truth for `thumbnails`: count, times and sizes of the images, the sprite grid, and a colour.

The clip (10 s, 320x240 @ 25 fps): testsrc 0-4 s, solid red 4-6 s, testsrc2 6-10 s. Five evenly
spaced images fall at 1, 3, 5, 7 and 9 s, so the third one is inside the red segment.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.truth import Case, Check, ffmpeg

SERVICE = "thumbnails"
RED_BGR = (0, 0, 255)
COLOUR_TOLERANCE = 24      # max per-channel error of the mean colour (JPEG and 4:2:0 chroma blur edges)


def make(directory: Path) -> Case:
    """Generate the clip and ask for 5 images 160 px wide with a 3-column sprite sheet."""
    path = Path(directory) / "thumbnails.mp4"
    size, rate = "320x240", 25
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}:duration=4",
           "-f", "lavfi", "-i", f"color=c=red:size={size}:rate={rate}:duration=2",
           "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration=4",
           "-filter_complex", "[0]format=yuv420p,setsar=1[a];[1]format=yuv420p,setsar=1[b];"
                              "[2]format=yuv420p,setsar=1[c];[a][b][c]concat=n=3:v=1:a=0[v]",
           "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    truth = {"times": [1.0, 3.0, 5.0, 7.0, 9.0], "width": 160, "height": 120,
             "sprite": {"columns": 3, "rows": 2, "width": 480, "height": 240},
             "colours": {5.0: RED_BGR}}
    return Case(path=path, truth=truth, params={"count": 5, "width": 160, "sprite": True, "sprite_columns": 3})


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as ffprobe decodes it."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=width,height", "-of", "json", str(path)], capture_output=True, text=True,
                         check=True).stdout
    stream = json.loads(out)["streams"][0]
    return int(stream["width"]), int(stream["height"])


def mean_bgr(path: Path) -> tuple[int, int, int]:
    """Mean colour of the middle half of an image (BGR, as OpenCV reads it)."""
    import cv2

    image = cv2.imread(str(path))
    h, w = image.shape[:2]
    centre = image[h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3).mean(axis=0)
    return tuple(round(float(v)) for v in centre)


def local_path(result: dict[str, Any], name: str) -> Path:
    """Where a job output is stored by an in-process run (`run_order`, as benchmarks/accuracy.py does)."""
    from service_gateway.settings import load_settings

    job_id = next(o["url"] for o in result["outputs"] if o["name"] == name).split("/")[2]
    return load_settings().output_dir / job_id / name


def score(result: dict[str, Any], case: Case, fetch=None) -> list[Check]:
    """Compare images (``fetch(name) -> Path`` reads an output; default: the local output store)."""
    fetch = fetch or (lambda name: local_path(result, name))
    truth = case.truth
    thumbs = [a for a in result["annotations"] if a["label"] == "thumbnail"]
    outputs = {o["name"] for o in result.get("outputs", [])}
    times = [a["start"] for a in thumbs]
    time_error = max((abs(a - b) for a, b in zip(times, truth["times"])), default=None)
    sizes = {image_size(fetch(a["data"]["output"])) for a in thumbs}
    listed = all(a["data"]["output"] in outputs and (a["data"]["width"], a["data"]["height"]) ==
                 (truth["width"], truth["height"]) for a in thumbs)
    sprite = result["summary"].get("sprite") or {}
    sprite_size = image_size(fetch(sprite["name"])) if sprite.get("name") in outputs else None
    want_sprite = (truth["sprite"]["width"], truth["sprite"]["height"])
    colour_errors = []
    for t, bgr in truth["colours"].items():
        hit = next((a for a in thumbs if abs(a["start"] - t) < 0.01), None)
        got = mean_bgr(fetch(hit["data"]["output"])) if hit else None
        colour_errors.append(max(abs(g - w) for g, w in zip(got, bgr)) if got else 255)
    return [
        Check("images", len(thumbs), str(len(truth["times"])), len(thumbs) == len(truth["times"])),
        Check("time error, worst (s)", time_error, "<= 0.01", time_error is not None and time_error <= 0.01),
        Check("decoded image sizes", sorted(sizes), f"[{(truth['width'], truth['height'])}]",
              sizes == {(truth["width"], truth["height"])}),
        Check("images listed in outputs with their size", listed, "True", listed),
        Check("sprite sheet size (grid)", sprite_size, str(want_sprite),
              sprite_size == want_sprite and (sprite.get("columns"), sprite.get("rows")) ==
              (truth["sprite"]["columns"], truth["sprite"]["rows"])),
        Check("colour error in the red segment (0-255)", max(colour_errors), f"<= {COLOUR_TOLERANCE}",
              max(colour_errors) <= COLOUR_TOLERANCE),
    ]
