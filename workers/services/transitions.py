"""transitions: hard cuts, gradual transitions (fades, dissolves) and black segments, streamed frame by frame.

One ffmpeg process decodes the video at a constant frame rate; in the same filter graph ffmpeg's
``blackdetect`` marks the black runs (read from the ``metadata`` filter on ffmpeg's stderr) and the
frames are scaled to tiny BGR pictures (64x36) on its stdout. :class:`Detector` reads them one at a
time through :meth:`JobContext.stream`, keeping only a short ring of recent frames, so memory stays
constant whatever the length of the document.

* **Cuts** are PySceneDetect's (``scenedetect-headless``), fed frame by frame through its per-frame
  API: ``AdaptiveDetector`` by default (a frame's HSV content score must reach ``threshold`` and
  stand out ``cut_ratio`` times above the mean of the 2 frames on each side: motion raises every
  score around it, a cut only one), or ``ContentDetector`` (the score alone against ``threshold``).
  ``min_shot_s`` is their minimum scene length. Two checks are added on top: a jump after which the
  picture comes back (a flash) is not a cut, and a cut reported inside a fade or dissolve (the
  detector fires where the picture leaves black, its hue undefined) is part of that transition.
* **Black** segments are ffmpeg's ``blackdetect`` runs (``black_pixel_threshold`` is its ``pix_th``,
  ``black_ratio`` its ``pic_th``, ``min_black_s`` its ``d``).
* **Fades** (out to, in from, through black) are found by PySceneDetect's ``ThresholdDetector``:
  where the picture's mean falls below its black level (12 of 255) and comes back. Their span is
  the steady luma ramp before and after (up to ``max_fade_s``; a jump is a cut, not a fade); out
  and in around black shorter than ``min_black_s`` are one fade through black.
* **Dissolves**: PySceneDetect has no dissolve detector, so this module's own measure is kept for
  them: a window of *k* frames (0.25 s up to ``max_fade_s``) across which the picture changed by
  at least ``fade_threshold`` (difference between its first and last frame), ``fade_ratio`` times
  more than across the windows of the same length just before and just after it, with no single
  frame step carrying half of the change (that is a cut): a zoom, a pan or a moving pattern changes
  at a steady rate and does not fire. Its span is refined by projecting each frame on the change: a
  dissolve moves linearly from the first picture to the second. One that overlaps a fade is that fade.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result
from workers.sdk import JobContext, JobError, Service

#: Analysis frame size: small enough to be cheap and to blur noise, large enough to see a shot change.
WIDTH, HEIGHT = 64, 36
FRAME_BYTES = WIDTH * HEIGHT * 3
#: Frames on each side of a frame that AdaptiveDetector averages (its ``window_width``).
CUT_WINDOW = 2
#: A jump is a flash, not a cut, when the picture FLASH_FRAMES after it is closer to the one
#: FLASH_FRAMES before it than FLASH_RATIO times the jump itself.
FLASH_FRAMES = 3
FLASH_RATIO = 0.5
#: Frames of look-ahead a cut decision needs.
LOOKAHEAD = max(CUT_WINDOW, FLASH_FRAMES)
#: Gradual transition windows tried, in seconds (those up to max_fade_s, plus max_fade_s itself).
FADE_WINDOWS_S = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Projection levels used to find where a dissolve starts and ends (extrapolated to 0 and 1).
LOW, HIGH = 0.15, 0.85
#: PySceneDetect ThresholdDetector's level (mean 8-bit intensity, its default) below which a frame is faded out.
FADE_BLACK_LEVEL = 12
#: A fade's ramp: frames whose mean luma (0-255) moves by more than this each step, towards or away from black.
RAMP_STEP = 0.5
#: A line of the ``metadata`` filter's print: the frame, then its keys (``lavfi.black_start=2``).
_FRAME_LINE = re.compile(r"^frame:(\d+)\s")
_BLACK_LINE = re.compile(r"^lavfi\.black_(start|end)=")

service = Service(
    name="transitions",
    version="2.0.0",
    description="Shot boundaries: hard cuts (PySceneDetect) and gradual transitions (fades, dissolves) with "
                "time, frame number and score, and black segments (ffmpeg blackdetect). Streams small decoded "
                "frames; works on any length.",
    parameters={
        "type": "object",
        "properties": {
            "detector": {"type": "string", "enum": ["adaptive", "content"], "default": "adaptive",
                         "description": "PySceneDetect's cut detector: AdaptiveDetector (a frame's score against "
                                        "its neighbours', robust to fast motion) or ContentDetector (the score "
                                        "alone against threshold)."},
            "threshold": {"type": "number", "minimum": 1, "maximum": 255, "default": 15,
                          "description": "Cut threshold on PySceneDetect's content score (mean change of hue, "
                                         "saturation and luma between two frames, 0-255): AdaptiveDetector's "
                                         "min_content_val, ContentDetector's threshold (PySceneDetect's own "
                                         "default for it is 27). Lower finds cuts between similar shots."},
            "cut_ratio": {"type": "number", "minimum": 1, "maximum": 50, "default": 3,
                          "description": "AdaptiveDetector's adaptive_threshold: a cut's score must be this many "
                                         "times the mean score of the 2 frames on each side (rejects fast "
                                         "motion). Not used by ContentDetector."},
            "min_shot_s": {"type": "number", "minimum": 0, "maximum": 60, "default": 0.2,
                           "description": "Shortest shot (the detectors' min_scene_len): a cut closer than this "
                                          "to the previous one is dropped."},
            "fades": {"type": "boolean", "default": True,
                      "description": "Also look for gradual transitions: fades (PySceneDetect's "
                                     "ThresholdDetector) and dissolves."},
            "fade_threshold": {"type": "number", "minimum": 0.02, "maximum": 1, "default": 0.25,
                               "description": "Least change across a dissolve: mean absolute difference (0-1) "
                                              "between the frames before and after it. Lower is more sensitive."},
            "fade_ratio": {"type": "number", "minimum": 1, "maximum": 50, "default": 2,
                           "description": "The change across a dissolve must be this many times the change over "
                                          "equally long windows before and after it (rejects zooms and steady "
                                          "motion)."},
            "max_fade_s": {"type": "number", "minimum": 0.25, "maximum": 4, "default": 2,
                           "description": "Longest dissolve looked for, and longest ramp of a fade (each side of "
                                          "its black), in seconds."},
            "black": {"type": "boolean", "default": True, "description": "Also report black segments."},
            "min_black_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 0.5,
                            "description": "Shortest black segment reported, in seconds (blackdetect's d)."},
            "black_pixel_threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1,
                                      "description": "Luma (0-1 of the video's range) at or below which a pixel "
                                                     "counts as black (blackdetect's pix_th)."},
            "black_ratio": {"type": "number", "minimum": 0.5, "maximum": 1, "default": 0.98,
                            "description": "Share of black pixels for a frame to count as black (blackdetect's "
                                           "pic_th)."},
        },
        "additionalProperties": False,
    },
    result_schema=RESULT_SCHEMA,
)


@dataclass
class Settings:
    """The detector's parameters (the JSON Schema above is their source of truth)."""

    fps: float
    detector: str = "adaptive"
    threshold: float = 15.0
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

    def scene_detector(self) -> Any:
        """The PySceneDetect detector that decides the cuts."""
        from scenedetect.detector import FlashFilter
        from scenedetect.detectors import AdaptiveDetector, ContentDetector

        min_scene = round(self.min_shot_s * self.fps)        # frames: exact at any rate
        if self.detector == "content":
            # SUPPRESS reports a cut at the frame that crosses the threshold, never later.
            return ContentDetector(threshold=self.threshold, min_scene_len=min_scene,
                                   filter_mode=FlashFilter.Mode.SUPPRESS)
        return AdaptiveDetector(adaptive_threshold=self.cut_ratio, min_scene_len=min_scene,
                                window_width=CUT_WINDOW, min_content_val=self.threshold)


