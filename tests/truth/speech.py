"""Speech truth: three espeak-ng sentences at known offsets over low noise, silence elsewhere."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.truth import Case, Check, ffmpeg, iou, speak

SERVICE = "speech"
RATE = 16000
SENTENCES = (("Welcome to the service gateway speech test.", 2.0),
             ("Media teams need annotations they can trust.", 9.0),
             ("This is the last sentence of the clip.", 17.0))
DURATION_S = 24.0


def make(directory: Path) -> Case:
    inputs, filters, truth = [], [], []
    for index, (text, offset) in enumerate(SENTENCES):
        path, seconds = speak(text, directory, f"sentence{index}", RATE)
        inputs += ["-i", str(path)]
        filters.append(f"[{index}]adelay={int(offset * 1000)}:all=1[d{index}]")
        truth.append((offset, offset + seconds))
    n = len(SENTENCES)
    noise = f"anoisesrc=color=pink:amplitude=0.003:sample_rate={RATE}:duration={DURATION_S}"
    path = directory / "speech.wav"
    ffmpeg(*inputs, "-f", "lavfi", "-i", noise, "-filter_complex",
           ";".join(filters) + ";" + "".join(f"[d{i}]" for i in range(n)) + f"[{n}]"
           + f"amix=inputs={n + 1}:duration=longest:normalize=0[a]",
           "-map", "[a]", "-t", str(DURATION_S), "-ac", "1", "-ar", str(RATE), str(path))
    return Case(path=path, truth={"segments": truth}, params={"aggressiveness": 2})


def score(result: dict[str, Any], case: Case) -> list[Check]:
    found = [(a["start"], a["end"]) for a in result["annotations"] if a["label"] == "speech"]
    truth = case.truth["segments"]
    ious = [max((iou(t, f) for f in found), default=0.0) for t in truth]
    false = [f for f in found if all(iou(t, f) == 0 for t in truth)]
    return [
        Check("IoU with each sentence, worst", round(min(ious), 3), ">= 0.8", min(ious) >= 0.8),
        Check("segments in the silent parts", len(false), "0", not false),
        Check("segments found / sentences", f"{len(found)}/{len(truth)}", "equal", len(found) == len(truth)),
    ]
