"""The CANARIE service API: /info, /<svc>/info, /<svc>/stats and the link routes (public, HTML or JSON)."""
from __future__ import annotations

import re
import tomllib
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import update

from service_gateway import create_app
from service_gateway.canarie import KEYS, LINKS, load_config
from service_gateway.errors import CODES, SettingsError
from service_gateway.store import WorkerRecord
from tests.conftest import JWT_SECRET
from tests.stack import wait_for

ROOT = Path(__file__).resolve().parent.parent
JSON = {"Accept": "application/json"}
SHAPE = {"status", "code", "error", "description"}
INFO_KEYS = ["name", "synopsis", "version", "institution", "releaseTime", "researchSubject", "supportEmail",
             "category", "tags", "activeWorkers"]

SETTINGS = """
[canarie]
name = "Media Platform"
institution = "CRIM <script>alert(1)</script>"
supportEmail = "support@example.org"
category = "Data Manipulation"
researchSubject = "Multimedia"
tags = ["video", "audio"]
releaseTime = 2026-01-15T09:30:00+01:00
docUrl = "https://docs.example.org/services/{service}"
supportUrl = "https://example.org/support"
sourceUrl = "https://git.example.org/service-gateway"
licenceUrl = "/licence.txt"

[canarie.services.probe]
name = "Probe"
synopsis = "Media metadata <fast>"
version = "2.1"
tags = "metadata, ffprobe"
docUrl = "https://docs.example.org/probe-special"
sourceUrl = ""
"""


def make_app(tmp_path: Path, text: str):
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return create_app({"data_dir": str(tmp_path / "data"), "jwt_secret": JWT_SECRET, "log_format": "text",
                       "config": str(path)})


@pytest.fixture
def configured(tmp_path):
    return make_app(tmp_path, SETTINGS)


def assert_error(response, status: int, code: int) -> dict:
    body = response.get_json()
    assert response.status_code == status, body
    assert set(body) == SHAPE and body["status"] == status and body["code"] == code
    assert body["error"] == CODES[code][1] and body["description"]
    return body


def worker_online(app, queues: list[str], hostname: str = "w1@test") -> None:
    """Record a worker heartbeat in the app's job store, as a running worker does."""
    app.extensions["service_gateway"].store.heartbeat(hostname, queues, 2, datetime.now(timezone.utc))


def add_job(app, service: str, created_at: datetime) -> None:
    app.extensions["service_gateway"].store.add(uuid=str(uuid.uuid4()), owner="alice", service=service,
                                                queue=service, doc_url="file:///x.mp4", created_at=created_at)


