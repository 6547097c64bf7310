"""transitions: hard cuts, gradual transitions (fades, dissolves) and black segments, streamed frame by frame.

ffmpeg decodes the video to tiny RGB frames (64x36) on its stdout; :class:`Detector` reads them one
at a time through :meth:`JobContext.stream`, keeping only a short ring of recent frames, so memory
stays constant whatever the length of the document.

* A **cut** at frame *i* is a jump of the mean absolute difference between frames *i-1* and *i*
  (``d[i]``, 0-1) above ``threshold`` that also stands out ``cut_ratio`` times above the median of
  its neighbours ``d[i±1]``, ``d[i±2]``: motion raises every ``d`` around it, a cut only one.
  A jump after which the picture comes back (a flash) is not a cut.
* A **gradual transition** is a window of *k* frames (0.25 s up to ``max_fade_s``) with no cut in
  it across which the picture changed by at least ``fade_threshold`` (difference between its first
  and last frame), ``fade_ratio`` times more than across the windows of the same length just before
  and just after it: a zoom, a pan or a moving pattern changes at a steady rate and does not fire.
  Its span is refined by projecting each frame on the change: a dissolve moves linearly from the
  first picture to the second. Through or from/to black it is a ``fade``, otherwise a ``dissolve``.
* A **black** segment is a run of at least ``min_black_s`` of frames whose pixels are at least
  ``black_ratio`` dark (luma at most ``black_pixel_threshold``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result
from workers.sdk import JobContext, JobError, Service

#: Analysis frame size: small enough to be cheap and to blur noise, large enough to see a shot change.
WIDTH, HEIGHT = 64, 36
FRAME_BYTES = WIDTH * HEIGHT * 3
#: Neighbours on each side that a cut's frame difference is compared with.
CUT_WINDOW = 2
#: A jump is a flash, not a cut, when the picture FLASH_FRAMES after it matches the one FLASH_FRAMES before it.
FLASH_FRAMES = 3
#: Frames of look-ahead a cut decision needs.
LOOKAHEAD = max(CUT_WINDOW, FLASH_FRAMES)
#: Gradual transition windows tried, in seconds (those up to max_fade_s, plus max_fade_s itself).
FADE_WINDOWS_S = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Projection levels used to find where a dissolve starts and ends (extrapolated to 0 and 1).
LOW, HIGH = 0.15, 0.85

service = Service(
    name="transitions",
    version="1.0.0",
    description="Shot boundaries: hard cuts and gradual transitions (fades, dissolves) with time, frame number "
                "and score, and black segments. Streams small decoded frames; works on any length.",
    parameters={
        "type": "object",
        "properties": {
            "threshold": {"type": "number", "minimum": 0.01, "maximum": 1, "default": 0.1,
                          "description": "Cut threshold: mean absolute difference between two consecutive frames "
                                         "(0-1 of full scale) above which a cut may be declared. Lower finds cuts "
                                         "between similar shots, higher ignores them."},
            "cut_ratio": {"type": "number", "minimum": 1, "maximum": 50, "default": 3,
                          "description": "A cut's difference must be this many times the median difference of "
                                         "the 2 frames on each side (rejects fast motion)."},
            "min_shot_s": {"type": "number", "minimum": 0, "maximum": 60, "default": 0.2,
                           "description": "Shortest shot: a cut closer than this to the previous one is dropped."},
            "fades": {"type": "boolean", "default": True,
                      "description": "Also look for gradual transitions (fades and dissolves)."},
            "fade_threshold": {"type": "number", "minimum": 0.02, "maximum": 1, "default": 0.25,
                               "description": "Least change across a gradual transition: mean absolute difference "
                                              "(0-1) between the frames before and after it. Lower is more sensitive."},
            "fade_ratio": {"type": "number", "minimum": 1, "maximum": 50, "default": 2,
                           "description": "The change across a gradual transition must be this many times the "
                                          "change over equally long windows before and after it (rejects zooms "
                                          "and steady motion)."},
            "max_fade_s": {"type": "number", "minimum": 0.25, "maximum": 4, "default": 2,
                           "description": "Longest gradual transition looked for, in seconds."},
            "black": {"type": "boolean", "default": True, "description": "Also report black segments."},
            "min_black_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 0.5,
                            "description": "Shortest black segment reported, in seconds."},
            "black_pixel_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                                      "description": "Luma (0-1) at or below which a pixel counts as black."},
            "black_ratio": {"type": "number", "minimum": 0.5, "maximum": 1, "default": 0.98,
                            "description": "Share of black pixels for a frame to count as black."},
        },
        "additionalProperties": False,
    },
    result_schema=RESULT_SCHEMA,
)


@dataclass
class Settings:
    """The detector's parameters in frames and 0-1 units."""

    fps: float
    threshold: float = 0.1
    cut_ratio: float = 3.0
    min_shot_s: float = 0.2
    fades: bool = True
    fade_threshold: float = 0.25
    fade_ratio: float = 2.0
    max_fade_s: float = 2.0
    black: bool = True
    min_black_s: float = 0.5
    black_pixel_threshold: float = 0.1
    black_ratio: float = 0.98

    @classmethod
    def from_params(cls, fps: float, params: dict[str, Any]) -> Settings:
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__ and k != "fps"}
        return cls(fps=fps, **known)

    @property
    def windows(self) -> list[int]:
        """Gradual-transition window lengths in frames (at least 2)."""
        seconds = [s for s in FADE_WINDOWS_S if s < self.max_fade_s] + [self.max_fade_s]
        return sorted({max(2, round(s * self.fps)) for s in seconds})


