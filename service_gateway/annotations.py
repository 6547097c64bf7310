"""The one annotation result schema shared by every annotator, and its W3C Web Annotation form.

An annotator's result is::

    {"service": "speech", "version": "1.0.0", "doc_url": "...", "duration": 12.48,
     "annotations": [{"start": 1.02, "end": 3.5, "label": "speech", "confidence": 0.93, "data": {}}],
     "summary": {...}}

``start``/``end`` are seconds from the start of the document (equal for an instant, e.g. a cut),
``label`` says what the segment is, ``confidence`` is 0-1 where the method gives one, and ``data``
holds the service-specific fields (``bbox`` of a face as ``[x, y, w, h]`` pixels, a cut's
``frame`` and ``score``...). docs/annotations.md documents each service's labels and data.

This module is pure Python: the gateway renders results with it, workers build them with it.
"""
from __future__ import annotations

from typing import Any, Iterable

#: JSON Schema of every annotator's result (published in GET /services as ``result_schema``).
RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["service", "version", "doc_url", "duration", "annotations", "summary"],
    "properties": {
        "service": {"type": "string"},
        "version": {"type": "string"},
        "doc_url": {"type": "string"},
        "duration": {"type": "number", "minimum": 0, "description": "Document duration in seconds."},
        "annotations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["start", "end", "label", "data"],
                "properties": {
                    "start": {"type": "number", "minimum": 0},
                    "end": {"type": "number", "minimum": 0},
                    "label": {"type": "string"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "data": {"type": "object"},
                },
            },
        },
        "summary": {"type": "object"},
        "outputs": {"type": "array"},
    },
}

WEB_ANNOTATION_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
MEDIA_FRAGMENTS = "http://www.w3.org/TR/media-frags/"


def annotation(start: float, end: float, label: str, *, confidence: float | None = None,
               **data: Any) -> dict[str, Any]:
    """Build one annotation; times are rounded to the millisecond, ``data`` keeps the rest."""
    item: dict[str, Any] = {"start": round(float(start), 3), "end": round(float(max(start, end)), 3),
                            "label": label}
    if confidence is not None:
        item["confidence"] = round(min(1.0, max(0.0, float(confidence))), 4)
    item["data"] = data
    return item


def annotation_result(service: Any, doc_url: str, duration: float, annotations: Iterable[dict[str, Any]],
                      summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build an annotator's result in the shared schema (``service`` has ``name`` and ``version``)."""
    items = sorted(annotations, key=lambda a: (a["start"], a["end"]))
    return {"service": service.name, "version": service.version, "doc_url": doc_url,
            "duration": round(float(duration), 3), "annotations": items, "summary": summary or {}}


def is_annotation_result(result: Any) -> bool:
    return isinstance(result, dict) and isinstance(result.get("annotations"), list) and "doc_url" in result


def to_web_annotations(result: dict[str, Any], page_id: str) -> dict[str, Any]:
    """Render an annotation result as a W3C Web Annotation ``AnnotationPage`` (JSON-LD).

    Each annotation targets the document with a media-fragment selector: ``t=start,end`` and,
    when the annotation has a ``bbox``, ``xywh=x,y,w,h`` (pixels).

    Args:
        result: an annotator's result (:func:`annotation_result`).
        page_id: the IRI of the page (the URL it is served at).
    """
    items = []
    for index, item in enumerate(result["annotations"]):
        fragment = f"t={_num(item['start'])},{_num(item['end'])}"
        bbox = item.get("data", {}).get("bbox")
        if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            fragment += "&xywh=" + ",".join(str(int(round(v))) for v in bbox)
        body: list[dict[str, Any]] = [{"type": "TextualBody", "purpose": "tagging", "value": item["label"],
                                       "format": "text/plain"}]
        if item.get("data"):
            body.append({"type": "Dataset", "purpose": "describing", "format": "application/json",
                         "value": item["data"]})
        annotation_ld: dict[str, Any] = {
            "id": f"{page_id}#a{index}",
            "type": "Annotation",
            "motivation": "tagging",
            "creator": {"type": "Software", "name": f"{result['service']} {result['version']}"},
            "body": body,
            "target": {"source": result["doc_url"],
                       "selector": {"type": "FragmentSelector", "conformsTo": MEDIA_FRAGMENTS, "value": fragment}},
        }
        if "confidence" in item:
            annotation_ld["confidence"] = item["confidence"]
        items.append(annotation_ld)
    return {"@context": WEB_ANNOTATION_CONTEXT, "id": page_id, "type": "AnnotationPage",
            "label": f"{result['service']} annotations", "items": items}


def _num(value: float) -> str:
    text = f"{float(value):.3f}".rstrip("0").rstrip(".")
    return text or "0"
