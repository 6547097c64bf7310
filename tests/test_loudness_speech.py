"""loudness and speech: ground truth through both submit routes, progress, cancellation, errors, parsers."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tests.stack import Stack, wait_for
from tests.test_e2e_jobs import ffmpeg_children
from tests.truth import Case, failed, ffmpeg, load
from workers.services.loudness import Ebur128Log, filter_graph
from workers.services.loudness import service as loudness_service
from workers.services.speech import Segment, Segmenter, padded, segments
from workers.services.speech import service as speech_service


@pytest.fixture(scope="session")
def ls_media(media) -> dict[str, Case | Path]:
    """The truth clips, a video without audio, and twelve hours of silence to cancel."""
    root = media / "loudness-speech"
    root.mkdir(exist_ok=True)
    cases: dict[str, Case | Path] = {}
    for name in ("loudness", "speech"):
        (root / name).mkdir(exist_ok=True)
        cases[name] = load(name).make(root / name)
    cases["video_only"] = root / "video-only.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
           "-an", str(cases["video_only"]))
    # 12 hours of 8 kHz silence in FLAC: 8 MB, made in ~4 s. The VAD reads an hour of audio in under a
    # second, so anything shorter can finish before the cancel lands; this takes either service 10 s or more.
    cases["long"] = root / "long-8k.flac"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=channel_layout=mono:sample_rate=8000", "-t", "43200",
           "-c:a", "flac", str(cases["long"]))
    return cases


# -- end to end: a real gateway and worker, both backends ----------------------------------------------
@pytest.mark.e2e
def test_loudness_through_json_process_agrees_with_ffmpeg_and_finds_the_silences(stack: Stack, ls_media):
    case = ls_media["loudness"]
    job_id = stack.submit("loudness", f"file://{case.path}", **case.params)
    final = stack.wait_status("loudness", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    result = final["result"]
    checks = load("loudness").score(result, case)
    assert not failed(checks), failed(checks)
    assert (result["service"], result["doc_url"]) == ("loudness", f"file://{case.path}")
    assert all(a["label"] == "silence" and a["data"]["duration"] == pytest.approx(a["end"] - a["start"], abs=0.002)
               for a in result["annotations"])
    assert result["summary"]["silences"] == 2 and result["summary"]["silence_seconds"] == pytest.approx(3.5, abs=0.2)


@pytest.mark.e2e
def test_speech_through_the_form_seed_route_matches_the_sentences(stack: Stack, ls_media):
    case = ls_media["speech"]
    # As curl -d would send them: every value a string, converted by the schema's types (frame_ms too)
    form = {"doc_url": f"file://{case.path}", "aggressiveness": "2", "frame_ms": "20", "min_segment_s": "0.25"}
    response = stack.request("POST", "/speech/annotate", data=form)
    assert response.status_code == 202, response.text
    final = stack.wait_status("speech", response.json()["uuid"], {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    result = final["result"]
    checks = load("speech").score(result, case)
    assert not failed(checks), failed(checks)
    assert result["summary"]["frame_ms"] == 20 and result["summary"]["segments"] == 3
    assert all(0 < a["confidence"] <= 1 and a["data"]["frames"] > 0 for a in result["annotations"])


@pytest.mark.e2e
@pytest.mark.parametrize("service", ["speech", "loudness"])
def test_a_long_job_reports_rising_progress_and_cancels_within_2_s(stack: Stack, ls_media, service):
    job_id = stack.submit(service, f"file://{ls_media['long']}")
    seen: list[dict] = []

    def risen() -> bool:
        seen.append(stack.status(service, job_id))
        return len({b["progress"] for b in seen if b["status"] == "PROGRESS"}) >= 2
    wait_for(risen, 60, f"{service} progress to rise twice", interval_s=0.1)
    progress = [b["progress"] for b in seen]
    assert progress == sorted(progress) and 0 < progress[-1] < 100, progress
    assert stack.request("POST", f"/{service}/cancel", params={"uuid": job_id}).status_code == 202
    final = stack.wait_status(service, job_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert final["status"] == "REVOKED" and final["result"]["code"] == 109, final
    wait_for(lambda: not ffmpeg_children(job_id), 2, "the job's ffmpeg to exit")


@pytest.mark.e2e
def test_a_document_without_audio_fails_with_305_and_bad_parameters_are_400(stack: Stack, ls_media):
    url = f"file://{ls_media['video_only']}"
    jobs = {service: stack.submit(service, url) for service in ("loudness", "speech")}
    for service, job_id in jobs.items():
        final = stack.wait_status(service, job_id, {"SUCCESS", "FAILURE"})
        assert final["status"] == "FAILURE" and final["result"]["code"] == 305, final
        assert "no audio stream" in final["result"]["message"]
    bad = stack.request("POST", "/loudness/process", json={"doc_url": url, "params": {"silence_threshold_db": 6}})
    assert bad.status_code == 400 and bad.json()["code"] == 204 and "silence_threshold_db" in bad.json()["description"]
    bad = stack.request("POST", "/speech/annotate", data={"doc_url": url, "frame_ms": "25"})
    assert bad.status_code == 400 and bad.json()["code"] == 204 and "frame_ms" in bad.json()["description"]


def test_an_absolute_tone_level_reads_as_bs1770_says(tmp_path, monkeypatch):
    # Not only agreement with ffmpeg: in BS.1770 a mono full-scale 1 kHz sine is -3.01 LUFS, so one peaking at
    # -20 dBFS reads -23.0 LUFS and -20.0 dBTP. Mono on purpose: "-ac 2" would upmix it 3 dB down per channel.
    from workers.sdk.local import run_order
    monkeypatch.setenv("SG_DATA_DIR", str(tmp_path / "data"))
    tone = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=10", "-af", "volume=-1.94dB",
           "-ac", "1", str(tone))                  # lavfi's sine peaks at 1/8 (-18.06 dBFS); -1.94 dB more: -20.0
    sink = run_order({"service": "loudness", "file": str(tone), "params": {"silence_threshold_db": -60}})
    assert sink.result is not None, sink.error
    summary = sink.result["summary"]
    assert summary["integrated_lufs"] == pytest.approx(-23.0, abs=0.15), summary
    assert summary["true_peak_dbtp"] == pytest.approx(-20.0, abs=0.2) and summary["silences"] == 0, summary


# -- the published contract (no worker) -------------------------------------------------------------------
def test_get_services_publishes_both_parameter_schemas_with_defaults(client, auth):
    listed = {s["name"]: s for s in client.get("/services", headers=auth.headers()).get_json()["services"]}
    for name in ("loudness", "speech"):
        schema = listed[name]["parameters"]
        assert schema["additionalProperties"] is False
        assert all("default" in p and p.get("description") for p in schema["properties"].values()), name
        assert listed[name]["result_schema"]["required"][:2] == ["service", "version"]


def test_form_strings_become_the_declared_types_and_defaults_are_filled():
    params = speech_service.validate(speech_service.coerce({"frame_ms": "10", "merge_gap_s": "0.5"}))
    assert params == {"aggressiveness": 2, "frame_ms": 10, "min_segment_s": 0.25, "merge_gap_s": 0.5,
                      "padding_s": 0.0}
    params = loudness_service.validate(loudness_service.coerce({"true_peak": "false"}))
    assert params == {"silence_threshold_db": -50, "silence_min_duration_s": 0.5, "true_peak": False}


# -- parsers, without processes -----------------------------------------------------------------------
#: ffmpeg 5.1's stderr for ``-af silencedetect=...,ebur128=peak=true:framelog=verbose`` (trimmed header).
FFMPEG_STDERR = """\
Input #0, wav, from '/tmp/sg-1234/input.wav':
  Duration: 00:00:03.00, bitrate: 256 kb/s
  Stream #0:0: Audio: pcm_s16le ([1][0][0][0] / 0x0001), 16000 Hz, mono, s16, 256 kb/s
