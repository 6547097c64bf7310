"""Annotation storage: POST a job's result to the configured store, as the original's POST_ANNOTATIONS_REQ_URL."""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from service_gateway.errors import JobError
from service_gateway.settings import Settings

log = logging.getLogger("workers.storage")

#: Seconds of the first retry's wait; it doubles on each retry (with jitter), capped at BACKOFF_MAX_S.
BACKOFF_FACTOR_S = 0.5
BACKOFF_MAX_S = 30.0


def post_annotations(settings: Settings, ann_doc_id: str, result: dict[str, Any]) -> None:
    """POST ``result`` as JSON to SG_ANNOTATION_STORAGE_URL for ``ann_doc_id``.

    Connection errors and 5xx answers are retried with exponential backoff and jitter
    (urllib3's Retry) up to SG_ANNOTATION_STORAGE_RETRIES times.

    Raises:
        JobError: 302 when storage is not configured, or the POST still fails after the retries.
    """
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    template = settings.annotation_storage_url
    if not template:
        raise JobError(302, "ann_doc_id was given but SG_ANNOTATION_STORAGE_URL is not set")
    url = template.format(ann_doc_id=quote(ann_doc_id, safe=""))
    retry = Retry(total=settings.annotation_storage_retries, connect=settings.annotation_storage_retries,
                  read=settings.annotation_storage_retries, status=settings.annotation_storage_retries,
                  allowed_methods=None, status_forcelist=(500, 502, 503, 504), backoff_factor=BACKOFF_FACTOR_S,
                  backoff_max=BACKOFF_MAX_S, backoff_jitter=BACKOFF_FACTOR_S, raise_on_status=False)
    timeout = settings.annotation_storage_timeout_s
    with requests.Session() as session:
        session.trust_env = False
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        try:
            response = session.post(url, json=result, timeout=(timeout, timeout))
        except requests.RequestException as exc:
            raise JobError(302, f"could not post the annotations to storage: {exc.__class__.__name__}") from None
    if not 200 <= response.status_code < 300:
        raise JobError(302, f"annotation storage answered HTTP {response.status_code} for ann_doc_id {ann_doc_id!r}")
    log.info("annotations posted to storage (HTTP %d)", response.status_code)
