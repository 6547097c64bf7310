"""transcode: ffmpeg presets or explicit container/codec/size/bitrate/trim parameters; one output file."""
from __future__ import annotations

from typing import Any

from workers.sdk import JobContext, JobError, ParameterError, Service

#: Named presets; explicit parameters given with a preset override its values.
PRESETS: dict[str, dict[str, Any]] = {
    "mp4-360p": {"container": "mp4", "video_codec": "h264", "audio_codec": "aac", "height": 360,
                 "crf": 23, "audio_bitrate": "96k"},
    "mp4-720p": {"container": "mp4", "video_codec": "h264", "audio_codec": "aac", "height": 720,
                 "crf": 23, "audio_bitrate": "128k"},
    "mp4-1080p": {"container": "mp4", "video_codec": "h264", "audio_codec": "aac", "height": 1080,
                  "crf": 22, "audio_bitrate": "160k"},
    "webm-vp9": {"container": "webm", "video_codec": "vp9", "audio_codec": "opus", "height": 720,
                 "crf": 33, "audio_bitrate": "96k"},
    "audio-aac": {"container": "m4a", "video_codec": "none", "audio_codec": "aac", "audio_bitrate": "128k"},
    "wav-16k-mono": {"container": "wav", "video_codec": "none", "audio_codec": "pcm_s16le",
                     "sample_rate": 16000, "channels": 1},
}

#: container -> (allowed video codecs, allowed audio codecs, default video, default audio)
CONTAINERS: dict[str, tuple[set[str], set[str], str, str]] = {
    "mp4": ({"h264", "h265", "copy", "none"}, {"aac", "mp3", "copy", "none"}, "h264", "aac"),
    "mov": ({"h264", "h265", "copy", "none"}, {"aac", "pcm_s16le", "copy", "none"}, "h264", "aac"),
    "mkv": ({"h264", "h265", "vp9", "copy", "none"}, {"aac", "opus", "mp3", "pcm_s16le", "copy", "none"},
            "h264", "aac"),
    "webm": ({"vp9", "none"}, {"opus", "none"}, "vp9", "opus"),
    "m4a": ({"none"}, {"aac", "copy"}, "none", "aac"),
    "wav": ({"none"}, {"pcm_s16le"}, "none", "pcm_s16le"),
    "ogg": ({"none"}, {"opus"}, "none", "opus"),
    "mp3": ({"none"}, {"mp3"}, "none", "mp3"),
}
VIDEO_ENCODERS = {"h264": "libx264", "h265": "libx265", "vp9": "libvpx-vp9", "copy": "copy"}
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame", "pcm_s16le": "pcm_s16le", "copy": "copy"}
BITRATE = r"^[1-9][0-9]{0,5}[kM]$"

service = Service(
    name="transcode",
    version="1.0.0",
    description="Transcode with ffmpeg: a named preset, or explicit container, codecs, height, CRF or "
                "bitrate, and a start/end trim. The output file is listed in the result's outputs.",
    parameters={
        "type": "object",
        "properties": {
            "preset": {"enum": sorted(PRESETS), "description": "Named preset; explicit parameters override it. "
                       "Default mp4-720p when no container is given."},
            "container": {"enum": sorted(CONTAINERS)},
            "video_codec": {"enum": sorted({*VIDEO_ENCODERS, "none"})},
            "audio_codec": {"enum": sorted({*AUDIO_ENCODERS, "none"})},
            "height": {"type": "integer", "minimum": 16, "maximum": 4320, "description": "Output height in "
                       "pixels; the width keeps the aspect ratio."},
            "crf": {"type": "integer", "minimum": 0, "maximum": 63, "description": "Constant quality "
                    "(lower is better; h264/h265 0-51, vp9 0-63)."},
            "video_bitrate": {"type": "string", "pattern": BITRATE, "description": "e.g. 2500k or 4M; "
                              "replaces crf."},
            "audio_bitrate": {"type": "string", "pattern": BITRATE, "description": "e.g. 128k."},
            "sample_rate": {"enum": [8000, 16000, 22050, 32000, 44100, 48000]},
            "channels": {"type": "integer", "minimum": 1, "maximum": 8},
            "start": {"type": "number", "minimum": 0, "description": "Trim: start time in seconds."},
            "end": {"type": "number", "exclusiveMinimum": 0, "description": "Trim: end time in seconds."},
            "speed": {"enum": ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"],
                      "default": "veryfast", "description": "Encoder speed/size trade-off."},
        },
        "additionalProperties": False,
    },
)


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    """Merge preset and explicit parameters into complete settings, container defaults filled in."""
    preset = params.get("preset") or ("mp4-720p" if "container" not in params else None)
    merged = {**PRESETS.get(preset or "", {}), **{k: v for k, v in params.items() if k != "preset"}}
    if preset:
        merged["preset"] = preset
    video_ok, audio_ok, video_default, audio_default = CONTAINERS[merged["container"]]
    merged.setdefault("video_codec", video_default)
    merged.setdefault("audio_codec", audio_default)
    if "video_bitrate" in params:
        merged.pop("crf", None)
    return merged


