"""Loudness truth: a 1 kHz tone at a known level, speech, and two inserted silences at known times."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.truth import Case, Check, ffmpeg, speak

SERVICE = "loudness"
RATE = 48000


def make(directory: Path) -> Case:
    speech, speech_s = speak("The loudness of this sentence is measured by the gateway.", directory, "speech", RATE)
    tone = directory / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate={RATE}:duration=4", "-af", "volume=-6dB",
           "-ac", "1", str(tone))
    silence_a, silence_b = 2.0, 1.5
    path = directory / "loudness.wav"
    # tone 4 s | silence 2 s | speech | silence 1.5 s | tone 4 s, exactly, by sample-accurate concat
    ffmpeg("-i", str(tone), "-i", str(speech), "-f", "lavfi", "-i", f"anullsrc=r={RATE}:cl=mono",
           "-filter_complex",
           f"[2]atrim=duration={silence_a}[s1];[2]atrim=duration={silence_b}[s2];"
           "[0]asplit[t1][t2];[t1][s1][1][s2][t2]concat=n=5:v=0:a=1[a]",
           "-map", "[a]", "-ac", "1", "-ar", str(RATE), str(path))
    starts = [4.0, 4.0 + silence_a + speech_s]
    truth = {"silences": [(starts[0], starts[0] + silence_a), (starts[1], starts[1] + silence_b)]}
    return Case(path=path, truth=truth, params={"silence_threshold_db": -50, "silence_min_duration_s": 0.5})


def ffmpeg_reading(path: Path) -> dict[str, float]:
    """ffmpeg's own ebur128 summary of the file: the reference the service must agree with."""
    err = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-i", str(path), "-af",
                          "ebur128=peak=true:framelog=verbose", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    summary = err[err.rindex("Summary:"):]
    get = {k: float(re.search(rf"{k}:\s+(-?[\d.]+)", summary).group(1)) for k in ("I", "LRA", "Peak")}
    return {"integrated_lufs": get["I"], "loudness_range_lu": get["LRA"], "true_peak_dbtp": get["Peak"]}


def score(result: dict[str, Any], case: Case) -> list[Check]:
    reference = ffmpeg_reading(case.path)
    summary = result["summary"]
    checks = []
    for key, label in (("integrated_lufs", "integrated loudness vs ffmpeg ebur128 (LU)"),
                       ("loudness_range_lu", "loudness range vs ffmpeg ebur128 (LU)"),
                       ("true_peak_dbtp", "true peak vs ffmpeg ebur128 (dB)")):
        value = summary.get(key)
        diff = abs(value - reference[key]) if isinstance(value, (int, float)) else float("inf")
        checks.append(Check(label, f"{diff:.2f} ({value} vs {reference[key]})", "<= 0.1", diff <= 0.1))
    found = [(a["start"], a["end"]) for a in result["annotations"] if a["label"] == "silence"]
    errors = []
    for start, end in case.truth["silences"]:
        match = min(found, key=lambda f: abs(f[0] - start), default=None)
        errors.append(max(abs(match[0] - start), abs(match[1] - end)) if match else float("inf"))
    worst = max(errors)
    checks.append(Check("silence start/end error, worst (s)", round(worst, 3), "<= 0.1", worst <= 0.1))
    checks.append(Check("silences found / inserted", f"{len(found)}/{len(case.truth['silences'])}", "equal",
                        len(found) == len(case.truth["silences"])))
    return checks