[silencedetect @ 0x557cf5fcde00] silence_start: -0.00125
[silencedetect @ 0x557cf5fcde00] silence_end: 0.9 | silence_duration: 0.90125
[silencedetect @ 0x557cf5fcde00] silence_start: 2.048
size=N/A time=00:00:03.00 bitrate=N/A speed=97.2x
video:0kB audio:94kB subtitle:0kB other streams:0kB global headers:0kB muxing overhead: unknown
[Parsed_ebur128_1 @ 0x557cf5fce640] Summary:

  Integrated loudness:
    I:         -21.5 LUFS
    Threshold: -31.5 LUFS

  Loudness range:
    LRA:        20.0 LU
    Threshold: -42.7 LUFS
    LRA low:   -42.7 LUFS
    LRA high:  -22.7 LUFS

  True peak:
    Peak:      -18.0 dBFS
"""


def test_the_ebur128_summary_block_and_open_silences_are_parsed_from_ffmpeg_stderr():
    log = Ebur128Log()
    for line in FFMPEG_STDERR.splitlines():
        log(line)
    # The first silence starts a hair before 0 (filter delay): clamped; the last runs to the end
    assert log.silences == [[0.0, 0.9], [2.048, None]]
    assert log.summary == {"integrated_lufs": -21.5, "integrated_threshold_lufs": -31.5, "loudness_range_lu": 20.0,
                           "range_threshold_lufs": -42.7, "range_low_lufs": -42.7, "range_high_lufs": -22.7,
                           "true_peak_dbtp": -18.0}


def test_lines_before_the_summary_do_not_count_as_loudness_values():
    log = Ebur128Log()
    for line in ["    I:         -99.0 LUFS", "  Peak: -1.0 dBFS", "[Parsed_ebur128_0 @ 0x1] Summary:",
                 "  Integrated loudness:", "    I:         -70.0 LUFS", "  True peak:", "    Peak:       -inf dBFS"]:
        log(line)
    assert log.summary == {"integrated_lufs": -70.0, "true_peak_dbtp": None}


def test_the_filter_graph_carries_the_parameters():
    assert filter_graph({"silence_threshold_db": -45.5, "silence_min_duration_s": 1.5, "true_peak": True}) == \
        "silencedetect=noise=-45.5dB:d=1.5,ebur128=peak=true:framelog=verbose"
    assert filter_graph({"silence_threshold_db": -60, "silence_min_duration_s": 0.5, "true_peak": False}) == \
        "silencedetect=noise=-60dB:d=0.5,ebur128=peak=none:framelog=verbose"


def reference_segments(flags: list[bool], gap_frames: int, min_frames: int) -> list[tuple[int, int, int]]:
    """Brute force: all runs, then merge neighbours, then drop the short ones."""
    runs: list[list[int]] = []
    for index, voiced in enumerate(flags):
        if voiced and runs and index == runs[-1][1]:
            runs[-1][1] += 1
        elif voiced:
            runs.append([index, index + 1])
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] <= gap_frames:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(s, e, sum(flags[s:e])) for s, e in merged if e - s >= min_frames]


@pytest.mark.parametrize(("merge_gap_s", "min_segment_s"), [(0.0, 0.0), (0.3, 0.25), (0.09, 0.6)])
def test_the_streaming_segmenter_agrees_with_a_brute_force_reference(merge_gap_s, min_segment_s):
    rng = random.Random(7)
    flags, voiced = [], False
    while len(flags) < 5000:            # runs of 1-40 frames, alternating
        flags += [voiced] * rng.randint(1, 40)
        voiced = not voiced
    found = [(s.start, s.end, s.voiced) for s in segments(flags, 0.03, merge_gap_s, min_segment_s)]
    assert found == reference_segments(flags, round(merge_gap_s / 0.03), math.ceil(min_segment_s / 0.03 - 1e-6))
    assert found                        # the cases are not vacuous


def test_voiced_runs_merge_across_short_gaps_and_counts_stream():
    segmenter = Segmenter(0.03, merge_gap_s=0.2, min_segment_s=0.25)
    flags = [False] * 5 + [True] * 20 + [False] * 5 + [True] * 10 + [False] * 40 + [True] * 3 + [False] * 10
    for flag in flags:
        segmenter.add(flag)
    assert (segmenter.frames, segmenter.voiced) == (93, 33)
    assert segmenter.finish() == [Segment(5, 40, 30)]          # the 3-frame run (0.09 s) is too short


def test_padding_is_clipped_to_the_document_and_joins_the_segments_it_makes_overlap():
    found = [Segment(0, 10, 10), Segment(20, 30, 8), Segment(100, 110, 10)]
    out = padded(found, 0.1, padding_s=0.6, duration=11.5)
    assert [(round(a, 3), round(b, 3), s) for a, b, s in out] == [(0.0, 3.6, Segment(0, 30, 18)),
                                                                   (9.4, 11.5, Segment(100, 110, 10))]
    unpadded = padded(found, 0.1, padding_s=0.0, duration=0)        # duration unknown: no clipping
    assert [(round(a, 3), round(b, 3)) for a, b, _ in unpadded] == [(0.0, 1.0), (2.0, 3.0), (10.0, 11.0)]
