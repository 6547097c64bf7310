"""Faces truth: scikit-image's astronaut photograph (one face) shown for a known span between face-free parts.

The clip (640x480, 25 fps, 11 s): testsrc2 0-2 s, a crop of the same photo without the face
(suit, flag, shuttle, helmet: photographic texture, no face) 2-4 s, the whole photo 4-8 s,
the face-free crop again 8-10 s, testsrc2 10-11 s. The face's box is drawn by hand on the photo
(not taken from the cascade under test) and checked against the image once: hairline to chin,
ear to ear.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.truth import Case, Check, ffmpeg

SERVICE = "faces"
SIZE = (640, 480)
FACE_SPAN = (4.0, 8.0)
FACE_FREE = ((2.0, 4.0), (8.0, 10.0))
DURATION_S = 11.0
SAMPLE_FPS = 2.0
#: The astronaut's face in the 512x512 photo (x, y, w, h), as drawn: forehead to chin, ear to ear.
FACE_IN_PHOTO = (170, 55, 110, 115)
#: Rows of the photo below the chin: no face in them.
FACE_FREE_ROWS = (190, 512)


def truth_box() -> list[int]:
    """The face's box in the clip: the photo is scaled 512 -> 480 and centred on the 640x480 frame."""
    scale, offset_x = SIZE[1] / 512, (SIZE[0] - SIZE[1]) // 2
    x, y, w, h = FACE_IN_PHOTO
    return [round(x * scale) + offset_x, round(y * scale), round(w * scale), round(h * scale)]


def make(directory: Path) -> Case:
    import cv2
    from skimage import data

    photo = directory / "astronaut.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    top, bottom = FACE_FREE_ROWS
    (a0, a1), (b0, b1) = FACE_FREE
    start, end = FACE_SPAN
    last = 0.04                                     # one frame at 25 fps: a segment ends before its end time
    path = directory / "faces.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate=25:duration={DURATION_S}",
           "-loop", "1", "-framerate", "25", "-i", str(photo),
           "-filter_complex",
           f"[1]split[a][b];"
           f"[a]scale={SIZE[1]}:{SIZE[1]},pad={SIZE[0]}:{SIZE[1]}:(ow-iw)/2:0[face];"
           f"[b]crop=512:{bottom - top}:0:{top},scale={SIZE[0]}:-2,pad={SIZE[0]}:{SIZE[1]}:0:(oh-ih)/2[free];"
           f"[0][free]overlay=enable='between(t,{a0},{a1 - last})+between(t,{b0},{b1 - last})'[v1];"
           f"[v1][face]overlay=enable='between(t,{start},{end - last})':shortest=1,format=yuv420p[v]",
           "-map", "[v]", "-t", str(DURATION_S), "-c:v", "libx264", "-preset", "ultrafast", str(path))
    return Case(path=path, truth={"span": FACE_SPAN, "box": truth_box()}, params={"sample_fps": SAMPLE_FPS})


def score(result: dict[str, Any], case: Case) -> list[Check]:
    from workers.services.faces import box_iou

    start, end = case.truth["span"]
    period = 1 / SAMPLE_FPS
    samples = [round(start + i * period, 3) for i in range(round((end - start) * SAMPLE_FPS))]
    tracks = [a for a in result["annotations"] if a["label"] == "face"]
    inside = [a for a in tracks if a["end"] >= start - period and a["start"] <= end]
    outside = [d for a in tracks for d in a["data"]["detections"] if not start - period < d["time"] < end + period]
    detected_at = {d["time"] for a in inside for d in a["data"]["detections"]}
    hit = sum(1 for t in samples if t in detected_at)
    checks = [Check("sampled frames of the span with the face", f"{hit}/{len(samples)}", "all", hit == len(samples)),
              Check("tracks for the one face", len(inside), "1", len(inside) == 1),
              Check("detections in the face-free parts", len(outside), "0", not outside)]
    if len(inside) == 1:
        track = inside[0]
        span_error = max(abs(track["start"] - start), abs(track["end"] - (end - period)))
        overlap = box_iou(track["data"]["bbox"], case.truth["box"])
        worst = min(box_iou(d["bbox"], case.truth["box"]) for d in track["data"]["detections"])
        checks += [Check("track start/end error (s)", round(span_error, 3), f"<= {period}", span_error <= period),
                   Check("track box IoU with the drawn face", round(overlap, 3), ">= 0.5", overlap >= 0.5),
                   Check("worst detection box IoU with the drawn face", round(worst, 3), ">= 0.5", worst >= 0.5),
                   Check("track confidence (clear frontal face)", track.get("confidence"), ">= 0.5",
                         (track.get("confidence") or 0) >= 0.5)]
    return checks