@dataclass
class Event:
    """A detection in frames: cut (start == end == first frame of the new shot), gradual or black."""

    kind: str
    start: int
    end: int
    score: float
    confidence: float | None
    data: dict[str, Any] = field(default_factory=dict)


class Detector:
    """Streaming shot-boundary detector: :meth:`push` each frame (HxWx3 uint8 BGR), :meth:`black_line`
    each line of ffmpeg's blackdetect metadata, then :meth:`finish`.

    Memory is a ring of the last few seconds of (tiny) frames and their per-frame figures, plus the
    events found. Decisions lag the input by about two of the longest windows; :meth:`finish`
    flushes them.
    """

    def __init__(self, settings: Settings) -> None:
        import numpy as np

        from scenedetect.common import FrameTimecode

        self._np = np
        self._timecode = FrameTimecode
        self._fps = float(settings.fps)                     # PySceneDetect takes a float or a Fraction
        self.s = settings
        self.scene = settings.scene_detector()
        self.fader = None
        if settings.fades:
            from scenedetect.detectors import ThresholdDetector
            self.fader = ThresholdDetector(threshold=FADE_BLACK_LEVEL, min_scene_len=0)
        self.windows = settings.windows if settings.fades else []
        self.kmax = max(self.windows, default=0)
        self.keep = 4 * self.kmax + 2 * LOOKAHEAD + 8      # frames held: the refine looks back ~3 windows
        self.frames: dict[int, Any] = {}
        self.d: dict[int, float] = {}                       # d[i]: mean |F[i] - F[i-1]|, 0-1
        self.luma: dict[int, float] = {}                    # mean luma of F[i], 0-255
        self.span: dict[tuple[int, int], float] = {}       # (k, t): mean |F[t] - F[t-k]|, 0-1
        self.n = 0                                          # frames pushed
        self.cuts: list[Event] = []
        self.gradual: list[Event] = []                      # dissolves (this module's window measure)
        self.fades: list[Event] = []                        # fades (ThresholdDetector's crossings + ramps)
        self._fade_out: tuple[int, tuple[int, int] | None] | None = None   # (dark from, ramp) while dark
        self._fade_in: list[tuple[int, int, tuple[int, int] | None]] = []  # (dark from, dark until, ramp out)
        self.black_runs: list[tuple[int, int]] = []         # blackdetect's runs [start, stop)
        self._pending_cuts: list[int] = []                  # cuts PySceneDetect reported, flash check to do
        self._clusters: list[list[tuple[int, int, float, float]]] = []   # candidates (t, k, score, base)
        self._black_start: int | None = None
        self._meta_frame = 0
        self._min_black = max(1, math.ceil(settings.min_black_s * settings.fps - 1e-6))
        self._max_fade = max(2, round(settings.max_fade_s * settings.fps))
        self._luma_weights = np.array([0.114, 0.587, 0.299], dtype=np.float32)   # B, G, R

    # -- input ---------------------------------------------------------------------------------
    def push(self, frame: Any) -> None:
        """Add the next frame (HxWx3 uint8 BGR array) and make every decision it allows."""
        np = self._np
        i = self.n
        image = np.ascontiguousarray(frame, dtype=np.uint8)
        timecode = self._timecode(i, self._fps)
        self._pending_cuts += [c.frame_num for c in self.scene.process_frame(timecode, image)]
        f = image.astype(np.float32)
        self.frames[i] = f
        self.luma[i] = float((f @ self._luma_weights).mean())
        if self.fader is not None:
            self._follow_fader(i, timecode, image)
        self.d[i] = float(np.abs(f - self.frames[i - 1]).mean()) / 255 if i else 0.0
        for k in self.windows:
            if i >= k:
                self.span[(k, i)] = float(np.abs(f - self.frames[i - k]).mean()) / 255
        self.n += 1
        self._decide(final=False)
        self._forget(i - self.keep)

    def black_line(self, line: str) -> None:
        """Read one line of the ``metadata`` filter's print of blackdetect's marks.

        ``frame:N ...`` names the frame whose keys follow; ``lavfi.black_start`` marks the first
        black frame of a run, ``lavfi.black_end`` the first frame after it.
        """
        if match := _FRAME_LINE.match(line):
            self._meta_frame = int(match.group(1))
        elif match := _BLACK_LINE.match(line):
            if match.group(1) == "start":
                self._black_start = self._meta_frame
            elif self._black_start is not None:
                self.black_runs.append((self._black_start, self._meta_frame))
                self._black_start = None

    def finish(self) -> list[Event]:
        """Flush the pending decisions; return every event sorted by frame."""
        if self.n:
            last = self._timecode(self.n - 1, self._fps)
            self._pending_cuts += [c.frame_num for c in self.scene.post_process(last)]
        self._decide(final=True)
        if self._fade_out is not None:              # the document ends faded out
            dark_from, ramp = self._fade_out
            self._fade_out = None
            if ramp is not None:
                self._add_fade(ramp[0], dark_from, "out")
        if self._black_start is not None:           # blackdetect ends a run only at a non-black frame
            self.black_runs.append((self._black_start, self.n))
            self._black_start = None
        # A fade found by its black is a fade, whatever the window measure made of it.
        dissolves = [g for g in self.gradual if not any(f.start <= g.end and g.start <= f.end for f in self.fades)]
        # A cut inside a transition is that transition (e.g. where a fade leaves black, hue undefined there).
        cuts = [c for c in self.cuts if not any(g.start < c.start < g.end for g in dissolves)
                and not any(f.start <= c.start <= f.end for f in self.fades)]
        black = [Event("black", a, b, 1.0, 1.0, {}) for a, b in self.black_runs
                 if self.s.black and b - a >= self._min_black]
        return sorted(cuts + dissolves + self.fades + black, key=lambda e: (e.start, e.end))

    # -- fades: ThresholdDetector's crossings of the black level, spans from the luma ramps -----
    def _follow_fader(self, i: int, timecode: Any, image: Any) -> None:
        """Feed ThresholdDetector; note where it sees the picture fade out (below the level) and back in."""
        before = self.fader.last_fade["type"]
        self.fader.process_frame(timecode, image)
        after = self.fader.last_fade["type"]
        if before is None and after == "out":               # the document starts faded out
            self._fade_out = (0, None)
        elif before == "in" and after == "out":
            self._fade_out = (i, self._ramp_down(i))
        elif before == "out" and after == "in":
            dark_from, ramp = self._fade_out or (0, None)
            self._fade_out = None
            self._fade_in.append((dark_from, i, ramp))

    def _ramp_down(self, dark: int) -> tuple[int, int] | None:
        """The frames before ``dark`` over which the picture dimmed steadily to it, if it did (not a cut)."""
        j = dark - 1
        while j - 1 in self.luma and dark - (j - 1) <= self._max_fade and self.luma[j - 1] > self.luma[j] + RAMP_STEP:
            j -= 1
        if j not in self.luma or dark - j < 2 or self.luma[dark - 1] > 0.5 * self.luma[j]:
            return None
        return j, dark

    def _ramp_up(self, light: int, final: bool) -> tuple[int, int] | None | bool:
        """The frames from ``light`` over which the picture brightened steadily; False while undecided."""
        j = light
        while j + 1 in self.luma and j + 1 - light < self._max_fade and self.luma[j + 1] > self.luma[j] + RAMP_STEP:
            j += 1
        if j + 1 not in self.luma and not final and j + 1 - light < self._max_fade:
            return False                                     # still brightening: wait for more frames
        if j - light < 1 or self.luma[light] > 0.5 * self.luma[j]:
            return None
        return light, j

    def _decide_fades(self, final: bool) -> None:
        for item in list(self._fade_in):
            dark_from, light, ramp_down = item
            ramp_up = self._ramp_up(light, final)
            if ramp_up is False:
                continue
            self._fade_in.remove(item)
            if ramp_down and ramp_up and light - dark_from < self._min_black:
                self._add_fade(ramp_down[0], ramp_up[1], "through-black")
                continue
            if ramp_down:
                self._add_fade(ramp_down[0], dark_from, "out")
            if ramp_up:
                self._add_fade(light, ramp_up[1], "in")

    def _add_fade(self, start: int, end: int, via: str) -> None:
        """A fade from frame ``start`` to ``end``; its score is the luma range it covered (0-1)."""
        values = [self.luma[j] for j in range(start, end + 1) if j in self.luma]
        score = (max(values) - min(values)) / 255 if values else 0.0
        self.fades.append(Event("fade", start, end, score, None,
                                {"frame": (start + end) // 2, "start_frame": start, "end_frame": end, "fade": via}))

    # -- decisions ------------------------------------------------------------------------------
    def _decide(self, final: bool) -> None:
        last = self.n - 1
        self._decide_fades(final)
        for i in sorted(self._pending_cuts):
            if final or i + FLASH_FRAMES <= last:
                self._pending_cuts.remove(i)
                self._decide_cut(i)
        # A window ending at t needs the next window's span.
        for k in self.windows:
            for t in self._pending(f"_next_fade_{k}", last - k, last, final):
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
        """Keep PySceneDetect's cut at frame ``i`` unless it is either edge of a flash."""
        np = self._np
        if i <= 0 or i not in self.frames or i - 1 not in self.frames:
            return
        before, after = max(0, i - 1 - FLASH_FRAMES), min(i + FLASH_FRAMES, self.n - 1)
        jump = float(np.abs(self.frames[i] - self.frames[i - 1]).mean()) / 255
        if after > i and before in self.frames and after in self.frames:
            if float(np.abs(self.frames[after] - self.frames[before]).mean()) / 255 < FLASH_RATIO * jump:
                return
        around = [self.d[j] for j in range(i - CUT_WINDOW, i + CUT_WINDOW + 1) if j != i and j in self.d and j > 0]
        base = float(np.mean(around)) if around else 0.0
        self.cuts.append(Event("cut", i, i, jump, 1 - min(1.0, base / jump) if jump else 0.0, {}))

    def _steady(self, t: int, k: int, score: float) -> bool:
        """No single step of the window ending at ``t`` carries half of its change (that would be a cut)."""
        return max(self.d.get(j, 0.0) for j in range(t - k + 1, t + 1)) <= 0.5 * score

    def _decide_fade(self, t: int, k: int) -> None:
        score = self.span.get((k, t), 0.0)
        if score < self.s.fade_threshold or not self._steady(t, k, score):
            return
        # The windows before and after, unless a cut is in them: the change must stand out.
        neighbours = []
        for u in (t - k, t + k):
            other = self.span.get((k, u))
            if other is not None and u >= k and self._steady(u, k, other):
                neighbours.append(other)
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
        """Turn a cluster of overlapping candidate windows into one gradual transition: the strongest.

        A fade found by its black replaces it in :meth:`finish`.
        """
        t, k, score, base = max(cluster, key=lambda c: (c[2], -c[1], -c[0]))
        start, end = self._refine(t - k, t)
        data: dict[str, Any] = {"frame": (start + end) // 2, "start_frame": start, "end_frame": end}
        self.gradual.append(Event("dissolve", start, end, score, 1 - base / score, data))

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

    def _forget(self, before: int) -> None:
        """Drop what no decision can need any more (everything older than the ring)."""
        if before < 0:
            return
        for store in (self.frames, self.d, self.luma):
            store.pop(before, None)
        for k in self.windows:
            self.span.pop((k, before), None)


def _escape(value: str) -> str:
    """Escape a filter option value for a filter graph (both levels: option, then graph)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("\\", "\\\\")


def ffmpeg_args(ffmpeg: str, source: str, fps: float, settings: Settings | None = None) -> list[str]:
    """Decode the first video stream at a constant ``fps`` to WIDTHxHEIGHT BGR frames on stdout.

    With blackdetect (``settings.black``), the same graph marks the black runs of at least
    ``min_black_s`` at full resolution and the ``metadata`` filter prints them on stderr
    (``frame:N``, then the keys), so the frame numbers are those of the frames on stdout.
    """
    steps = [f"fps={fps:.6g}"]
    if settings is not None and settings.black:
        steps += [f"blackdetect=d={settings.min_black_s:.6g}:pic_th={settings.black_ratio:.6g}"
                  f":pix_th={settings.black_pixel_threshold:.6g}",
                  f"metadata=mode=print:file={_escape('pipe:2')}"]
    steps += [f"scale={WIDTH}:{HEIGHT}:flags=area", "format=bgr24"]
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", source, "-map", "0:v:0",
            "-an", "-sn", "-dn", "-vf", ",".join(steps), "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"]


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
    settings = Settings.from_params(fps, job.params)
    detector = Detector(settings)
    expected = max(1.0, duration * fps)
    job.progress(1)

    def on_frame(chunk: bytes) -> None:
        if len(chunk) < FRAME_BYTES:     # a truncated last frame: nothing to compare
            return
        detector.push(np.frombuffer(chunk, dtype=np.uint8).reshape(HEIGHT, WIDTH, 3))
        if detector.n % 10 == 0:
            job.progress(1 + 97 * min(1.0, detector.n / expected))

    code, stderr = job.stream(ffmpeg_args(binary("ffmpeg"), str(job.input_path), fps, settings), FRAME_BYTES,
                              on_frame, on_stderr_line=detector.black_line)
    if code != 0:
        lines = [line for line in stderr.strip().splitlines()
                 if line.strip() and not _FRAME_LINE.match(line) and not line.startswith("lavfi.")]
        reason = lines[-1] if lines else f"exit code {code}"
        raise JobError(306, f"ffmpeg failed: {reason.replace(str(job.input_path), 'input')[:300]}")
    if detector.n == 0:
        raise JobError(305, "the video stream has no decodable frame")
    events = detector.finish()
    job.progress(99)
    duration = duration or detector.n / fps
    return annotation_result(service, job.doc_url, duration, to_annotations(events, fps),
                             summarize(events, detector.n, fps))