@dataclass
class Event:
    """A detection in frames: cut (start == end == first frame of the new shot), gradual or black."""

    kind: str
    start: int
    end: int
    score: float
    confidence: float
    data: dict[str, Any] = field(default_factory=dict)


class Detector:
    """Streaming shot-boundary detector: :meth:`push` each frame (HxWx3 uint8), then :meth:`finish`.

    Memory is a ring of the last few seconds of (tiny) frames and their per-frame figures.
    Decisions lag the input by about two of the longest windows; :meth:`finish` flushes them.
    """

    def __init__(self, settings: Settings) -> None:
        import numpy as np

        self._np = np
        self.s = settings
        self.windows = settings.windows if settings.fades else []
        self.kmax = max(self.windows, default=0)
        self.keep = 4 * self.kmax + 2 * LOOKAHEAD + 8      # frames held: the refine looks back ~3 windows
        self.frames: dict[int, Any] = {}
        self.d: dict[int, float] = {}                       # d[i]: mean |F[i] - F[i-1]|, 0-1
        self.span: dict[tuple[int, int], float] = {}       # (k, t): mean |F[t] - F[t-k]|, 0-1
        self.dark: dict[int, bool] = {}
        self.cut_at: dict[int, bool] = {}
        self.n = 0                                          # frames pushed
        self.events: list[Event] = []
        self._last_cut = -(10 ** 9)
        self._clusters: list[list[tuple[int, int, float, float]]] = []   # candidates (t, k, score, base)
        self._black_start: int | None = None
        self._luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        self._min_shot = max(1, round(settings.min_shot_s * settings.fps))
        self._min_black = max(1, math.ceil(settings.min_black_s * settings.fps - 1e-6))

    # -- input ---------------------------------------------------------------------------------
    def push(self, frame: Any) -> None:
        """Add the next frame (HxWx3 uint8 array) and make every decision it allows."""
        np = self._np
        i = self.n
        f = np.asarray(frame, dtype=np.float32)
        self.frames[i] = f
        self.d[i] = float(np.abs(f - self.frames[i - 1]).mean()) / 255 if i else 0.0
        for k in self.windows:
            if i >= k:
                self.span[(k, i)] = float(np.abs(f - self.frames[i - k]).mean()) / 255
        luma = f @ self._luma
        self.dark[i] = bool((luma <= self.s.black_pixel_threshold * 255).mean() >= self.s.black_ratio)
        self.n += 1
        self._decide(final=False)
        self._forget(i - self.keep)

    def finish(self) -> list[Event]:
        """Flush the pending decisions; return every event sorted by frame."""
        self._decide(final=True)
        if self._black_start is not None:
            self._black(self._black_start, self.n)
            self._black_start = None
        return sorted(self.events, key=lambda e: (e.start, e.end))

    # -- decisions ------------------------------------------------------------------------------
    def _decide(self, final: bool) -> None:
        last = self.n - 1
        for i in self._pending("_next_cut", last - LOOKAHEAD, last, final):
            self._decide_cut(i)
        # Black runs follow the frames directly.
        for i in self._pending("_next_black", last, last, final):
            self._decide_black(i)
        # A window ending at t needs the next window's span and the cut flags up to t + k.
        for k in self.windows:
            for t in self._pending(f"_next_fade_{k}", last - k - LOOKAHEAD, last, final):
                if t >= k:
                    self._decide_fade(t, k)
        # Later candidates start at or after frontier - kmax: clusters ending before are complete.
        frontier = min((getattr(self, f"_next_fade_{k}", 0) for k in self.windows), default=self.n)
        for cluster in [c for c in self._clusters if final or max(t for t, *_ in c) < frontier - self.kmax]:
            self._clusters.remove(cluster)
            self._resolve(cluster)

    def _pending(self, name: str, upto: int, last: int, final: bool) -> range:
        """Frames not yet decided by the step ``name`` that can be decided now (all of them at the end)."""
        start = getattr(self, name, 0)
        stop = (last if final else upto) + 1
        if stop <= start:
            return range(0)
        setattr(self, name, stop)
        return range(start, stop)

    def _decide_cut(self, i: int) -> None:
        np = self._np
        self.cut_at[i] = False
        if i == 0 or self.d[i] < self.s.threshold:
            return
        around = [self.d[j] for j in range(i - CUT_WINDOW, i + CUT_WINDOW + 1) if j != i and 0 < j < self.n]
        base = float(np.median(around)) if around else 0.0
        if self.d[i] < self.s.cut_ratio * max(base, 1 / 255):
            return
        # Either edge of a flash: the picture a few frames on is the one from a few frames back.
        before, after = max(0, i - 1 - FLASH_FRAMES), min(i + FLASH_FRAMES, self.n - 1)
        if after > i and float(np.abs(self.frames[after] - self.frames[before]).mean()) / 255 < self.s.threshold:
            return
        self.cut_at[i] = True
        if i - self._last_cut < self._min_shot:
            return
        self._last_cut = i
        self.events.append(Event("cut", i, i, self.d[i], 1 - base / self.d[i], {}))

    def _decide_black(self, i: int) -> None:
        if not self.s.black:
            return
        if self.dark[i] and self._black_start is None:
            self._black_start = i
        elif not self.dark[i] and self._black_start is not None:
            self._black(self._black_start, i)
            self._black_start = None

    def _black(self, start: int, stop: int) -> None:
        if stop - start >= self._min_black:
            self.events.append(Event("black", start, stop, 1.0, 1.0, {}))

    def _no_cut(self, first: int, last: int) -> bool:
        return not any(self.cut_at.get(j, False) for j in range(max(1, first), last + 1))

    def _decide_fade(self, t: int, k: int) -> None:
        score = self.span.get((k, t), 0.0)
        if score < self.s.fade_threshold or not self._no_cut(t - k + 1, t):
            return
        # The change must be gradual: no single step carries half of it.
        if max(self.d[j] for j in range(t - k + 1, t + 1)) > 0.5 * score:
            return
        neighbours = []
        if t - k >= k and self._no_cut(t - 2 * k + 1, t - k):
            neighbours.append(self.span[(k, t - k)])
        if (k, t + k) in self.span and self._no_cut(t + 1, t + k):
            neighbours.append(self.span[(k, t + k)])
        base = max(neighbours, default=0.0)
        if score < self.s.fade_ratio * base:
            return
        candidate = (t, k, score, base)
        # Overlapping candidate windows describe one transition; they may join two clusters into one.
        joined = [c for c in self._clusters if any(t - k <= t2 and t2 - k2 <= t for t2, k2, *_ in c)]
        for c in joined:
            self._clusters.remove(c)
        self._clusters.append([candidate, *(x for c in joined for x in c)])

    def _resolve(self, cluster: list[tuple[int, int, float, float]]) -> None:
        """Turn a cluster of overlapping candidate windows into one gradual transition: the strongest."""
        t, k, score, base = max(cluster, key=lambda c: (c[2], -c[1], -c[0]))
        start, end = self._refine(t - k, t)
        kind, via = self._fade_kind(start, end)
        data: dict[str, Any] = {"frame": (start + end) // 2, "start_frame": start, "end_frame": end}
        if via:
            data["fade"] = via
        self.events.append(Event(kind, start, end, score, 1 - base / score, data))

    def _refine(self, first: int, last: int) -> tuple[int, int]:
        """Where in ``[first, last]`` the picture moved from F[first] to F[last] (linear projection)."""
        np = self._np
        if first not in self.frames or last not in self.frames:
            return first, last
        a, b = self.frames[first], self.frames[last]
        v = (b - a).ravel()
        norm = float(v @ v)
        if norm <= 0:
            return first, last
        proj = [float((self.frames[i] - a).ravel() @ v) / norm if i in self.frames else 0.0
                for i in range(first, last + 1)]
        lo = next((i for i, p in enumerate(proj) if p >= LOW), 0)
        hi = max((i for i, p in enumerate(proj) if p <= HIGH), default=len(proj) - 1)
        if hi < lo:
            lo, hi = hi, lo
        length = max(1.0, (hi - lo) / (HIGH - LOW))
        start = lo - LOW * length
        end = start + length
        start_i = int(np.clip(round(start), 0, last - first)) + first
        end_i = int(np.clip(round(end), 0, last - first)) + first
        return start_i, max(end_i, start_i + 1)

    def _fade_kind(self, start: int, end: int) -> tuple[str, str | None]:
        """'fade' when the transition goes to, from or through black, else 'dissolve'."""
        if self.dark.get(end, False) and not self.dark.get(start, False):
            return "fade", "out"
        if self.dark.get(start, False) and not self.dark.get(end, False):
            return "fade", "in"
        if any(self.dark.get(i, False) for i in range(start + 1, end)):
            return "fade", "through-black"
        return "dissolve", None

    def _forget(self, before: int) -> None:
        """Drop what no decision can need any more (everything older than the ring)."""
        if before < 0:
            return
        for store in (self.frames, self.d, self.dark, self.cut_at):
            store.pop(before, None)
        for k in self.windows:
            self.span.pop((k, before), None)


def ffmpeg_args(ffmpeg: str, source: str, fps: float) -> list[str]:
    """Decode the first video stream to WIDTHxHEIGHT RGB frames on stdout, one constant-rate frame each."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", source, "-map", "0:v:0",
            "-an", "-sn", "-dn", "-vf", f"scale={WIDTH}:{HEIGHT}:flags=area,format=rgb24",
            # Constant rate so that frame number / fps is the frame's time.
            "-fps_mode", "cfr", "-r", f"{fps:.6g}", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]


def to_annotations(events: list[Event], fps: float) -> list[dict[str, Any]]:
    """Turn frame-based events into annotations in seconds (the shared result schema)."""
    out = []
    for e in events:
        if e.kind == "cut":
            out.append(annotation(e.start / fps, e.start / fps, "cut", confidence=e.confidence,
                                  frame=e.start, score=round(e.score, 4)))
        elif e.kind == "black":
            out.append(annotation(e.start / fps, e.end / fps, "black", start_frame=e.start,
                                  end_frame=e.end - 1, frames=e.end - e.start))
        else:
            out.append(annotation(e.start / fps, e.end / fps, e.kind, confidence=e.confidence,
                                  score=round(e.score, 4), **e.data))
    return out


def summarize(events: list[Event], frames: int, fps: float) -> dict[str, Any]:
    counts = {kind: sum(1 for e in events if e.kind == kind) for kind in ("cut", "fade", "dissolve", "black")}
    return {"cuts": counts["cut"], "fades": counts["fade"], "dissolves": counts["dissolve"],
            "shots": 1 + counts["cut"] + counts["fade"] + counts["dissolve"] if frames else 0,
            "black_segments": counts["black"],
            "black_seconds": round(sum((e.end - e.start) for e in events if e.kind == "black") / fps, 3),
            "frames": frames, "fps": round(fps, 3)}


@service.handler
def run(job: JobContext) -> dict:
    import numpy as np

    from workers.sdk.media import binary, duration_s, frame_rate, probe

    info = probe(job, job.input_path)
    duration = duration_s(info)
    fps = frame_rate(info)
    detector = Detector(Settings.from_params(fps, job.params))
    expected = max(1.0, duration * fps)
    job.progress(1)

    def on_frame(chunk: bytes) -> None:
        if len(chunk) < FRAME_BYTES:     # a truncated last frame: nothing to compare
            return
        detector.push(np.frombuffer(chunk, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3))
        if detector.n % 10 == 0:
            job.progress(1 + 97 * min(1.0, detector.n / expected))

    code, stderr = job.stream(ffmpeg_args(binary("ffmpeg"), str(job.input_path), fps), FRAME_BYTES, on_frame)
    if code != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {code}"
        raise JobError(306, f"ffmpeg failed: {reason.replace(str(job.input_path), 'input')[:300]}")
    if detector.n == 0:
        raise JobError(305, "the video stream has no decodable frame")
    events = detector.finish()
    job.progress(99)
    duration = duration or detector.n / fps
    return annotation_result(service, job.doc_url, duration, to_annotations(events, fps),
                             summarize(events, detector.n, fps))
