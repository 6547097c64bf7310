"""speech: voice-activity segments, from WebRTC's VAD on 16 kHz mono audio streamed out of ffmpeg.

ffmpeg decodes and resamples the audio to 16 kHz mono 16-bit PCM on its stdout; each 10/20/30 ms
frame is read through :meth:`JobContext.stream` (memory: one frame) and classified by
``webrtcvad``. Voiced frames make runs as they come (:class:`Segmenter`: memory grows with the
segments found, not with the length); runs closer than ``merge_gap_s`` are merged, shorter than
``min_segment_s`` dropped, and each kept segment widened by ``padding_s`` (clipped to the
document; segments that the padding makes overlap are joined). A segment's confidence is the
share of voiced frames inside it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result
from workers.sdk import JobContext, JobError, Service

SAMPLE_RATE = 16000
SAMPLE_BYTES = 2
#: Frames between two progress reports (a few per second of wall time at ~500x real time).
PROGRESS_EVERY = 200

service = Service(
    name="speech",
    version="1.0.0",
    description="Voice-activity segments (start, end, confidence) from the WebRTC VAD on 16 kHz mono audio, "
                "merged across short gaps.",
    parameters={
        "type": "object",
        "properties": {
            "aggressiveness": {"type": "integer", "minimum": 0, "maximum": 3, "default": 2,
                               "description": "VAD mode: 0 keeps the most speech (and noise), 3 filters the most."},
            # "type" as well as "enum": the form routes convert "20" to 20 only for a declared integer
            "frame_ms": {"type": "integer", "enum": [10, 20, 30], "default": 30,
                         "description": "Analysis frame length (ms): 10, 20 or 30."},
            "min_segment_s": {"type": "number", "minimum": 0, "maximum": 60, "default": 0.25,
                              "description": "Shortest speech segment reported, in seconds."},
            "merge_gap_s": {"type": "number", "minimum": 0, "maximum": 10, "default": 0.3,
                            "description": "Segments separated by at most this (s) are merged into one."},
            "padding_s": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.0,
                          "description": "Seconds added before and after each segment."},
        },
        "additionalProperties": False,
    },
    result_schema=RESULT_SCHEMA,
)


@dataclass
class Segment:
    start: int      # first frame
    end: int        # one past the last frame
    voiced: int     # voiced frames inside


class Segmenter:
    """Turn per-frame VAD decisions into segments as they arrive, never holding the frames."""

    def __init__(self, frame_s: float, merge_gap_s: float, min_segment_s: float) -> None:
        self.frame_s = frame_s
        self.min_segment_s = min_segment_s
        self.gap_frames = round(merge_gap_s / frame_s)
        self.frames = 0
        self.voiced = 0
        self.found: list[Segment] = []
        self._current: Segment | None = None

    def add(self, voiced: bool) -> None:
        """Take the decision for the next frame."""
        index = self.frames
        self.frames += 1
        if not voiced:
            return
        self.voiced += 1
        current = self._current
        if current is not None and index - current.end <= self.gap_frames:
            current.end, current.voiced = index + 1, current.voiced + 1
            return
        self._close()
        self._current = Segment(index, index + 1, 1)

    def finish(self) -> list[Segment]:
        """Close the open run and return the kept segments."""
        self._close()
        return self.found

    def _close(self) -> None:
        current, self._current = self._current, None
        # With a float tolerance: a run of exactly min_segment_s (e.g. 3 x 0.1 s) must be kept
        if current is not None and (current.end - current.start) * self.frame_s >= self.min_segment_s - 1e-9:
            self.found.append(current)


def segments(flags: Iterable[bool], frame_s: float, merge_gap_s: float, min_segment_s: float) -> list[Segment]:
    """Runs of voiced frames, merged across gaps of at most ``merge_gap_s``, dropped if too short."""
    segmenter = Segmenter(frame_s, merge_gap_s, min_segment_s)
    for voiced in flags:
        segmenter.add(voiced)
    return segmenter.finish()


def padded(found: list[Segment], frame_s: float, padding_s: float,
           duration: float) -> list[tuple[float, float, Segment]]:
    """Segments in seconds, widened by ``padding_s`` within [0, duration], overlapping ones joined."""
    out: list[tuple[float, float, Segment]] = []
    for seg in found:
        start = max(0.0, seg.start * frame_s - padding_s)
        end = seg.end * frame_s + padding_s
        if duration > 0:
            end = min(duration, end)
        if out and start <= out[-1][1]:
            first_start, _, first = out[-1]
            out[-1] = (first_start, end, Segment(first.start, seg.end, first.voiced + seg.voiced))
        else:
            out.append((start, end, seg))
    return out


@service.handler
def run(job: JobContext) -> dict:
    import webrtcvad

    from workers.sdk.media import binary, duration_s, probe, stream_of

    info = probe(job, job.input_path)
    stream_of(info, "audio", "to look for speech in")
    duration = duration_s(info)
    p = job.params
    frame_s = p["frame_ms"] / 1000
    frame_bytes = int(SAMPLE_RATE * frame_s) * SAMPLE_BYTES
    expected = max(1, int(duration / frame_s))
    vad = webrtcvad.Vad(p["aggressiveness"])
    segmenter = Segmenter(frame_s, p["merge_gap_s"], p["min_segment_s"])

    def on_frame(frame: bytes) -> None:
        # A short last frame cannot be classified (webrtcvad takes whole frames only): unvoiced
        segmenter.add(len(frame) == frame_bytes and vad.is_speech(frame, SAMPLE_RATE))
        if segmenter.frames % PROGRESS_EVERY == 0:
            job.progress(99 * segmenter.frames / expected)

    args = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error",
            "-i", str(job.input_path), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE),
            "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"]
    code, stderr = job.stream(args, frame_bytes, on_frame)
    if code != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1].replace(str(job.input_path), "input")[:200] if lines else f"exit code {code}"
        raise JobError(306, f"ffmpeg could not decode the audio: {reason}")

    annotations = []
    for start, end, seg in padded(segmenter.finish(), frame_s, p["padding_s"], duration):
        frames = seg.end - seg.start
        annotations.append(annotation(start, end, "speech", confidence=seg.voiced / frames, frames=frames,
                                      voiced_frames=seg.voiced))
    speech_s = sum(a["end"] - a["start"] for a in annotations)
    return annotation_result(service, job.doc_url, duration, annotations, {
        "segments": len(annotations), "speech_seconds": round(speech_s, 3),
        "speech_ratio": round(speech_s / duration, 4) if duration else None,
        "frames": segmenter.frames, "voiced_frames": segmenter.voiced, "frame_ms": p["frame_ms"]})