def check(params: dict[str, Any]) -> None:
    """Cross-field rules JSON Schema cannot say (run at the gateway and in the worker)."""
    s = resolve(params)
    video_ok, audio_ok, *_ = CONTAINERS[s["container"]]
    if s["video_codec"] not in video_ok:
        raise ParameterError("video_codec", f"{s['video_codec']!r} cannot go in {s['container']}; "
                             f"use one of {', '.join(sorted(video_ok))}")
    if s["audio_codec"] not in audio_ok:
        raise ParameterError("audio_codec", f"{s['audio_codec']!r} cannot go in {s['container']}; "
                             f"use one of {', '.join(sorted(audio_ok))}")
    if s["video_codec"] == "none" and s["audio_codec"] == "none":
        raise ParameterError("video_codec", "video_codec and audio_codec cannot both be none")
    if "crf" in params and "video_bitrate" in params:
        raise ParameterError("crf", "give crf or video_bitrate, not both")
    if s.get("start") is not None and s.get("end") is not None and s["end"] <= s["start"]:
        raise ParameterError("end", "must be greater than start")
    if s["video_codec"] == "copy" and ("height" in params or "crf" in params or "video_bitrate" in params):
        raise ParameterError("video_codec", "copy cannot be combined with height, crf or video_bitrate")


service.check = check


def ffmpeg_args(source: str, dest: str, s: dict[str, Any]) -> list[str]:
    """The ffmpeg argument list for resolved settings ``s`` (built with ffmpeg-python, no shell)."""
    import ffmpeg

    input_kwargs = {k: s[k] for k in ("start", "end") if s.get(k) is not None}
    stream = ffmpeg.input(source, **{"ss" if k == "start" else "to": v for k, v in input_kwargs.items()})
    out: dict[str, Any] = {}
    video, audio = s["video_codec"], s["audio_codec"]
    if video == "none":
        out["vn"] = None
    else:
        out["vcodec"] = VIDEO_ENCODERS[video]
        if video != "copy":
            out["pix_fmt"] = "yuv420p"
            if s.get("height"):
                out["vf"] = f"scale=-2:{s['height']}"
            if s.get("video_bitrate"):
                out["video_bitrate"] = s["video_bitrate"]
            elif s.get("crf") is not None:
                out["crf"] = s["crf"]
                if video == "vp9":
                    out["b:v"] = 0
            if video == "vp9":
                fast = s["speed"] in ("ultrafast", "superfast", "veryfast")
                out.update({"deadline": "realtime" if fast else "good", "cpu-used": 8 if fast else 4,
                            "row-mt": 1})
            else:
                out["preset"] = s["speed"]
    if audio == "none":
        out["an"] = None
    else:
        out["acodec"] = AUDIO_ENCODERS[audio]
        if audio != "copy":
            if s.get("audio_bitrate") and audio != "pcm_s16le":
                out["audio_bitrate"] = s["audio_bitrate"]
            if s.get("sample_rate"):
                out["ar"] = s["sample_rate"]
            if s.get("channels"):
                out["ac"] = s["channels"]
    if s["container"] in ("mp4", "mov", "m4a"):
        out["movflags"] = "+faststart"
    stream = ffmpeg.output(stream, dest, **out).global_args("-nostdin", "-hide_banner", "-loglevel", "error",
                                                            "-progress", "pipe:1", "-nostats")
    return stream.overwrite_output().compile(cmd=_ffmpeg())


def _ffmpeg() -> str:
    from workers.sdk.media import binary
    return binary("ffmpeg")


@service.handler
def run(job: JobContext) -> dict:
    from workers.sdk.media import FFmpegProgress, duration_s, probe, summarize

    s = resolve(job.params)
    source_info = probe(job, job.input_path)
    source_duration = duration_s(source_info)
    start = float(s.get("start") or 0)
    end = min(float(s["end"]), source_duration) if s.get("end") and source_duration else source_duration
    if source_duration and start >= source_duration:
        raise JobError(306, f"start {start:g} s is past the end of the document ({source_duration:.3f} s)")
    job.progress(1)

    name = f"transcoded.{s['container']}"
    dest = job.output_path(name)
    progress = FFmpegProgress(max(0.0, end - start), lambda pct: job.progress(1 + pct * 0.97))
    code, stderr = job.run(ffmpeg_args(str(job.input_path), str(dest), s), on_stdout_line=progress)
    if code != 0 or not dest.is_file():
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {code}"
        raise JobError(306, f"ffmpeg failed: {reason.replace(str(job.input_path), 'input')[:300]}")

    job.storing()
    output_info = summarize(probe(job, dest))
    job.add_output(name, dest)
    return {"service": service.name, "version": service.version, "doc_url": job.doc_url,
            "settings": s, "duration": output_info["duration"],
            "input": {"duration": round(source_duration, 3)}, "output": output_info}
