"""faces: face detections on frames sampled at a fixed rate, grouped into tracks.

ffmpeg decodes only what is needed: its ``fps`` filter samples the video at ``sample_fps``,
scales it to at most ``max_width`` and writes gray frames to its stdout; each frame is read
through :meth:`JobContext.stream` (memory: one frame whatever the length) and given to OpenCV's
frontal-face Haar cascade (optionally also the profile cascade), shipped in
opencv-python-headless: nothing is downloaded. Boxes are mapped back to the source's pixels.

Tracking: a detection whose box overlaps (IoU >= ``min_iou``) the last box of an open track
continues it (greedy, best overlap first); a track closes once its face has gone undetected
for more than ``max_gap_s`` (missed samples); tracks with fewer than ``min_detections`` are dropped as cascade noise.

Score: ``detectMultiScale3(..., outputRejectLevels=True)`` gives each detection a level weight,
the sum of the cascade's last stage for the best window of its group. A window is a face when
that sum reaches the stage's threshold; the most the stage can give is the sum of its trees'
largest leaves (both read from the cascade file). ``f = (weight - threshold) / (max - threshold)``
is how far past the threshold the window got, as a fraction of the way to the maximum, and
``score = 1 - exp(-10 f)``: 0 at the threshold, 0.63 at a tenth of the way, 0.94 for the clear
frontal face of the test photo with frontalface_alt2 (f = 0.28).

Cascade: ``frontalface_alt2`` by default. On the test clip's face-free crop of the same photo
(suit, flag, helmet) ``frontalface_default`` finds a 27-32 px "face" on the helmet in 7 of 8
samples with min_neighbors 5, alt2 none; both find 97-98 of the 100 faces of scikit-image's LFW subset.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result
from workers.sdk import JobContext, JobError, Service

#: Fraction of the way from the last stage's threshold to its maximum that scores 1 - 1/e.
SCORE_SCALE = 0.1
#: The cascades' window: the smallest face they see is this many pixels of the analysed frame (20-24).
CASCADE_WINDOW_PX = 24
CASCADES = {"frontalface_alt2": "haarcascade_frontalface_alt2.xml",
            "frontalface_default": "haarcascade_frontalface_default.xml"}
PROFILE = "haarcascade_profileface.xml"

service = Service(
    name="faces",
    version="1.0.0",
    description="Face detections on frames sampled at sample_fps (OpenCV Haar cascades), grouped into tracks "
                "with start, end, a representative box [x, y, w, h] in source pixels and a 0-1 score.",
    parameters={
        "type": "object",
        "properties": {
            "sample_fps": {"type": "number", "minimum": 0.05, "maximum": 10, "default": 2,
                           "description": "Frames analysed per second of video."},
            "max_width": {"type": "integer", "minimum": 160, "maximum": 1920, "default": 640,
                          "description": "Frames are scaled down to this width for detection (faster; the "
                                         "smallest face found is 24 px at this width). Boxes are given in the "
                                         "source's pixels."},
            "min_face_size": {"type": "number", "exclusiveMinimum": 0, "maximum": 4096, "default": 0.05,
                              "description": "Smallest face looked for: below 1, a fraction of the picture "
                                             "height; 1 or more, pixels of the source."},
            "scale_factor": {"type": "number", "minimum": 1.05, "maximum": 1.5, "default": 1.1,
                             "description": "Cascade image pyramid step (smaller: slower, finds more sizes)."},
            "min_neighbors": {"type": "integer", "minimum": 1, "maximum": 20, "default": 5,
                              "description": "Overlapping hits a detection needs (higher: fewer false faces)."},
            "cascade": {"type": "string", "enum": sorted(CASCADES), "default": "frontalface_alt2",
                        "description": "OpenCV frontal-face Haar cascade: alt2 makes fewer false hits, default "
                                       "finds a few more partly turned or lit faces."},
            "profile": {"type": "boolean", "default": False,
                        "description": "Also look for faces in profile, both sides (about 5x slower)."},
            "max_gap_s": {"type": "number", "minimum": 0, "maximum": 10, "default": 1.0,
                          "description": "How long a face may go undetected and still continue its track."},
            "min_iou": {"type": "number", "minimum": 0.05, "maximum": 0.95, "default": 0.3,
                        "description": "Box overlap (intersection over union) that makes a detection continue "
                                       "a track."},
            "min_detections": {"type": "integer", "minimum": 1, "maximum": 100, "default": 2,
                               "description": "Detections a track needs to be reported: a face seen in one "
                                              "sample only is most often a false hit of the cascade."},
            "max_detections": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 100,
                               "description": "Detections listed per track at most (evenly spread over the track; "
                                              "count always gives the total)."},
        },
        "additionalProperties": False,
    },
    result_schema=RESULT_SCHEMA,
)

Box = list[int]


@dataclass
class Track:
    """One face followed across samples: its detections as (time, box, score), in time order."""

    id: int
    detections: list[tuple[float, Box, float]] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.detections[0][0]

    @property
    def last_time(self) -> float:
        return self.detections[-1][0]

    @property
    def last_box(self) -> Box:
        return self.detections[-1][1]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw, ih = max(0, min(ax2, bx2) - max(a[0], b[0])), max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class Tracker:
    """Greedy IoU matching of each sample's detections to the tracks still open.

    ``period_s`` is the sampling period: a track misses ``t - last_time - period_s`` seconds
    when its face is next found at ``t``, and stays open while that is at most ``max_gap_s``.
    """

    def __init__(self, min_iou: float, max_gap_s: float, period_s: float = 0.0) -> None:
        self.min_iou, self.max_gap_s, self.period_s = min_iou, max_gap_s, period_s
        self.open: list[Track] = []
        self.closed: list[Track] = []
        self._next = 1

    def add(self, time_s: float, detections: list[tuple[Box, float]]) -> None:
        """Take one sample's detections as (box, score) at ``time_s`` (times must not go back)."""
        # 1 ms of slack: sample times are rounded to the millisecond
        for track in [t for t in self.open if time_s - t.last_time - self.period_s > self.max_gap_s + 1e-3]:
            self.open.remove(track)
            self.closed.append(track)
        pairs = sorted(((box_iou(t.last_box, box), i, j) for i, t in enumerate(self.open)
                        for j, (box, _) in enumerate(detections)), key=lambda p: (-p[0], p[1], p[2]))
        used_tracks: set[int] = set()
        used_dets: set[int] = set()
        for overlap, i, j in pairs:
            if overlap < self.min_iou or i in used_tracks or j in used_dets:
                continue
            self.open[i].detections.append((time_s, *detections[j]))
            used_tracks.add(i)
            used_dets.add(j)
        for j, (box, score) in enumerate(detections):
            if j not in used_dets:
                self.open.append(Track(self._next, [(time_s, box, score)]))
                self._next += 1

    def tracks(self) -> list[Track]:
        """Every track so far, open or closed, in order of creation."""
        return sorted(self.closed + self.open, key=lambda t: t.id)


