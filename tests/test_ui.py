"""GET /ui, the web page for people: its headers and files, then the page itself in a real headless Chromium.

The browser test drives Debian's `chromium` through its `chromium-driver` with Selenium (given the driver's
path, Selenium Manager downloads nothing) against a real gunicorn + Celery stack: sign in, submit jobs
from the form the page generates from GET /services, watch progress arrive over the event stream, open
a result and download its output, cancel a running job, see a refused parameter's description.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service_gateway.blueprints.ui import ASSETS, ASSETS_DIR, CSP
from tests.conftest import need

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")


# -- the page and its files, without a browser ------------------------------------------------------------
class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []
        self.inline: list[str] = []
        self.urls: list[str] = []
        self.api_root: str | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts.append(values.get("src"))
            self._in_script = True
        if tag == "meta" and values.get("name") == "sg-api-root":
            self.api_root = values.get("content")
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"{tag} {name}")
            if name in ("src", "href") and value and not value.startswith("data:"):
                self.urls.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script")


def test_page_is_public_with_a_strict_csp_and_only_its_own_files(client):
    response = client.get("/ui")                      # no token
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = _Page()
    page.feed(response.get_data(as_text=True))
    assert page.inline == [], "no inline script, style or event handler: the CSP would block them"
    assert page.scripts and all(page.scripts), "every script is a file"
    assert page.api_root == "/"
    assert {u.split("?")[0].rsplit("/", 1)[-1] for u in page.urls} == set(ASSETS)
    for url in page.urls:
        assert url.startswith("/ui/static/"), url
        with client.get(url) as asset:
            assert asset.status_code == 200 and asset.data, url
            assert asset.headers["Content-Security-Policy"] == CSP
    with client.get("/ui/static/ui.js") as script:
        assert script.mimetype in ("text/javascript", "application/javascript")
    missing = client.get("/ui/static/index.html")       # the template is not one of the assets
    assert missing.status_code == 404 and missing.get_json()["code"] == 201
    assert missing.headers["Content-Security-Policy"] == CSP


def test_page_knows_its_mount_prefix(client):
    response = client.get("/ui", environ_overrides={"SCRIPT_NAME": "/gateway"})
    page = _Page()
    page.feed(response.get_data(as_text=True))
    assert page.api_root == "/gateway/"
    assert all(u.startswith("/gateway/ui/static/") for u in page.urls)


def test_script_never_parses_html():
    code = [line for line in (ASSETS_DIR / "ui.js").read_text().splitlines() if not line.strip().startswith("//")]
    source = "\n".join(code)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, sink


def test_openapi_documents_the_page_as_public(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["paths"]["/ui"]["get"]["security"] == []
    assets = spec["paths"]["/ui/static/{name}"]["get"]
    assert assets["security"] == []
    assert assets["parameters"][0]["schema"] == {"enum": list(ASSETS)}


# -- the page in a browser, against a real stack ------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    need(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
         "chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need(False, "selenium (pip install selenium)")
    profile = Path(tempfile.mkdtemp(prefix="sg-ui-chromium-"))
    downloads = profile / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


#: Records what each job row shows, every time it changes: window.__rows[uuid] = [[status, progress], ...].
RECORD_ROWS = """
window.__rows = {};
const snapshot = (row) => {
  const seen = window.__rows[row.dataset.uuid] || (window.__rows[row.dataset.uuid] = []);
  const now = [row.querySelector('.status').textContent, Number(row.querySelector('progress').value)];
  const last = seen[seen.length - 1];
  if (!last || last[0] !== now[0] || last[1] !== now[1]) seen.push(now);
};
new MutationObserver((changes) => {
  for (const change of changes) {
    const node = change.target.nodeType === 1 ? change.target : change.target.parentElement;
    const row = node && node.closest('tr[data-uuid]');
    if (row) snapshot(row);
    for (const added of change.addedNodes) if (added.matches && added.matches('tr[data-uuid]')) snapshot(added);
  }
}).observe(document.getElementById('job-rows'), {subtree: true, childList: true, attributes: true,
                                                  characterData: true});
