"""transitions and thumbnails: unit tests of the detector and planners, then ground truth on a real stack."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from service_gateway.services import ParameterError
from tests.truth import Case, failed, ffmpeg
from tests.truth import thumbnails as thumbnails_truth
from tests.truth import transitions as transitions_truth
from workers.sdk import media
from workers.sdk.local import run_order
from workers.services import thumbnails, transitions
from workers.services.transitions import HEIGHT, WIDTH, Detector, Settings

FPS = 25


# -- transitions: the detector on synthetic frames (no processes) -------------------------------------------------
def solid(value: int | tuple[int, int, int]) -> np.ndarray:
    return np.full((HEIGHT, WIDTH, 3), value, dtype=np.uint8)


def moving(i: int, seed: int = 0) -> np.ndarray:
    """A textured picture scrolling 1 px per frame: steady motion that must not fire anything."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(40, 220, size=(HEIGHT, WIDTH * 4, 3), dtype=np.uint8)
    texture = (texture.astype(np.float32) * 0.3 + np.linspace(0, 160, WIDTH * 4)[None, :, None]).astype(np.uint8)
    return np.ascontiguousarray(np.roll(texture, -i, axis=1)[:, :WIDTH])


def detect(frames, **params) -> list:
    """The detector alone, fed frames directly: cuts and gradual transitions (black needs ffmpeg)."""
    detector = Detector(Settings(fps=FPS, **params))
    for frame in frames:
        detector.push(frame)
    return detector.finish()


def run_clip(frames, tmp_path: Path, **params) -> dict:
    """The whole service on the frames encoded losslessly: ffmpeg decodes them, blackdetect included."""
    path = tmp_path / "clip.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                    "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "pipe:0", "-c:v", "ffv1", str(path)],
                   input=b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames), check=True)
    sink = run_order({"service": "transitions", "file": str(path), "params": params})
    assert sink.result is not None, sink.error
    return sink.result


def labels(result: dict) -> list[tuple]:
    return [(a["label"], a["data"].get("frame", a["data"].get("start_frame")), a["data"].get("fade"))
            for a in result["annotations"]]


def test_a_hard_cut_is_found_at_the_first_frame_of_the_new_shot():
    events = detect([moving(i) for i in range(50)] + [solid((200, 30, 30))] * 50)
    assert [(e.kind, e.start) for e in events] == [("cut", 50)]
    assert events[0].score > 0.1 and 0.5 < events[0].confidence <= 1


def test_steady_motion_fires_nothing():
    assert detect([moving(i) for i in range(150)]) == []


def test_a_flash_is_not_a_cut():
    frames = [moving(i) for i in range(60)]
    frames[30] = frames[31] = solid(255)
    assert [e for e in detect(frames) if e.kind == "cut"] == []


def test_cuts_closer_than_the_minimum_shot_are_dropped():
    frames = [solid(60)] * 20 + [solid(200)] * 4 + [solid((0, 0, 255))] * 20
    assert [e.start for e in detect(frames, min_shot_s=0)] == [20, 24]
    assert [e.start for e in detect(frames, min_shot_s=0.2)] == [20]


def test_a_dissolve_is_found_with_its_span():
    b = solid((20, 200, 60)).astype(np.float32)
    frames = [moving(i, seed=1) for i in range(40)]
    frames += [((1 - w) * moving(40 + j, seed=1) + w * b).astype(np.uint8)
               for j, w in enumerate(np.linspace(0, 1, 26)[1:])]          # frames 40-64
    frames += [b.astype(np.uint8)] * 40
    (event,) = detect(frames)
    assert event.kind == "dissolve"
    assert abs(event.start - 40) <= 2 and abs(event.end - 64) <= 2, event
    assert 40 <= event.data["frame"] <= 64