# -- HTML or JSON, HEAD, no auth ---------------------------------------------------------------------
def test_info_is_html_by_default_and_json_when_asked(client):
    for accept in (None, "*/*", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"):
        html = client.get("/probe/info", headers={"Accept": accept} if accept else {})
        assert html.status_code == 200 and html.mimetype == "text/html"
        assert "Accept" in html.vary
        assert "<title>probe: info</title>" in html.text and "<th>activeWorkers</th><td>0</td>" in html.text
    body = client.get("/probe/info", headers=JSON).get_json()
    assert list(body) == INFO_KEYS
    assert body["name"] == "probe" and body["activeWorkers"] == 0 and body["tags"] == []


def test_head_answers_like_get_without_a_body(client):
    for path in ("/info", "/probe/info", "/probe/doc"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200
        assert head.data == b"" and head.mimetype == get.mimetype == "text/html"
    assert client.head("/probe/source").status_code == 204
    assert client.head("/nope/info").status_code == 404


def test_no_route_needs_a_token(client):
    paths = ["/info", "/probe/info", *(f"/probe/{page}" for page in LINKS)]
    for path in paths:
        assert client.get(path).status_code in (200, 204), path
        # A bad token is ignored rather than refused: these routes are public, like /health.
        assert client.get(path, headers={"Authorization": "Bearer nonsense"}).status_code in (200, 204), path
    assert client.get("/probe/stats").status_code == 503          # no worker here; not 401


def test_the_seed_routes_are_not_shadowed(app, client):
    urls = app.url_map.bind("localhost")
    for path, method, endpoint in [("/probe/status", "GET", "annotate.status"),
                                   ("/probe/cancel", "GET", "annotate.cancel"),
                                   ("/probe/process", "POST", "annotate.process"),
                                   ("/probe/annotate", "POST", "annotate.annotate"),
                                   ("/jobs/info", "GET", "jobs.get_job"),
                                   ("/info", "GET", "canarie.platform_info"),
                                   ("/probe/info", "GET", "canarie.info"),
                                   ("/probe/stats", "GET", "canarie.stats"),
                                   ("/probe/licence", "GET", "canarie.link")]:
        assert urls.match(path, method)[0] == endpoint, path
    assert_error(client.get("/probe/status"), 401, 220)


@pytest.mark.parametrize("path", ["/nope/info", "/nope/stats", *(f"/nope/{page}" for page in LINKS)])
def test_unknown_service_is_404_code_202_in_the_error_shape(client, path):
    assert_error(client.get(path), 404, 202)
    assert_error(client.get(path, headers=JSON), 404, 202)


def test_unknown_page_of_a_service_is_a_plain_404(client):
    assert_error(client.get("/probe/factsheet"), 404, 201)


# -- values from the settings file ---------------------------------------------------------------------
def test_defaults_come_from_the_service_registry(app, client):
    spec = app.extensions["service_gateway"].services["transcode"]
    body = client.get("/transcode/info", headers=JSON).get_json()
    assert body == {"name": "transcode", "synopsis": spec.description, "version": spec.version,
                    "institution": None, "releaseTime": None, "researchSubject": None, "supportEmail": None,
                    "category": None, "tags": [], "activeWorkers": 0}


def test_settings_file_values_and_per_service_overrides(configured):
    client = configured.test_client()
    spec = configured.extensions["service_gateway"].services["transcode"]
    transcode = client.get("/transcode/info", headers=JSON).get_json()
    # The platform table gives every service its defaults, but not the platform's own name.
    assert transcode == {"name": "transcode", "synopsis": spec.description, "version": spec.version,
                         "institution": "CRIM <script>alert(1)</script>", "releaseTime": "2026-01-15T08:30:00Z",
                         "researchSubject": "Multimedia", "supportEmail": "support@example.org",
                         "category": "Data Manipulation", "tags": ["video", "audio"], "activeWorkers": 0}
    probe = client.get("/probe/info", headers=JSON).get_json()
    assert probe["name"] == "Probe" and probe["synopsis"] == "Media metadata <fast>" and probe["version"] == "2.1"
    assert probe["tags"] == ["metadata", "ffprobe"] and probe["institution"] == transcode["institution"]


def test_html_escapes_every_value(configured):
    client = configured.test_client()
    for path in ("/info", "/probe/info"):
        page = client.get(path).text
        assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Media metadata &lt;fast&gt;" in client.get("/probe/info").text


def test_platform_info_lists_every_service(configured):
    client = configured.test_client()
    rt = configured.extensions["service_gateway"]
    worker_online(configured, ["probe", "transcode"])
    body = client.get("/info", headers=JSON).get_json()
    assert body["name"] == "Media Platform" and body["version"]
    assert body["synopsis"].startswith("A REST gateway")
    assert [s["service"] for s in body["services"]] == list(rt.services)
    by_name = {s["service"]: s for s in body["services"]}
    assert by_name["probe"]["name"] == "Probe" and by_name["probe"]["activeWorkers"] == 1
    assert by_name["faces"]["activeWorkers"] == 0
    page = client.get("/info").text
    assert '<a href="/probe/info">probe</a>' in page


def test_links_redirect_to_the_configured_urls(configured):
    client = configured.test_client()
    expected = {
        "/probe/doc": "https://docs.example.org/probe-special",
        "/transcode/doc": "https://docs.example.org/services/transcode",
        "/transcode/support": "https://example.org/support",
        "/transcode/source": "https://git.example.org/service-gateway",
        "/transcode/licence": "/licence.txt",
    }
    for path, url in expected.items():
        response = client.get(path)
        assert response.status_code == 302 and response.location == url, path
        assert client.head(path).status_code == 302
    mounted = client.get("/transcode/licence", base_url="http://localhost/gateway/")
    assert mounted.status_code == 302 and mounted.location == "/gateway/licence.txt"
    # probe publishes no source ("" clears the platform's): 204 as the CANARIE spec says.
    source = client.get("/probe/source")
    assert source.status_code == 204 and source.data == b""


def test_a_link_without_a_url_answers_a_page_that_says_so(client):
    page = client.get("/probe/tryme")
    assert page.status_code == 200 and page.mimetype == "text/html" and "No try me URL is published" in page.text
    assert client.get("/probe/tryme", headers=JSON).get_json() == {
        "service": "probe", "page": "tryme", "url": None,
        "description": "No try me URL is published for this service."}
    assert client.get("/probe/source").status_code == 204


# -- stats ---------------------------------------------------------------------------------------------------
def test_stats_is_503_in_the_error_shape_without_a_live_worker(app, client):
    response = client.get("/probe/stats")
    body = assert_error(response, 503, 400)
    assert "no live worker" in body["description"] and response.headers["Retry-After"]
    # A worker on another queue does not serve probe; a stale heartbeat is no live worker either.
    worker_online(app, ["transcode"])
    assert_error(client.get("/probe/stats"), 503, 400)
    store = app.extensions["service_gateway"].store
    store.heartbeat("old@test", ["probe"], 1, datetime.now(timezone.utc))
    with store.engine.connect() as conn:
        conn.execute(update(WorkerRecord).where(WorkerRecord.hostname == "old@test")
                     .values(last_seen=datetime.now(timezone.utc) - timedelta(hours=1)))
    assert_error(client.get("/probe/stats"), 503, 400)
    assert client.get("/probe/info", headers=JSON).get_json()["activeWorkers"] == 0


def test_stats_counts_the_service_jobs_since_the_first_one(app, client):
    worker_online(app, ["probe"])
    empty = client.get("/probe/stats", headers=JSON).get_json()
    assert empty["invocations"] == 0
    # No job yet: lastReset is when this gateway process started.
    assert datetime.fromisoformat(empty["lastReset"]) <= datetime.now(timezone.utc)

    first = datetime(2026, 3, 1, 12, 0, 5, tzinfo=timezone.utc)
    for minutes in (0, 1, 2):
        add_job(app, "probe", first + timedelta(minutes=minutes))
    add_job(app, "transcode", first - timedelta(days=1))
    body = client.get("/probe/stats", headers=JSON).get_json()
    assert body == {"invocations": 3, "lastReset": "2026-03-01T12:00:05Z"}
    page = client.get("/probe/stats").text
    assert "<th>invocations</th><td>3</td>" in page


def test_stats_counts_since_a_configured_last_reset(tmp_path):
    app = make_app(tmp_path, '[canarie]\nlastReset = 2026-03-01T13:00:00+01:00\n'
                             '[canarie.services.transcode]\nlastReset = "2026-02-01"\n')
    client = app.test_client()
    worker_online(app, ["probe", "transcode"])
    reset = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    for offset in (-60, -1, 0, 1, 3600):
        add_job(app, "probe", reset + timedelta(seconds=offset))
        add_job(app, "transcode", reset + timedelta(seconds=offset))
    assert client.get("/probe/stats", headers=JSON).get_json() == {
        "invocations": 3, "lastReset": "2026-03-01T12:00:00Z"}
    assert client.get("/transcode/stats", headers=JSON).get_json() == {
        "invocations": 5, "lastReset": "2026-02-01T00:00:00Z"}


# -- the [canarie] table is checked when the app is made ----------------------------------------------------
@pytest.mark.parametrize(("text", "names"), [
    ('[canarie]\ndocURL = "https://x"\n', "docURL: unknown key"),
    ('[canarie]\ndocUrl = "javascript:alert(1)"\n', "docUrl: expected an http(s) URL"),
    ('[canarie]\nsourceUrl = "//evil.example"\n', "sourceUrl: expected an http(s) URL"),
    ('[canarie]\nreleaseTime = "last tuesday"\n', "releaseTime: expected an ISO 8601 time"),
    ('[canarie]\ntags = [1, 2]\n', "tags: expected a list of strings"),
    ('[canarie]\ninstitution = 3\n', "institution: expected a string"),
    ('[canarie.services.probe]\nlicenceUrl = 7\n', "[canarie].services.probe licenceUrl"),
    ('[canarie]\nservices = "probe"\n', "services: must hold one table per service"),
])
def test_a_bad_canarie_table_stops_the_app_naming_the_key(tmp_path, text, names):
    with pytest.raises(SettingsError, match=re.escape(names)):
        make_app(tmp_path, text)


def test_an_override_for_an_unknown_service_is_only_a_warning(tmp_path, capfd):
    app = make_app(tmp_path, '[canarie.services.nosuch]\ninstitution = "x"\n')
    assert app.test_client().get("/probe/info").status_code == 200
    assert "[canarie.services] names no such service: nosuch" in capfd.readouterr().err


def test_the_production_example_documents_a_valid_table():
    text = (ROOT / "config" / "production.example.toml").read_text()
    block = text[text.index("# [canarie]"):]
    table = tomllib.loads("\n".join(line.removeprefix("#").removeprefix(" ") for line in block.splitlines()
                                    if line.startswith("#")))
    config = load_config(table["canarie"], ["probe", "transcode"])
    documented = set(config.platform) | {k for values in config.services.values() for k in values}
    assert documented == KEYS


def test_the_api_doc_names_every_key():
    doc = (ROOT / "docs" / "api.md").read_text()
    section = doc[doc.index("## CANARIE service API"):]
    for key in KEYS:
        assert f"`{key}`" in section, key


# -- end to end ---------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_info_and_stats_count_real_jobs(stack, media):
    def get(path: str):
        return stack.session.get(stack.url + path, headers=JSON, timeout=30)

    info = get("/probe/info").json()
    assert info["activeWorkers"] >= 1
    before = get("/probe/stats").json()
    jobs = [stack.submit("probe", f"file://{media}/short.mp4") for _ in range(2)]
    for job_id in jobs:
        assert stack.wait_status("probe", job_id, {"SUCCESS", "FAILURE"})["status"] == "SUCCESS"
    after = get("/probe/stats").json()
    assert after["invocations"] == before["invocations"] + 2
    first = min(stack.store.get(job_id).created_at for job_id in jobs)
    assert datetime.fromisoformat(after["lastReset"]) <= first.replace(tzinfo=first.tzinfo or timezone.utc)
    platform = get("/info").json()
    assert {s["service"]: s["activeWorkers"] for s in platform["services"]}["probe"] >= 1


@pytest.mark.e2e
def test_stats_is_503_while_no_worker_runs(stack):
    def unavailable():
        response = stack.session.get(f"{stack.url}/probe/stats", timeout=30)
        return (response,) if response.status_code == 503 else None    # a 503 Response is falsy itself

    stack.stop_worker()
    try:
        # The worker deletes its heartbeat row on shutdown; else the row goes stale after 3 heartbeats.
        (response,) = wait_for(unavailable, 30, "probe stats to answer 503 once its worker is gone")
        body = response.json()
        assert set(body) == SHAPE and body["code"] == 400 and body["error"] == "ServiceUnavailable"
        assert response.headers["Retry-After"]
        info = stack.session.get(f"{stack.url}/probe/info", headers=JSON, timeout=30).json()
        assert info["activeWorkers"] == 0
    finally:
        stack.start_worker()
    assert stack.session.get(f"{stack.url}/probe/stats", headers=JSON, timeout=30).status_code == 200
