"""loudness: EBU R128 integrated loudness, loudness range and true peak, and the silences, in one ffmpeg pass.

ffmpeg's ``ebur128`` filter measures (ITU-R BS.1770-4 / EBU R128) and ``silencedetect`` finds the
silences; both log their findings on stderr, which is parsed line by line as it comes, so
nothing is held in memory whatever the length. Progress is ffmpeg's own position (``-progress``).
"""
from __future__ import annotations

import re
from typing import Any

from service_gateway.annotations import RESULT_SCHEMA, annotation, annotation_result
from workers.sdk import JobContext, JobError, Service

service = Service(
    name="loudness",
    version="1.0.0",
    description="EBU R128 loudness of the audio (integrated LUFS, loudness range LU, true peak dBTP) with "
                "ffmpeg's ebur128 filter, and its silences (silencedetect) with threshold and minimum length.",
    parameters={
        "type": "object",
        "properties": {
            "silence_threshold_db": {"type": "number", "minimum": -90, "maximum": 0, "default": -50,
                                     "description": "Level (dBFS) under which audio counts as silence."},
            "silence_min_duration_s": {"type": "number", "minimum": 0.05, "maximum": 3600, "default": 0.5,
                                       "description": "Shortest silence reported, in seconds."},
            "true_peak": {"type": "boolean", "default": True,
                          "description": "Measure the true peak (4x oversampled, dBTP); false = skip it (faster)."},
        },
        "additionalProperties": False,
    },
    result_schema=RESULT_SCHEMA,
)

_SILENCE_START = re.compile(r"silence_start: (-?[\d.]+)")
_SILENCE_END = re.compile(r"silence_end: (-?[\d.]+)")
_VALUE = re.compile(r"^\s*(I|LRA|Threshold|LRA low|LRA high|Peak):\s+(-?[\d.]+|-inf)\s+(LUFS|LU|dBFS)")
_SECTIONS = {"Integrated loudness:": "integrated", "Loudness range:": "range", "True peak:": "peak"}


class Ebur128Log:
    """Collect silences and the ebur128 summary from ffmpeg's stderr lines."""

    def __init__(self) -> None:
        self.silences: list[list[float | None]] = []
        self.summary: dict[str, float | None] = {}
        self._section: str | None = None
        self._in_summary = False

    def __call__(self, line: str) -> None:
        if m := _SILENCE_START.search(line):
            self.silences.append([max(0.0, float(m.group(1))), None])
            return
        if (m := _SILENCE_END.search(line)) and self.silences and self.silences[-1][1] is None:
            self.silences[-1][1] = float(m.group(1))
            return
        if "Summary:" in line and "ebur128" in line:
            self._in_summary = True
            return
        if not self._in_summary:
            return
        stripped = line.strip()
        if stripped in _SECTIONS:
            self._section = _SECTIONS[stripped]
            return
        if (m := _VALUE.match(line)) and self._section:
            key, raw = m.group(1), m.group(2)
            value = None if raw == "-inf" else float(raw)
            name = {("integrated", "I"): "integrated_lufs", ("integrated", "Threshold"): "integrated_threshold_lufs",
                    ("range", "LRA"): "loudness_range_lu", ("range", "Threshold"): "range_threshold_lufs",
                    ("range", "LRA low"): "range_low_lufs", ("range", "LRA high"): "range_high_lufs",
                    ("peak", "Peak"): "true_peak_dbtp"}.get((self._section, key))
            if name:
                self.summary[name] = value


def filter_graph(params: dict[str, Any]) -> str:
    """The audio filter chain: silencedetect, then ebur128 (per-frame lines only at verbose level)."""
    peak = "true" if params["true_peak"] else "none"
    return (f"silencedetect=noise={params['silence_threshold_db']:g}dB:d={params['silence_min_duration_s']:g},"
            f"ebur128=peak={peak}:framelog=verbose")


@service.handler
def run(job: JobContext) -> dict:
    from workers.sdk.media import FFmpegProgress, binary, duration_s, probe, stream_of

    info = probe(job, job.input_path)
    stream_of(info, "audio", "to measure")
    duration = duration_s(info)
    log = Ebur128Log()
    args = [binary("ffmpeg"), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info", "-progress", "pipe:1",
            "-i", str(job.input_path), "-map", "0:a:0", "-vn", "-af", filter_graph(job.params), "-f", "null", "-"]
    code, stderr = job.run(args, on_stdout_line=FFmpegProgress(duration, job.progress), on_stderr_line=log)
    if code != 0 or "integrated_lufs" not in log.summary:
        lines = [line for line in stderr.strip().splitlines() if line.strip() and "Parsed_" not in line]
        reason = lines[-1].replace(str(job.input_path), "input")[:200] if lines else f"exit code {code}"
        raise JobError(306, f"ffmpeg could not measure the loudness: {reason}")

    annotations = []
    for start, end in log.silences:
        end = duration if end is None else end           # a silence running to the end has no silence_end
        annotations.append(annotation(start, end, "silence", duration=round(end - start, 3)))
    silent = sum(a["end"] - a["start"] for a in annotations)
    summary = dict(log.summary)
    summary.setdefault("true_peak_dbtp", None)      # always there: null when true_peak=false
    summary.update(silences=len(annotations), silence_seconds=round(silent, 3),
                   silence_threshold_db=job.params["silence_threshold_db"],
                   silence_min_duration_s=job.params["silence_min_duration_s"])
    return annotation_result(service, job.doc_url, duration, annotations, summary)