def test_a_fade_out_and_in_are_fades_and_the_black_between_is_reported(tmp_path):
    down = [solid(int(180 * w)) for w in np.linspace(1, 0, 13)]          # frames 60-72, black 73-92
    frames = [solid(180)] * 60 + down + [solid(0)] * 20 + down[::-1] + [solid(180)] * 60
    items = run_clip(frames, tmp_path, min_black_s=0.5)["annotations"]
    fades = [(a["data"]["fade"], a["data"]["start_frame"], a["data"]["end_frame"]) for a in items
             if a["label"] == "fade"]
    assert [f[0] for f in fades] == ["out", "in"], items
    assert 58 <= fades[0][1] and fades[0][2] <= 75 and 90 <= fades[1][1] and fades[1][2] <= 107, fades
    assert not [a for a in items if a["label"] in ("cut", "dissolve")], items
    (black,) = [a for a in items if a["label"] == "black"]
    # blackdetect's own decision: a pixel is black up to 10 % of the luma range, so the ramp's darkest
    # frames (180/12 = 15 of 255) are black too.
    assert 70 <= black["data"]["start_frame"] <= 73 and 92 <= black["data"]["end_frame"] <= 95, black


def test_a_short_fade_through_black_is_one_fade_and_not_a_cut(tmp_path):
    """0.25 s out of a moving picture, 0.25 s into a coloured one: the detector's cut where it leaves black
    (hue and saturation are undefined on black) is part of the fade."""
    down = [(moving(40 + j) * w).astype(np.uint8) for j, w in enumerate(np.linspace(1, 0, 7))]   # 40-46
    up = [solid((int(40 * w), int(90 * w), int(220 * w))) for w in np.linspace(0, 1, 7)]         # 46-52
    frames = [moving(i) for i in range(40)] + down + up[1:] + [solid((40, 90, 220))] * 40
    items = run_clip(frames, tmp_path)["annotations"]
    assert [(a["label"], a["data"].get("fade")) for a in items] == [("fade", "through-black")], items
    assert 38 <= items[0]["data"]["start_frame"] and items[0]["data"]["end_frame"] <= 54, items


def test_black_segments_shorter_than_the_minimum_are_ignored(tmp_path):
    frames = [solid(150)] * 20 + [solid(0)] * 10 + [solid(150)] * 20
    assert [x for x in labels(run_clip(frames, tmp_path, min_black_s=0.5, fades=False)) if x[0] == "black"] == []
    found = labels(run_clip(frames, tmp_path, min_black_s=0.4, fades=False))
    assert found == [("cut", 20, None), ("black", 20, None), ("cut", 30, None)], found


def test_fades_off_and_black_off(tmp_path):
    frames = [solid(150)] * 20 + [solid(0)] * 30 + [solid(150)] * 20
    assert labels(run_clip(frames, tmp_path, black=False, fades=False)) == [("cut", 20, None), ("cut", 50, None)]
    assert ("black", 20, None) in labels(run_clip(frames, tmp_path, fades=False))


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_the_threshold_is_the_pyscenedetect_detectors(detector):
    # Grey 60 to grey 80: a content score of 20/3 (luma only changes), under the default 15.
    frames = [solid(60)] * 20 + [solid(80)] * 20
    assert detect(frames, detector=detector) == []
    assert [(e.kind, e.start) for e in detect(frames, detector=detector, threshold=5)] == [("cut", 20)]


def test_detector_memory_is_bounded():
    detector = Detector(Settings(fps=FPS))
    for i in range(600):
        detector.push(moving(i % 40))
    assert len(detector.frames) <= detector.keep + 1 and len(detector.d) <= detector.keep + 1


def test_annotations_are_in_seconds_with_frames_and_scores(tmp_path):
    result = run_clip([solid(60)] * 25 + [solid(0)] * 25 + [solid(200)] * 25, tmp_path, min_black_s=0.5)
    items = result["annotations"]
    black = next(a for a in items if a["label"] == "black")
    assert (black["start"], black["end"], black["data"]["frames"]) == (1.0, 2.0, 25)
    cut = next(a for a in items if a["label"] == "cut" and a["start"] == 2.0)
    assert cut["data"]["frame"] == 50 and 0 < cut["data"]["score"] <= 1
    assert result["summary"]["black_segments"] == 1 and result["summary"]["frames"] == 75
    assert result["summary"]["cuts"] == 2 and result["duration"] == pytest.approx(3.0)