def representative(track: Track) -> Box:
    """The median box of a track, coordinate by coordinate (robust to one odd detection)."""
    columns = list(zip(*(box for _, box, _ in track.detections)))
    return [sorted(c)[len(c) // 2] for c in columns]


def spread(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` items, evenly spread from the first to the last."""
    if len(items) <= limit:
        return list(items)
    if limit <= 1:
        return items[:limit]
    step = (len(items) - 1) / (limit - 1)
    return [items[round(k * step)] for k in range(limit)]


def score_of(weight: float, threshold: float, maximum: float) -> float:
    """Map a cascade level weight to 0-1 by how far it got past the last stage's threshold."""
    fraction = max(0.0, weight - threshold) / max(1e-9, maximum - threshold)
    return 1.0 - math.exp(-fraction / SCORE_SCALE)


def tracks_to_annotations(tracks: list[Track], min_detections: int, max_detections: int) -> list[dict[str, Any]]:
    """One ``face`` annotation per track of at least ``min_detections`` detections."""
    items = []
    for track in tracks:
        if len(track.detections) < min_detections:
            continue
        scores = [score for _, _, score in track.detections]
        items.append(annotation(
            track.start, track.last_time, "face", confidence=sum(scores) / len(scores),
            track_id=track.id, bbox=representative(track), count=len(track.detections),
            detections=[{"time": t, "bbox": box, "score": round(score, 4)}
                        for t, box, score in spread(track.detections, max_detections)]))
    return items


@lru_cache(maxsize=None)
def last_stage(path: str) -> tuple[float, float]:
    """(threshold, largest possible sum) of a Haar cascade file's last stage."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.rfind("<stageThreshold>")
    stage = text[start:text.find("</stages>", start)]
    threshold = float(re.search(r"<stageThreshold>\s*([-+0-9.eE]+)", stage).group(1))
    leaves = re.findall(r"<leafValues>\s*([^<]+)</leafValues>", stage)
    return threshold, sum(max(float(v) for v in values.split()) for values in leaves)


def video_geometry(stream: dict[str, Any], max_width: int) -> tuple[int, int, int, int]:
    """(picture width, height, analysis width, height) of a probed video stream.

    The picture is the frame as ffmpeg decodes it: rotated as its display matrix says (ffmpeg
    auto-rotates), in stored pixels. The analysis frame has the display aspect ratio (square
    pixels, so faces keep their shape) and even sides, no wider than ``max_width``.
    """
    width, height = int(stream["width"]), int(stream["height"])
    sar = _ratio(stream.get("sample_aspect_ratio")) or 1.0
    display_w, display_h = width * sar, float(height)
    rotation = _rotation(stream)
    if rotation % 180 == 90:
        width, height, display_w, display_h = height, width, display_h, display_w
    analysis_w = max(2, int(min(max_width, display_w)) // 2 * 2)
    analysis_h = max(2, round(display_h * analysis_w / display_w / 2) * 2)
    return width, height, analysis_w, analysis_h


def _ratio(text: Any) -> float | None:
    try:
        num, den = (float(part) for part in str(text).split(":"))
        return num / den if num > 0 and den > 0 else None
    except ValueError:
        return None


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]))) % 360
    try:
        return int(stream.get("tags", {}).get("rotate", 0)) % 360
    except ValueError:
        return 0


def pick_video_stream(info: dict[str, Any]) -> dict[str, Any]:
    """The first real video stream (cover art of an audio file does not count).

    Raises:
        JobError: 305 when there is none.
    """
    for stream in info.get("streams", []):
        if (stream.get("codec_type") == "video" and stream.get("width")
                and not (stream.get("disposition") or {}).get("attached_pic")):
            return stream
    raise JobError(305, "the document has no video stream to look for faces in")


@service.handler
def run(job: JobContext) -> dict:
    import cv2
    import numpy as np

    from workers.sdk.media import binary, duration_s, probe

    p = job.params
    info = probe(job, job.input_path)
    stream = pick_video_stream(info)
    src_w, src_h, width, height = video_geometry(stream, p["max_width"])
    scale_x, scale_y = src_w / width, src_h / height
    duration = duration_s(info)
    fps = float(p["sample_fps"])
    expected = math.ceil(duration * fps) if duration else 0
    # The smallest face in analysis pixels: a fraction of the height, or source pixels scaled down
    size = p["min_face_size"]
    min_px = max(CASCADE_WINDOW_PX, round(size * height if size < 1 else size / scale_y))
    if min_px > min(width, height):
        raise JobError(307, f"min_face_size {size:g} is larger than the picture ({src_w}x{src_h})")

    cascades = []
    frontal = CASCADES[p["cascade"]]
    for name, mirrored in [(frontal, False)] + ([(PROFILE, False), (PROFILE, True)] if p["profile"] else []):
        path = cv2.data.haarcascades + name
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise JobError(306, f"the OpenCV cascade {name} is missing from this worker")
        cascades.append((cascade, *last_stage(path), mirrored))
    tracker = Tracker(p["min_iou"], p["max_gap_s"], period_s=1 / fps)
    frames = 0

    def detect(frame: Any) -> list[tuple[Box, float]]:
        """Faces in one analysis frame as (box in source pixels, score), overlapping views merged."""
        found: list[tuple[Box, float]] = []
        for cascade, threshold, maximum, mirrored in cascades:
            image = cv2.flip(frame, 1) if mirrored else frame   # the profile cascade sees one side only
            boxes, _levels, weights = cascade.detectMultiScale3(
                image, scaleFactor=p["scale_factor"], minNeighbors=p["min_neighbors"], minSize=(min_px, min_px),
                outputRejectLevels=True)
            for (x, y, w, h), weight in zip(boxes, np.ravel(weights) if len(boxes) else []):
                x = width - x - w if mirrored else x
                box = [round(x * scale_x), round(y * scale_y), round(w * scale_x), round(h * scale_y)]
                found.append((box, score_of(float(weight), threshold, maximum)))
        if len(cascades) == 1:
            return found
        kept: list[tuple[Box, float]] = []             # one box per face: the best-scored view wins
        for box, score in sorted(found, key=lambda d: -d[1]):
            if all(box_iou(box, other) < 0.3 for other, _ in kept):
                kept.append((box, score))
        return kept

    def on_frame(raw: bytes) -> None:
        nonlocal frames
        if len(raw) != width * height:                  # a truncated last frame
            return
        frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
        tracker.add(round(frames / fps, 3), detect(frame))
        frames += 1
        if expected:
            job.progress(99 * frames / expected)
        else:
            job.check_cancelled()

    args = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error",
            "-i", str(job.input_path), "-map", f"0:{stream['index']}", "-an", "-sn", "-dn",
            "-vf", f"fps={fps:g},scale={width}:{height}:flags=area,format=gray", "-f", "rawvideo", "pipe:1"]
    job.progress(1)
    code, stderr = job.stream(args, width * height, on_frame)
    if code != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].replace(str(job.input_path), "input")[:200] if lines else f"exit code {code}"
        raise JobError(306, f"ffmpeg could not decode the video: {reason}")

    tracks = tracker.tracks()
    annotations = tracks_to_annotations(tracks, p["min_detections"], p["max_detections"])
    return annotation_result(service, job.doc_url, duration, annotations, {
        "tracks": len(annotations), "detections": sum(a["data"]["count"] for a in annotations),
        "short_tracks_dropped": len(tracks) - len(annotations), "frames_sampled": frames, "sample_fps": fps,
        "picture_size": [src_w, src_h], "analysis_size": [width, height]})
