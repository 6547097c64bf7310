"""faces: ground truth through the gateway on both backends, cancellation, and the tracking logic alone."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from service_gateway.annotations import RESULT_SCHEMA
from service_gateway.services import ParameterError
from tests.stack import wait_for
from tests.test_e2e_jobs import ffmpeg_children
from tests.truth import Case, failed, ffmpeg, load
from workers.sdk import JobError
from workers.services.faces import (Track, Tracker, box_iou, pick_video_stream, representative, score_of, service,
                                    spread, tracks_to_annotations, video_geometry)

truth = load("faces")


@pytest.fixture(scope="session")
def faces_media(media) -> dict[str, Path | Case]:
    """The truth clip, and 20 minutes of 1 fps video to cancel (made in about a second)."""
    directory = media / "faces"
    directory.mkdir(exist_ok=True)
    long = directory / "long.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=1:duration=1200", "-c:v", "libx264",
           "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(long))
    return {"case": truth.make(directory), "long": long}


# -- end to end: real gateway, worker and ffmpeg, both backends ---------------------------------------
@pytest.mark.e2e
def test_the_astronaut_is_one_track_over_her_span_and_renders_as_a_media_fragment(stack, faces_media):
    # Given the truth clip (face 4-8 s between face-free parts), submitted like curl does (form args)
    case = faces_media["case"]
    response = stack.request("POST", "/faces/annotate", data={"doc_url": f"file://{case.path}", "sample_fps": "2"})
    assert response.status_code == 202, response.text
    job_id = response.json()["uuid"]

    # When the job finishes
    seen: list[dict] = []
    final = stack.wait_status("faces", job_id, {"SUCCESS", "FAILURE"}, seen=seen)

    # Then every truth check holds, the result has the shared schema, and progress only rose
    assert final["status"] == "SUCCESS", final
    result = final["result"]
    checks = truth.score(result, case)
    assert not failed(checks), failed(checks)
    assert not list(Draft202012Validator(RESULT_SCHEMA).iter_errors(result))
    assert result["summary"]["frames_sampled"] == 22 and result["summary"]["picture_size"] == [640, 480]
    progress = [body["progress"] for body in seen]
    assert progress == sorted(progress) and progress[-1] == 100

    # And the W3C form targets the face's box with an xywh media fragment
    page = stack.request("GET", "/faces/status", params={"uuid": job_id, "format": "webannotation"}).json()["result"]
    (item,) = page["items"]
    x, y, w, h = result["annotations"][0]["data"]["bbox"]
    assert item["target"]["selector"]["value"] == f"t=4,7.5&xywh={x},{y},{w},{h}"
    assert item["body"][0]["value"] == "face"


@pytest.mark.e2e
def test_a_long_video_shows_progress_and_cancels_within_2_s(stack, faces_media):
    # Given 20 minutes of video sampled at 10 fps (12000 frames to look at), running
    job_id = stack.submit("faces", f"file://{faces_media['long']}", sample_fps=10)
    stack.wait_status("faces", job_id, {"PROGRESS"})
    wait_for(lambda: ffmpeg_children(job_id), 10, "the job's ffmpeg")

    # When it is cancelled through the seed route
    assert stack.request("POST", "/faces/cancel", params={"uuid": job_id}).status_code == 202

    # Then it is REVOKED (109) within 2 s and its ffmpeg is gone
    final = stack.wait_status("faces", job_id, {"REVOKED", "SUCCESS", "FAILURE"}, timeout_s=2)
    assert final["status"] == "REVOKED" and final["result"]["code"] == 109, final
    assert final["progress"] < 100
    wait_for(lambda: not ffmpeg_children(job_id), 2, "the job's ffmpeg to exit")


# -- in-process runs (no broker) -----------------------------------------------------------------------
def test_a_document_without_video_fails_with_305(tmp_path):
    from service_gateway.settings import load_settings
    from workers.sdk.local import run_order
    audio = tmp_path / "tone.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000:duration=1", str(audio))
    sink = run_order({"service": "faces", "file": str(audio)}, settings=load_settings({"data_dir": str(tmp_path)}))
    assert sink.result is None and sink.error is not None
    assert (sink.error.code, sink.error.message) == (305, "the document has no video stream to look for faces in")


# -- parameters, as the gateway sees them ---------------------------------------------------------------
def test_form_values_are_typed_and_defaults_filled():
    params = service.validate(service.coerce({"sample_fps": "0.5", "profile": "true", "min_face_size": "40"}))
    assert params["sample_fps"] == 0.5 and params["profile"] is True and params["min_face_size"] == 40
    assert (params["cascade"], params["max_gap_s"], params["max_detections"]) == ("frontalface_alt2", 1.0, 100)


@pytest.mark.parametrize("bad", [{"sample_fps": 0}, {"sample_fps": 11}, {"scale_factor": 1.0}, {"min_neighbors": 0},
                                 {"max_width": 8000}, {"cascade": "eyes"}, {"model": "dnn"}])
def test_out_of_range_parameters_are_rejected(bad):
    with pytest.raises(ParameterError):
        service.validate(bad)


# -- tracking, scores and geometry, without processes ---------------------------------------------------
def test_tracks_follow_overlapping_boxes_and_split_after_a_gap():
    tracker = Tracker(min_iou=0.3, max_gap_s=1.0, period_s=0.5)
    tracker.add(0.0, [([10, 10, 50, 50], 0.8)])
    tracker.add(0.5, [([12, 11, 50, 50], 0.7), ([300, 300, 40, 40], 0.6)])
    tracker.add(1.0, [([14, 12, 50, 50], 0.9)])
    tracker.add(2.5, [([15, 12, 50, 50], 0.9)])         # 1 s missed (samples 1.5, 2.0): still the same face
    tracker.add(4.5, [([16, 12, 50, 50], 0.9)])         # 1.5 s missed: a new track
    tracks = tracker.tracks()
    assert [(t.id, t.start, t.last_time, len(t.detections)) for t in tracks] == [
        (1, 0.0, 2.5, 4), (2, 0.5, 0.5, 1), (3, 4.5, 4.5, 1)]


def test_with_no_gap_allowed_consecutive_samples_still_continue_a_track():
    tracker = Tracker(min_iou=0.3, max_gap_s=0.0, period_s=0.5)
    for time_s in (0.0, 0.5, 1.0, 2.0):
        tracker.add(time_s, [([10, 10, 50, 50], 0.5)])
    assert [len(t.detections) for t in tracker.tracks()] == [3, 1]


def test_crossing_faces_keep_their_tracks_by_best_overlap():
    tracker = Tracker(min_iou=0.2, max_gap_s=1.0, period_s=0.5)
    tracker.add(0.0, [([0, 0, 100, 100], 0.9), ([60, 0, 100, 100], 0.9)])
    # Each new box overlaps both tracks; the best pairs win, whatever the detections' order
    tracker.add(0.5, [([70, 0, 100, 100], 0.9), ([5, 0, 100, 100], 0.9)])
    first, second = tracker.tracks()
    assert (first.last_box, second.last_box) == ([5, 0, 100, 100], [70, 0, 100, 100])


def test_a_box_that_does_not_overlap_enough_starts_a_new_track():
    tracker = Tracker(min_iou=0.5, max_gap_s=1.0, period_s=0.5)
    tracker.add(0.0, [([0, 0, 100, 100], 0.9)])
    tracker.add(0.5, [([50, 0, 100, 100], 0.9)])        # IoU 1/3
    assert len(tracker.tracks()) == 2


def test_box_iou():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 5, 5]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_annotations_keep_real_tracks_with_a_median_box_and_a_bounded_detection_list():
    long = Track(1, [(i * 0.5, [100 + (i % 3), 50, 40, 40], 0.5 + (i % 2) * 0.2) for i in range(9)])
    long.detections[4] = (2.0, [400, 50, 40, 40], 0.6)          # one odd box does not move the median
    single = Track(2, [(1.0, [0, 0, 30, 30], 0.9)])
    (item,) = tracks_to_annotations([long, single], min_detections=2, max_detections=3)
    assert (item["start"], item["end"], item["label"]) == (0.0, 4.0, "face")
    data = item["data"]
    assert data["track_id"] == 1 and data["count"] == 9 and data["bbox"] == representative(long) == [101, 50, 40, 40]
    assert [d["time"] for d in data["detections"]] == [0.0, 2.0, 4.0]
    assert item["confidence"] == pytest.approx(sum(s for _, _, s in long.detections) / 9, abs=1e-4)


def test_spread_keeps_the_ends_and_spaces_the_rest():
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 5) == [1, 2]
    assert spread(list(range(10)), 1) == [0] and spread(list(range(10)), 0) == []


def test_the_score_is_0_at_the_threshold_and_rises_towards_1():
    assert score_of(-3.0, -2.0, 10.0) == 0.0 == score_of(-2.0, -2.0, 10.0)
    assert score_of(-0.8, -2.0, 10.0) == pytest.approx(1 - math.exp(-1))
    assert 0.99 < score_of(10.0, -2.0, 10.0) < 1.0


@pytest.mark.parametrize(("stream", "expected"), [
    ({"width": 1280, "height": 720}, (1280, 720, 640, 360)),
    ({"width": 320, "height": 240}, (320, 240, 320, 240)),
    # A phone clip stored 1920x1080 and shown rotated: ffmpeg hands over 1080x1920 pictures
    ({"width": 1920, "height": 1080, "side_data_list": [{"rotation": -90}]}, (1080, 1920, 640, 1138)),
    # Anamorphic 720x576 shown 16:9: analysed with square pixels, boxes still in stored pixels
    ({"width": 720, "height": 576, "sample_aspect_ratio": "64:45"}, (720, 576, 640, 360)),
])
def test_video_geometry(stream, expected):
    assert video_geometry(stream, 640) == expected


def test_cover_art_is_not_a_video_to_search():
    cover = {"index": 1, "codec_type": "video", "width": 500, "height": 500, "disposition": {"attached_pic": 1}}
    with pytest.raises(JobError) as caught:
        pick_video_stream({"streams": [{"index": 0, "codec_type": "audio"}, cover]})
    assert caught.value.code == 305
    video = {"index": 2, "codec_type": "video", "width": 640, "height": 480, "disposition": {"attached_pic": 0}}
    assert pick_video_stream({"streams": [cover, video]}) is video
