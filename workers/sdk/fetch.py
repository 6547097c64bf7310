"""Fetch a job's document into its private temp dir, under the URL safety rules."""
from __future__ import annotations

import re
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from service_gateway.errors import JobError
from service_gateway.settings import Settings
from service_gateway.urls import URLRefused, check_doc_url, local_path

MAX_REDIRECTS = 5
#: HTTP answers of a media server that say "try again later"; any other non-200 is final.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK_BYTES = 1024 * 1024
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


def fetch(url: str, dest_dir: Path, settings: Settings, check_cancelled=lambda: None) -> Path:
    """Return a local path of the document at ``url``.

    file:// URLs under SG_FILE_ROOTS are used in place; http(s) documents are streamed to
    ``dest_dir`` with per-read timeouts, a total deadline and a size limit, each redirect re-checked,
    each connection made to the address that was checked (no second DNS answer is trusted).

    Raises:
        JobError: 207 when the URL is refused, 301 when the download fails.
    """
    try:
        # No DNS lookup here: the pinned session resolves and checks the host when it connects.
        kind = check_doc_url(url, file_roots=settings.file_roots, allow_private=settings.allow_private_urls)
        if kind == "file":
            path = local_path(url, settings.file_roots)
            if not path.is_file():
                raise JobError(301, f"no such file: {Path(urlsplit(url).path).name}")
            return path
    except URLRefused as exc:
        raise JobError(207, f"doc_url {exc}") from None
    return _download(url, dest_dir, settings, check_cancelled)


def _download(url: str, dest_dir: Path, settings: Settings, check_cancelled) -> Path:
    """Stream ``url`` to ``dest_dir``: connections pinned to checked addresses, the whole download
    bounded by SG_DOWNLOAD_DEADLINE_S (a timer cuts the connection), each read by SG_DOWNLOAD_TIMEOUT_S."""
    import requests

    from service_gateway.pinned_http import pinned_session

    suffix = Path(urlsplit(url).path).suffix
    dest = dest_dir / ("input" + (suffix if _SUFFIX.match(suffix) else ""))
    timeout = (settings.download_timeout_s, settings.download_timeout_s)
    limit = settings.download_max_bytes
    session, adapter = pinned_session(settings.allow_private_urls)
    deadline = threading.Timer(settings.download_deadline_s, adapter.abort)
    deadline.daemon = True
    deadline.start()

    def too_slow() -> JobError:
        # A drip-feeding or stalled server: transient (retried with backoff), like a timeout.
        return JobError(301, f"download took longer than {settings.download_deadline_s:g} s "
                             "(SG_DOWNLOAD_DEADLINE_S)", transient=True)
    try:
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = session.get(current, stream=True, timeout=timeout, allow_redirects=False)
            except URLRefused as exc:      # the pinned adapter's own check, at connection time
                raise JobError(207, f"doc_url {exc}") from None
            except requests.RequestException as exc:
                if adapter.aborted:
                    raise too_slow() from None
                # Timeouts and refused or reset connections may pass: the job is retried later.
                raise JobError(301, f"download failed: {exc.__class__.__name__}", transient=True) from None
            with response:
                if response.is_redirect:
                    current = urljoin(current, response.headers.get("Location", ""))
                    try:
                        check_doc_url(current, file_roots=[], allow_private=settings.allow_private_urls)
                    except URLRefused as exc:
                        raise JobError(207, f"redirect refused: {exc}") from None
                    continue
                if response.status_code != 200:
                    raise JobError(301, f"download failed: HTTP {response.status_code}",
                                   transient=response.status_code in TRANSIENT_STATUSES)
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > limit:
                    raise JobError(301, f"document is {declared} bytes, more than the {limit} allowed")
                size = 0
                try:
                    with dest.open("wb") as fh:
                        for chunk in response.iter_content(CHUNK_BYTES):
                            size += len(chunk)
                            if size > limit:
                                raise JobError(301, f"document is larger than the {limit} bytes allowed")
                            fh.write(chunk)
                            check_cancelled()
                except requests.RequestException as exc:
                    if adapter.aborted:
                        raise too_slow() from None
                    raise JobError(301, f"download interrupted: {exc.__class__.__name__}", transient=True) from None
                if adapter.aborted:        # cut at the deadline while the body had no declared length
                    raise too_slow()
                return dest
        raise JobError(301, f"more than {MAX_REDIRECTS} redirects")
    finally:
        deadline.cancel()
        session.close()
