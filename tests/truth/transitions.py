"""Ground truth for `transitions`: shots from different lavfi sources with known cuts, a dissolve, a fade
through black and a black section.

The clip (30 s, 320x240 @ 25 fps) on purpose puts moving sources next to the boundaries: testsrc
(scrolling gradient and counter), testsrc2 (moving shapes), a zooming mandelbrot. None of that
motion may fire a cut or a gradual transition.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.truth import Case, Check, ffmpeg, iou

SERVICE = "transitions"
FPS = 25
SIZE = "320x240"
#: (lavfi source, seconds) in order; the 1 s dissolve is an xfade between the 4th and 5th, the 1 s fade
#: through black a linear fade out over the last 0.5 s of the 8th and in over the first 0.5 s of the 9th.
SHOTS = [
    (f"testsrc=size={SIZE}:rate={FPS}:duration=4", 4),
    (f"smptebars=size={SIZE}:rate={FPS}:duration=3", 3),
    (f"color=c=red:size={SIZE}:rate={FPS}:duration=2", 2),
    (f"testsrc2=size={SIZE}:rate={FPS}:duration=5", 5),
    (f"mandelbrot=size={SIZE}:rate={FPS},trim=duration=5", 5),
    (f"color=c=black:size={SIZE}:rate={FPS}:duration=2", 2),
    (f"testsrc2=size={SIZE}:rate={FPS}:duration=3,hue=h=90", 3),
    (f"color=c=0x2080ff:size={SIZE}:rate={FPS}:duration=4,fade=t=out:st=3.5:d=0.5", 4),
    (f"testsrc=size={SIZE}:rate={FPS}:duration=3,hue=h=180,fade=t=in:st=0:d=0.5", 3),
]
TRUTH: dict[str, Any] = {
    "fps": FPS,
    "duration": 30.0,
    "cuts": [4.0, 7.0, 9.0, 18.0, 20.0, 23.0],
    "gradual": [(13.0, 14.0, "dissolve"), (26.5, 27.5, "fade")],
    "black": [(18.0, 20.0)],
}
CUT_TOLERANCE_FRAMES = 1
BLACK_TOLERANCE_FRAMES = 2
GRADUAL_IOU = 0.5


def make(directory: Path) -> Case:
    """Generate the clip: cuts at 4, 7, 9, 18, 20, 23 s, a dissolve 13-14 s, black 18-20 s, a fade 26.5-27.5 s."""
    path = Path(directory) / "transitions.mp4"
    args: list[str] = []
    for source, _ in SHOTS:
        args += ["-f", "lavfi", "-i", source]
    norm = "".join(f"[{i}]format=yuv420p,setsar=1,settb=1/{FPS}[s{i}];" for i in range(len(SHOTS)))
    graph = (norm + "[s3][s4]xfade=transition=fade:duration=1:offset=4[x];"
             "[s0][s1][s2][x][s5][s6][s7][s8]concat=n=8:v=1:a=0[v]")
    ffmpeg(*args, "-filter_complex", graph, "-map", "[v]", "-c:v", "libx264", "-preset", "ultrafast",
           "-pix_fmt", "yuv420p", "-g", "50", str(path))
    return Case(path=path, truth=TRUTH, params={"threshold": 15, "min_black_s": 0.5})


def score(result: dict[str, Any], case: Case) -> list[Check]:
    """Every cut within a frame, each gradual transition of its type inside its span, black within 2 frames,
    nothing else."""
    truth, fps = case.truth, case.truth["fps"]
    items = result["annotations"]
    cuts = [a for a in items if a["label"] == "cut"]
    gradual = [a for a in items if a["label"] in ("fade", "dissolve")]
    black = [a for a in items if a["label"] == "black"]

    errors, matched = [], set()
    for t in truth["cuts"]:
        near = [a for a in cuts if abs(a["data"]["frame"] - round(t * fps)) <= CUT_TOLERANCE_FRAMES]
        if near:
            errors.append(min(abs(a["data"]["frame"] - round(t * fps)) for a in near))
            matched.update(id(a) for a in near)
    false_cuts = [a["start"] for a in cuts if id(a) not in matched]
    found = len(errors)

    checks = [
        Check("cuts found (within 1 frame)", f"{found}/{len(truth['cuts'])}", "all", found == len(truth["cuts"])),
        Check("cut time error, worst (frames)", max(errors, default=None), f"<= {CUT_TOLERANCE_FRAMES}",
              bool(errors) and max(errors) <= CUT_TOLERANCE_FRAMES),
        Check("false cuts (moving testsrc/testsrc2/mandelbrot)", len(false_cuts), "0", not false_cuts),
    ]
    for start, end, kind in truth["gradual"]:
        # The transition reported for this span: its middle frame inside the span, of the right type.
        inside = [g for g in gradual if start <= g["data"]["frame"] / fps <= end]
        best = max((iou((g["start"], g["end"]), (start, end)) for g in inside), default=0.0)
        labels = sorted({g["label"] for g in inside})
        checks += [
            Check(f"{kind} {start:g}-{end:g} s: middle inside its span, as {kind}", "/".join(labels) or "none",
                  kind, labels == [kind]),
            Check(f"{kind} {start:g}-{end:g} s: span IoU", round(best, 2), f">= {GRADUAL_IOU}", best >= GRADUAL_IOU),
        ]
    false_gradual = [g["start"] for g in gradual
                     if not any(iou((g["start"], g["end"]), span[:2]) > 0 for span in truth["gradual"])]

    black_errors = []
    for start, end in truth["black"]:
        hits = [b for b in black if iou((b["start"], b["end"]), (start, end)) > 0.5]
        if hits:
            black_errors.append(max(abs(hits[0]["start"] - start), abs(hits[0]["end"] - end)) * fps)
    worst_black = round(max(black_errors), 2) if len(black_errors) == len(truth["black"]) else None

    return checks + [
        Check("false gradual transitions", len(false_gradual), "0", not false_gradual),
        Check("black segment start/end error, worst (frames)", worst_black, f"<= {BLACK_TOLERANCE_FRAMES}",
              worst_black is not None and worst_black <= BLACK_TOLERANCE_FRAMES),
        Check("false black segments", len(black) - len(black_errors), "0", len(black) == len(black_errors)),
    ]