window.__loaded_once = true;
"""


@pytest.mark.e2e
# One backend is enough: the page talks to the gateway's HTTP API, whatever the broker. Narrowing the
# stack fixture's params here (rather than skipping inside) never starts the RabbitMQ stack for nothing.
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_the_page_in_chromium(stack, media, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    by_id = driver.find_element

    def wait(condition, what: str, timeout_s: float = 20):
        return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(
            lambda d: condition(), message=f"timed out waiting for {what}")

    def text(element_id: str) -> str:
        return by_id(By.ID, element_id).text

    def row(job_id: str):
        return by_id(By.CSS_SELECTOR, f'tr[data-uuid="{job_id}"]')

    def row_status(job_id: str) -> str:
        rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-uuid="{job_id}"] .status')
        return rows[0].text if rows else ""

    def fill(element_id: str, value: str) -> None:
        field = by_id(By.ID, element_id)
        field.clear()
        field.send_keys(value)

    def submitted() -> str:
        wait(lambda: "Submitted job" in text("submit-message") or "error" in by_id(
            By.ID, "submit-message").get_attribute("class"), "the submit's answer")
        match = re.search(r"Submitted job ([0-9a-f-]{36})", text("submit-message"))
        assert match, text("submit-message")
        return match.group(1)

    # A pipeline, so that the form shows a step's overrides; a client, to sign in with its id and secret.
    pipeline = f"ui-{uuid.uuid4().hex[:6]}"
    created = stack.request("POST", "/admin/pipelines", admin=True, json={
        "name": pipeline, "steps": [{"name": "small", "service": "transcode", "params": {"preset": "mp4-360p"}}]})
    assert created.status_code == 201, created.text
    client = stack.request("POST", "/admin/clients", admin=True, json={"name": f"ui-{uuid.uuid4().hex[:6]}",
                                                                       "scopes": ["*"]})
    assert client.status_code == 201, client.text
    client = client.json()
    try:
        driver.get(f"{stack.url}/ui")
        wait(lambda: by_id(By.ID, "login").is_displayed(), "the sign-in panel")
        assert not by_id(By.ID, "app").is_displayed()

        # Sign in with a client id and secret (POST /auth/access-token), then sign out.
        fill("client-id", client["client_id"])
        fill("client-secret", "not the secret")
        by_id(By.CSS_SELECTOR, "#client-form button[type=submit]").click()
        wait(lambda: "do not match" in text("login-message"), "the refused login's description")
        fill("client-secret", client["secret"])
        by_id(By.CSS_SELECTOR, "#client-form button[type=submit]").click()
        wait(lambda: by_id(By.ID, "app").is_displayed(), "the signed-in page")
        assert client["client_id"] in text("whoami-text")
        by_id(By.ID, "sign-out").click()
        wait(lambda: by_id(By.ID, "login").is_displayed(), "the sign-in panel again")
        assert driver.execute_script("return sessionStorage.getItem('sg.token')") is None

        # A token that is not one is refused with the gateway's own words; then a real one (its own subject,
        # so that the list holds this test's jobs only).
        fill("token-input", "not-a-token")
        by_id(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait(lambda: "malformed" in text("login-message"), "the refused token's description")
        subject = f"ui-{uuid.uuid4().hex[:6]}"
        fill("token-input", stack.token(subject))
        by_id(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        wait(lambda: by_id(By.ID, "app").is_displayed(), "the signed-in page")
        assert subject in text("whoami-text")
        wait(lambda: by_id(By.ID, "no-jobs").is_displayed(), "an empty job list")
        driver.execute_script(RECORD_ROWS)

        # The form comes from each service's schema; pipelines are in the list too.
        service = Select(by_id(By.ID, "service"))
        names = [o.get_attribute("value") for o in service.options]
        assert {"probe", "transcode", "faces", pipeline} <= set(names)
        service.select_by_value(pipeline)
        wait(lambda: by_id(By.ID, "param-small").tag_name == "textarea", "the pipeline step's JSON field")
        service.select_by_value("transcode")
        wait(lambda: by_id(By.ID, "param-preset").tag_name == "select", "the transcode form")
        assert by_id(By.ID, "param-height").get_attribute("type") == "number"
        assert by_id(By.ID, "param-height").get_attribute("max") == "4320"
        assert Select(by_id(By.ID, "param-speed")).first_selected_option.text == "veryfast"   # its default
        assert "aspect ratio" in by_id(By.ID, "param-height").find_element(By.XPATH, "..").text   # its description

        # A transcode: its progress bar rises live, to 100 and SUCCESS, without a reload.
        fill("doc-url", f"file://{media / 'medium.mp4'}")
        Select(by_id(By.ID, "param-preset")).select_by_visible_text("mp4-360p")
        by_id(By.ID, "submit-button").click()
        done = submitted()
        wait(lambda: row_status(done) == "SUCCESS", "the transcode to succeed on the page", timeout_s=60)
        seen = driver.execute_script("return window.__rows[arguments[0]]", done)
        assert seen[-1] == ["SUCCESS", 100], seen
        progress = [p for _, p in seen]
        assert progress == sorted(progress), seen
        assert any(0 < p < 100 for _, p in seen), f"no progress seen between 0 and 100: {seen}"
        assert driver.execute_script("return window.__loaded_once") is True, "the page was reloaded"

        # Its result, and its output downloaded with the token.
        row(done).click()
        wait(lambda: by_id(By.ID, "detail").is_displayed() and done in text("detail-title"), "the job's details")
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#outputs a.output"), "the output link")
        result = json.loads(by_id(By.ID, "result").text)
        output = result["outputs"][0]
        link = by_id(By.CSS_SELECTOR, "#outputs a.output")
        assert link.text == output["name"] == "transcoded.mp4"
        link.click()
        saved = driver.downloads / output["name"]
        wait(lambda: saved.exists() and saved.stat().st_size == output["size"], "the download", timeout_s=30)

        # A slow job, cancelled from the page while it runs.
        fill("doc-url", f"file://{media / 'medium.mp4'}")
        Select(by_id(By.ID, "param-preset")).select_by_visible_text("webm-vp9")
        Select(by_id(By.ID, "param-speed")).select_by_visible_text("slow")
        by_id(By.ID, "submit-button").click()
        slow = submitted()
        wait(lambda: [r.get_attribute("data-uuid") for r in driver.find_elements(By.CSS_SELECTOR, "#job-rows tr")]
             == [slow, done], "the new job on top of the list")                  # newest first
        job = stack.request("GET", f"/jobs/{slow}", sub=subject).json()
        assert job["params"]["speed"] == "slow" and job["params"]["preset"] == "webm-vp9"
        wait(lambda: row_status(slow) in ("STARTED", "PROGRESS"), "the slow job to start", timeout_s=30)
        row(slow).find_element(By.CSS_SELECTOR, "button.cancel").click()
        wait(lambda: row_status(slow) == "REVOKED", "the cancelled job to show REVOKED", timeout_s=30)
        assert not row(slow).find_element(By.CSS_SELECTOR, "button.cancel").is_displayed()

        # A bad parameter: the gateway's description, as the API gives it.
        Select(by_id(By.ID, "param-speed")).select_by_visible_text("veryfast")
        fill("param-video_bitrate", "lots")
        by_id(By.ID, "submit-button").click()
        refused = stack.request("POST", "/transcode/process", sub=subject, json={
            "doc_url": f"file://{media / 'medium.mp4'}", "params": {"preset": "webm-vp9", "video_bitrate": "lots"}})
        assert refused.status_code == 400
        description = refused.json()["description"]
        assert "video_bitrate" in description
        wait(lambda: text("submit-message") == description, "the refused parameter's description")
        assert "error" in by_id(By.ID, "submit-message").get_attribute("class")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#job-rows tr")) == 2

        problems = [entry["message"] for entry in driver.get_log("browser")
                    if "Content Security Policy" in entry["message"] or "Uncaught" in entry["message"]]
        assert problems == []
    finally:
        stack.request("DELETE", f"/admin/pipelines/{pipeline}", admin=True)
