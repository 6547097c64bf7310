"""probe: ffprobe metadata of a media document (container, duration, streams)."""
from __future__ import annotations

from workers.sdk import JobContext, Service

service = Service(
    name="probe",
    version="1.0.0",
    description="Media metadata from ffprobe: container, duration, and each audio/video stream's codec, "
                "size, frame rate, sample rate, channels and bit rate.",
    parameters={"type": "object", "properties": {}},
)


@service.handler
def run(job: JobContext) -> dict:
    from workers.sdk.media import probe, summarize

    job.progress(10)
    info = summarize(probe(job, job.input_path))
    return {"service": service.name, "version": service.version, "doc_url": job.doc_url, **info}