def test_transitions_schema_fills_defaults_and_rejects_unknown_parameters():
    spec = transitions.service
    params = spec.validate({"threshold": 20})
    assert params["threshold"] == 20 and params["min_black_s"] == 0.5 and params["fades"] is True
    assert params["detector"] == "adaptive" and params["cut_ratio"] == 3
    assert spec.coerce({"threshold": "27", "fades": "false"}) == {"threshold": 27, "fades": False}
    for bad in ({"threshold": 0}, {"threshold": 256}, {"detector": "hash"}, {"nope": 1}, {"max_fade_s": 10}):
        with pytest.raises(ParameterError):
            spec.validate(bad)
    assert Settings(fps=25, max_fade_s=2).windows == [6, 12, 25, 50]


def test_frame_rate_comes_from_the_video_stream():
    assert media.frame_rate({"streams": [{"codec_type": "video", "avg_frame_rate": "30000/1001"}]}) == \
        pytest.approx(29.97, abs=0.01)
    assert media.frame_rate({"streams": [{"codec_type": "video", "avg_frame_rate": "0/0"}]}) == 25.0
    with pytest.raises(Exception) as info:
        media.frame_rate({"streams": [{"codec_type": "audio"}]})
    assert info.value.code == 305


# -- thumbnails: planning and parameters (no processes) -------------------------------------------------------------
def test_thumbnails_modes():
    plan = thumbnails.plan_times
    assert plan({"count": 4}, 10.0, 25) == [1.25, 3.75, 6.25, 8.75]
    assert plan({}, 10.0, 25) == [0.5 + k for k in range(10)]                 # the default: 10 evenly spaced
    assert plan({"interval": 3}, 10.0, 25) == [0.0, 3.0, 6.0, 9.0]
    assert plan({"interval": 2.5}, 10.0, 25) == [0.0, 2.5, 5.0, 7.5]
    assert plan({"times": ["1.5", 9.99]}, 10.0, 25) == [1.5, 9.96]            # clamped to the last frame


@pytest.mark.parametrize(("params", "words"), [({"times": [12]}, "past the end"),
                                               ({"interval": 0.05}, "more than 100")])
def test_thumbnails_reject_what_the_schema_cannot_see(params, words):
    with pytest.raises(Exception) as info:
        thumbnails.plan_times(params, 10.0, 25)
    assert info.value.code == 307 and words in info.value.message


def test_thumbnails_schema_one_mode_one_size_and_a_maximum():
    spec = thumbnails.service
    assert spec.validate({"count": 3}) == {"count": 3, "format": "jpeg", "sprite": False, "sprite_columns": 5}
    for bad, field in (({"count": 2, "interval": 1}, "count"), ({"width": 100, "height": 100}, "height"),
                       ({"count": 101}, "count"), ({"times": list(range(101))}, "times"),
                       ({"times": ["abc"]}, "times.0"), ({"format": "gif"}, "format"), ({"size": 3}, "")):
        with pytest.raises(ParameterError) as info:
            spec.validate(bad)
        assert info.value.field == field, (bad, info.value)
    # Form posts give arrays as comma-separated strings; items get the schema's type.
    assert spec.validate(spec.coerce({"times": "1, 5.5", "height": "90"}))["times"] == [1.0, 5.5]


def test_thumbnails_scale_keeps_the_display_aspect_and_sprite_grid():
    assert thumbnails.scale_filter({}) == "scale=320:2*trunc(320/dar/2+0.5),setsar=1"
    assert thumbnails.scale_filter({"height": 90}) == "scale=2*trunc(90*dar/2+0.5):90,setsar=1"
    assert thumbnails.grid(5, 3) == (3, 2) and thumbnails.grid(2, 5) == (2, 1) and thumbnails.grid(10, 5) == (5, 2)


# -- end to end: real gateway, worker and broker, both backends ------------------------------------------------------
@pytest.fixture(scope="session")
def cases(media) -> dict[str, Case | Path]:
    """The truth clips and a long 720p clip, generated into a subdirectory of the allowed media root."""
    directory = media / "transitions_thumbnails"
    directory.mkdir(exist_ok=True)
    seed, long = directory / "seed720.mp4", directory / "long720.mp4"
    # 10 s of moving 720p at a low bitrate, repeated by stream copy: 4 minutes made in about a second.
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25:duration=10", "-c:v", "libx264", "-preset",
           "ultrafast", "-crf", "45", "-pix_fmt", "yuv420p", str(seed))
    ffmpeg("-stream_loop", "23", "-i", str(seed), "-c", "copy", str(long))
    return {"transitions": transitions_truth.make(directory), "thumbnails": thumbnails_truth.make(directory),
            "long": long}


@pytest.mark.e2e
def test_transitions_meets_the_truth_through_the_form_route(stack, cases):
    case = cases["transitions"]
    response = stack.request("POST", "/transitions/annotate",
                             data={"doc_url": case.path.as_uri(), **{k: str(v) for k, v in case.params.items()}})
    assert response.status_code == 202, response.text
    job_id = response.json()["uuid"]
    seen: list[dict] = []
    final = stack.wait_status("transitions", job_id, {"SUCCESS", "FAILURE"}, seen=seen)
    assert final["status"] == "SUCCESS", final
    progress = [body["progress"] for body in seen]
    assert progress == sorted(progress) and all(p < 100 for b, p in zip(seen, progress) if b["status"] != "SUCCESS")
    result = final["result"]
    assert result["service"] == "transitions" and result["duration"] == pytest.approx(30.0, abs=0.05)
    checks = transitions_truth.score(result, case)
    assert not failed(checks), failed(checks)


@pytest.mark.e2e
def test_thumbnails_meet_the_truth_and_download_through_the_gateway(stack, cases, tmp_path):
    case = cases["thumbnails"]
    job_id = stack.submit("thumbnails", case.path.as_uri(), **case.params)
    final = stack.wait_status("thumbnails", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    result = final["result"]

    def fetch(name: str) -> Path:
        download = stack.request("GET", f"/jobs/{job_id}/outputs/{name}")
        assert download.status_code == 200, download.text
        assert download.headers["Content-Type"].startswith("image/jpeg")
        path = tmp_path / name
        path.write_bytes(download.content)
        return path

    checks = thumbnails_truth.score(result, case, fetch)
    assert not failed(checks), failed(checks)
    names = [o["name"] for o in result["outputs"]]
    assert names == [f"thumbnail-00{i}.jpg" for i in range(1, 6)] + ["sprite.jpg"]
    assert all(o["url"] == f"{stack.url}/jobs/{job_id}/outputs/{o['name']}" for o in result["outputs"])


@pytest.mark.e2e
def test_thumbnails_at_times_from_a_form_post_as_png(stack, cases, tmp_path):
    case = cases["thumbnails"]
    response = stack.request("POST", "/thumbnails/annotate",
                             data={"doc_url": case.path.as_uri(), "times": "5,1.5", "height": "60", "format": "png"})
    assert response.status_code == 202, response.text
    job_id = response.json()["uuid"]
    final = stack.wait_status("thumbnails", job_id, {"SUCCESS", "FAILURE"})
    assert final["status"] == "SUCCESS", final
    items = final["result"]["annotations"]
    assert [(a["start"], a["data"]["output"], a["data"]["width"], a["data"]["height"]) for a in items] == \
        [(1.5, "thumbnail-002.png", 80, 60), (5.0, "thumbnail-001.png", 80, 60)]
    download = stack.request("GET", f"/jobs/{job_id}/outputs/thumbnail-001.png")
    assert download.status_code == 200 and download.headers["Content-Type"] == "image/png"
    (tmp_path / "red.png").write_bytes(download.content)
    assert thumbnails_truth.image_size(tmp_path / "red.png") == (80, 60)
    b, g, r = thumbnails_truth.mean_bgr(tmp_path / "red.png")
    assert r > 230 and g < 25 and b < 25


@pytest.mark.e2e
def test_thumbnails_parameters_are_checked_at_the_gateway(stack, cases):
    response = stack.request("POST", "/thumbnails/process",
                             json={"doc_url": cases["thumbnails"].path.as_uri(), "params": {"count": 3, "interval": 2}})
    assert (response.status_code, response.json()["code"]) == (400, 204), response.text
    assert "interval" in response.json()["description"]


@pytest.mark.e2e
def test_transitions_cancel_of_a_long_run_is_revoked_quickly(stack, cases):
    job_id = stack.submit("transitions", cases["long"].as_uri())
    stack.wait_status("transitions", job_id, {"PROGRESS"}, timeout_s=30)
    response = stack.request("POST", "/transitions/cancel", params={"uuid": job_id})
    assert response.status_code == 202, response.text
    final = stack.wait_status("transitions", job_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert final["status"] == "REVOKED" and final["result"]["code"] == 109, final
    assert final["progress"] < 100
