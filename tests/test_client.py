"""The Python client and the `sg` client commands, through a real gateway and worker on both backends."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from service_gateway.client import (BadRequest, Client, ConfigError, Conflict, ConnectionFailed, Forbidden,
                                    GatewayError, JobFailed, NotFound, QuotaExceeded, TooManyAttempts, Unauthorized,
                                    Unavailable, error_from_response, load_config, parse_param, safe_filename)
from service_gateway.client import _sse_events
from service_gateway.errors import CODES
from tests.stack import BIN, free_port, wait_for

UNKNOWN = "00000000-0000-4000-8000-000000000000"


# -- helpers ------------------------------------------------------------------------------------
def new_client(stack, scopes=("*",), quotas: dict | None = None) -> tuple[str, str]:
    """A client application made through the admin API: (client_id, secret)."""
    made = stack.request("POST", "/admin/clients", sub="root", admin=True,
                         json={"name": f"sdk-{uuid.uuid4().hex[:8]}", "scopes": list(scopes), "quotas": quotas or {}})
    assert made.status_code == 201, made.text
    return made.json()["client_id"], made.json()["secret"]


def record(api: Client) -> list[tuple[str, str, int]]:
    """Every HTTP exchange the client makes: (method, path with query, status)."""
    calls: list[tuple[str, str, int]] = []
    api.session.hooks["response"].append(
        lambda r, *a, **k: calls.append((r.request.method, r.request.path_url, r.status_code)))
    return calls


def logins(calls) -> int:
    return sum(1 for method, path, status in calls if path == "/auth/access-token" and status == 200)


def ffprobe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def video_of(path) -> tuple[dict, float]:
    info = ffprobe(path)
    return next(s for s in info["streams"] if s["codec_type"] == "video"), float(info["format"]["duration"])


def client_env(stack, client_id: str, secret: str, home: Path) -> dict[str, str]:
    """Only the client's settings, plus a broken server setting: client commands must not read the server's."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
            "SG_URL": stack.url, "SG_CLIENT_ID": client_id, "SG_SECRET": secret,
            "SG_BROKER_URL": "amqp://nowhere.invalid//"}         # load_settings would refuse: no SG_JWT_SECRET


def sg(env: dict, *args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / "sg"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def sg_start(env: dict, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "sg"), *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


# -- without a gateway ----------------------------------------------------------------------------
def test_the_client_and_the_cli_import_without_the_server_stack():
    code = ("import sys\n"
            "for name in ('flask', 'celery', 'sqlalchemy', 'kombu', 'flask_jwt_extended', 'alembic', 'jwt'):\n"
            "    sys.modules[name] = None\n"
            "import service_gateway.client as c, service_gateway.cli as cli\n"
            "cli.build_parser().parse_args(['submit', 'probe', '--doc-url', 'file:///x', '--wait'])\n"
            "c.Client('http://127.0.0.1:9', 'c_x', 'secret')\n"
            "import tqdm\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_base_install_is_the_light_client():
    """`pip install service-gateway[client]` pulls no server package: they all sit behind [server]."""
    from importlib.metadata import requires
    base = sorted(r.split(">")[0].split("<")[0].split("[")[0].strip()
                  for r in requires("service-gateway") if "extra ==" not in r)
    assert base == ["requests", "tqdm"]
    server = [r for r in requires("service-gateway") if 'extra == "server"' in r]
    assert any(r.startswith("flask") for r in server) and any(r.startswith("celery") for r in server)


@pytest.mark.parametrize(("item", "expected"), [
    ("preset=mp4-720p", ("preset", "mp4-720p")), ("height=480", ("height", 480)), ("crf=23.5", ("crf", 23.5)),
    ("mono=true", ("mono", True)), ("times=[1, 2.5]", ("times", [1, 2.5])), ("name=007", ("name", "007")),
    ("note=a=b", ("note", "a=b")), ("empty=", ("empty", "")), ('quoted="42"', ("quoted", "42")),
])
def test_param_values_are_json_when_they_parse_else_text(item, expected):
    assert parse_param(item) == expected


@pytest.mark.parametrize("item", ["preset", "=x", ""])
def test_a_param_without_key_is_refused(item):
    with pytest.raises(ValueError):
        parse_param(item)


@pytest.mark.parametrize(("name", "expected"), [
    ("transcoded.mp4", "transcoded.mp4"), ("../../etc/passwd", "passwd"), ("..", "output"), (".bashrc", "bashrc"),
    ("dir\\evil.exe", "evil.exe"), ("a b?*.mp4", "a b_.mp4"), ("", "output"), ("x\n\x00.json", "x_.json"),
])
def test_output_names_become_safe_file_names(name, expected):
    assert safe_filename(name) == expected


def test_pipeline_outputs_of_the_same_name_are_fetched_by_step_and_saved_apart():
    from service_gateway.client import saved_as
    status = {"result": {"outputs": [{"name": "thumbs.jpg", "step": "early"}, {"name": "thumbs.jpg", "step": "late"},
                                     {"name": "transcoded.mp4", "step": "small"}]}}
    first, second, only = status["result"]["outputs"]
    assert saved_as(first, status) == {"step": "early", "filename": "early-thumbs.jpg"}
    assert saved_as(second, status) == {"step": "late", "filename": "late-thumbs.jpg"}
    assert saved_as(only, status) == {}                         # a unique name keeps its name
    assert saved_as({"name": "x.mp4"}, {"result": {"outputs": [{"name": "x.mp4"}]}}) == {}


def test_config_flags_win_over_environment_over_file(tmp_path):
    file = tmp_path / "client.toml"
    file.write_text('url = "http://file:1"\nclient_id = "c_file"\nsecret = "from-file"\n')
    env = {"SG_CLIENT_ID": "c_env", "HOME": str(tmp_path)}
    assert load_config(file, env, {"url": "http://flag:3", "client_id": None}) == {
        "url": "http://flag:3", "client_id": "c_env", "secret": "from-file"}
    # The default file is ~/.config/service-gateway/client.toml (XDG_CONFIG_HOME honoured)
    (tmp_path / "xdg" / "service-gateway").mkdir(parents=True)
    (tmp_path / "xdg" / "service-gateway" / "client.toml").write_text('token = "t"\n')
    assert load_config(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == {"token": "t"}
    file.write_text('url = "x"\npassword = "y"\n')
    with pytest.raises(ConfigError, match="password"):
        load_config(file, {})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", {})


def test_cli_without_configuration_says_what_is_missing_and_exits_2(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run([str(BIN / "sg"), "status", UNKNOWN], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "SG_URL" in done.stderr and "ConfigError" in done.stderr


def test_an_unreachable_gateway_raises_connection_failed():
    with pytest.raises(ConnectionFailed) as caught:
        Client(f"http://127.0.0.1:{free_port()}", token="x", retries=0).services()
    assert caught.value.status is None and caught.value.error == "ConnectionError"
    assert "cannot reach the gateway" in caught.value.description


@pytest.mark.parametrize("code", sorted(c for c, (status, _, _) in CODES.items() if status >= 400))
def test_every_uniform_error_code_maps_to_a_typed_exception(code):
    status, name, _ = CODES[code]
    response = requests.Response()
    response.status_code, response.url = status, "http://gateway/x"
    body = {"status": status, "code": code, "error": name, "description": "what to do"}
    response._content = json.dumps(body).encode()
    if status in (429, 503):
        response.headers["Retry-After"] = "7"
    error = error_from_response(response)
    assert (error.status, error.code, error.error, error.description) == (status, code, name, "what to do")
    assert isinstance(error, GatewayError) and f"{name} {code}" in str(error)
    expected = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 503: Unavailable,
                429: QuotaExceeded if code == 401 else TooManyAttempts}.get(status)
    if expected:
        assert isinstance(error, expected)
    if status in (429, 503):
        assert error.retry_after == 7


def test_a_non_json_error_answer_still_raises_by_status():
    response = requests.Response()
    response.status_code, response.reason, response.url = 502, "Bad Gateway", "http://gateway/jobs"
    response._content = b"<html>upstream down</html>"
    error = error_from_response(response)
    assert error.status == 502 and error.code is None and "upstream down" in error.description


class _Chunks:
    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def iter_content(self, chunk_size=None):
        yield from self.chunks


def test_event_stream_parser_handles_split_lines_comments_and_multiline_data():
    events = list(_sse_events(_Chunks(b"retry: 1000\n\n: keep-alive\n\nid: PRO", b"GRESS:5\r\nevent: status\r",
                                      b"\ndata: {\"a\":\ndata: 1}\r\n\r\n", b"id: SUCCESS:100\nevent: result\n",
                                      b"data: {}\n\n")))
    assert events == [{"retry": 1000}, {"id": "PROGRESS:5", "event": "status", "data": '{"a":\n1}'},
                      {"id": "SUCCESS:100", "event": "result", "data": "{}"}]


# -- through the real stack -------------------------------------------------------------------------
@pytest.mark.e2e
def test_login_reuses_and_renews_tokens(stack):
    client_id, secret = new_client(stack)
    with Client(stack.url, client_id, secret) as api:
        calls = record(api)
        # Given a client id and secret, the first call logs in and later calls reuse the token
        assert {"probe", "transcode"} <= {s["name"] for s in api.services()}
        assert list(api.jobs(limit=1)) == []
        assert logins(calls) == 1

        # When the gateway answers that the token expired (e.g. clocks apart), the client logs in once and goes on
        api._token, api._token_expires_at = stack.token(client_id, expires_in_s=-30), None
        assert list(api.jobs(limit=1)) == []
        assert [s for _, p, s in calls if p.startswith("/jobs")][-2:] == [401, 200] and logins(calls) == 2

        # And a token revoked by disable + enable (224) is renewed the same way
        for enabled in (False, True):
            changed = stack.request("PATCH", f"/admin/clients/{client_id}", sub="root", admin=True,
                                    json={"enabled": enabled})
            assert changed.status_code == 200, changed.text
        assert api.services() and logins(calls) == 3

    # A token is renewed shortly before it expires: with a margin as long as its life, before every call
    with Client(stack.url, client_id, secret, refresh_margin_s=stack.settings.jwt_expires_s) as api:
        calls = record(api)
        tokens = {api.token for _ in range(2)}
        assert len(tokens) == 2 and logins(calls) == 2

    # A ready token that expired, with no credentials to renew it: Unauthorized, code 222
    with pytest.raises(Unauthorized) as expired:
        Client(stack.url, token=stack.token("alice", expires_in_s=-30)).services()
    assert (expired.value.status, expired.value.code, expired.value.error) == (401, 222, "ExpiredToken")
    # Wrong credentials: Unauthorized, code 225, one retry-free answer
    with pytest.raises(Unauthorized) as wrong:
        Client(stack.url, client_id, "not-the-secret").services()
    assert wrong.value.code == 225 and "do not match" in wrong.value.description


@pytest.mark.e2e
def test_submit_wait_with_rising_progress_then_download(stack, media, tmp_path):
    client_id, secret = new_client(stack)
    with Client(stack.url, client_id, secret) as api:
        calls = record(api)
        # Given a 20 s 720p clip submitted for 360p, twice with one Idempotency-Key: one job
        key = str(uuid.uuid4())
        job = api.submit("transcode", f"file://{media}/medium.mp4", preset="mp4-360p", speed="medium",
                         idempotency_key=key, misc={"note": "sdk"})
        assert api.submit("transcode", f"file://{media}/medium.mp4", preset="mp4-360p", speed="medium",
                          idempotency_key=key, misc={"note": "sdk"}) == job

        # When the client waits on it with a progress callback
        resumed_from: list[str | None] = []
        api.session.hooks["response"].append(lambda r, *a, **k: resumed_from.append(
            r.request.headers.get("Last-Event-ID")) if r.request.path_url.endswith("/events") else None)
        seen: list[dict] = []
        final = job.wait(progress=seen.append, timeout=120)

        # Then it followed the event stream (resuming where each stream ended, SG_SSE_MAX_S=4)
        # and saw progress rise to 100 on SUCCESS
        assert final["status"] == "SUCCESS", final
        assert resumed_from and resumed_from[0] is None and all(resumed_from[1:]), resumed_from
        progress = [b["progress"] for b in seen]
        assert progress == sorted(progress) and progress[-1] == 100 and seen[-1] is final
        assert len({b["progress"] for b in seen if b["status"] == "PROGRESS"}) >= 2, progress

        # And its output downloads to a playable 360p file of the same length
        (path,) = job.download(output_dir=tmp_path / "out")
        assert path == tmp_path / "out" / "transcoded.mp4" and not list((tmp_path / "out").glob("*.part"))
        video, duration = video_of(path)
        assert (video["codec_name"], video["width"], video["height"]) == ("h264", 640, 360)
        assert abs(duration - 20.0) < 0.2
        assert api.status(job.uuid)["misc"] == {"note": "sdk"}

        # Polling is the fallback: the same wait without the event stream
        probe = api.submit("probe", f"file://{media}/short.mp4")
        before = len(calls)
        assert api.wait(probe.uuid, events=False, timeout=60, check=True)["result"]["service"] == "probe"
        assert not any("/events" in p for _, p, _ in calls[before:])


@pytest.mark.e2e
def test_cancel_ends_revoked_with_109(stack, media):
    client_id, secret = new_client(stack)
    with Client(stack.url, client_id, secret) as api:
        job = api.submit("transcode", f"file://{media}/medium.mp4", preset="webm-vp9", speed="slow")
        wait_for(lambda: job.status()["status"] == "PROGRESS", 60, "the encode to run")
        assert job.cancel()["uuid"] == job.uuid
        with pytest.raises(JobFailed) as ended:
            job.wait(timeout=30, check=True)
        assert (ended.value.job_status, ended.value.code, ended.value.error) == ("REVOKED", 109, "Terminated")
        assert ended.value.job["progress"] < 100
        with pytest.raises(Conflict) as again:
            job.cancel()
        assert (again.value.status, again.value.code) == (409, 210)


@pytest.mark.e2e
def test_error_answers_raise_typed_exceptions(stack, media, tmp_path):
    client_id, secret = new_client(stack, scopes=("probe", "transcode"), quotas={"max_jobs_per_day": 1})
    doc = f"file://{media}/short.mp4"
    with Client(stack.url, client_id, secret) as api:
        calls = record(api)
        with pytest.raises(NotFound) as unknown:
            api.status(UNKNOWN)
        assert (unknown.value.status, unknown.value.code, unknown.value.error) == (404, 203, "UnknownJob")
        assert unknown.value.description
        with pytest.raises(BadRequest) as bad:
            api.submit("transcode", doc, height="tall")
        assert (bad.value.status, bad.value.code) == (400, 204) and "height" in bad.value.description
        with pytest.raises(BadRequest) as bad_url:
            api.submit("probe", "ftp://example.org/x.mp4")
        assert bad_url.value.code == 207
        with pytest.raises(NotFound) as no_service:
            api.submit("nope", doc)
        assert no_service.value.code == 202
        with pytest.raises(Forbidden) as forbidden:
            api.submit("faces", doc)
        assert (forbidden.value.status, forbidden.value.code) == (403, 223)
        with pytest.raises(NotFound) as no_output:
            api.download(UNKNOWN, "x.mp4", tmp_path)
        assert no_output.value.code == 203

        # The daily quota of 1: the second job is refused with a Retry-After until midnight UTC
        api.submit("probe", doc)
        with pytest.raises(QuotaExceeded) as quota:
            api.submit("probe", doc)
        assert (quota.value.status, quota.value.code, quota.value.error) == (429, 401, "QuotaExceeded")
        assert 0 < quota.value.retry_after <= 86400
        assert [s for _, p, s in calls if p == "/probe/process"] == [400, 202, 429]     # a 429 is not retried


@pytest.mark.e2e
def test_jobs_iterates_across_pages(stack, media):
    client_id, secret = new_client(stack)
    with Client(stack.url, client_id, secret) as api:
        ids = [api.submit("probe", f"file://{media}/short.mp4").uuid for _ in range(3)]
        calls = record(api)
        listed = [j["uuid"] for j in api.jobs(page_size=2)]
        assert listed == list(reversed(ids))
        pages = [p for _, p, _ in calls if p.startswith("/jobs?")]
        assert len(pages) == 2 and "cursor=" in pages[1]
        assert [j["uuid"] for j in api.jobs(oldest_first=True, limit=2)] == ids[:2]
        assert list(api.jobs(service="transcode")) == []


@pytest.mark.e2e
def test_cli_submit_wait_status_cancel_jobs_services(stack, media, tmp_path):
    client_id, secret = new_client(stack)
    env = client_env(stack, client_id, secret, tmp_path)
    short = f"file://{media}/short.mp4"
    (tmp_path / "here").mkdir()

    # Given two submits with --wait running side by side: --json for scripts, and the human mode
    scripted = sg_start(env, "submit", "transcode", "--doc-url", short, "--param", "preset=mp4-360p",
                        "--param", "height=240", "--wait", "--json", "--output-dir", str(tmp_path / "out"))
    human = sg_start(env, "submit", "transcode", "--doc-url", short, "-p", "preset=mp4-360p", "--wait",
                     cwd=tmp_path / "here")
    # (and a gateway that cannot be reached: one line and exit 4, after the retries)
    unreachable = sg_start({**env, "SG_URL": f"http://127.0.0.1:{free_port()}"}, "services")

    # While they run: services with their parameters, and the error line of an unknown job
    services = sg(env, "services")
    assert "transcode" in services.stdout and "preset" in services.stdout and "mp4-720p" in services.stdout
    assert {s["name"] for s in json.loads(sg(env, "services", "--json").stdout)["services"]} >= {"probe", "transcode"}
    missing = sg(env, "status", UNKNOWN, ok=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "UnknownJob 203" in missing.stderr and missing.stdout == ""
    invalid = sg(env, "submit", "transcode", "--doc-url", short, "--param", "height=tall", "--json", ok=False)
    assert invalid.returncode == 1 and "204" in invalid.stderr and json.loads(invalid.stdout)["error"]["code"] == 204

    code, out, err = finish(unreachable)
    assert code == 4 and err.count("\n") == 1 and "cannot reach the gateway" in err and "ConnectionError" in err

    # Then the --json run printed the final status with the downloaded file, which is 240p
    code, out, err = finish(scripted)
    assert code == 0, err
    body = json.loads(out)
    assert body["status"] == "SUCCESS" and body["progress"] == 100
    (saved,) = body["downloaded"]
    assert saved["path"] == str(tmp_path / "out" / "transcoded.mp4")
    assert video_of(saved["path"])[0]["height"] == 240

    # And the human run drew a progress bar on stderr, printed the result and saved into the current dir
    code, out, err = finish(human)
    assert code == 0, err
    assert "100%|" in err and "transcode" in err
    human_id = out.split()[0]
    assert f"{human_id} SUCCESS" in out and '"outputs"' in out and "saved transcoded.mp4" in out
    assert video_of(tmp_path / "here" / "transcoded.mp4")[0]["height"] == 360

    # status, in both forms; the integer parameter went as an integer
    status = json.loads(sg(env, "status", body["uuid"], "--json").stdout)
    assert status["status"] == "SUCCESS" and (status["params"]["preset"], status["params"]["height"]) == (
        "mp4-360p", 240)
    assert "SUCCESS 100%" in sg(env, "status", human_id).stdout

    # jobs: the caller's own, through the API
    listed = json.loads(sg(env, "jobs", "--json").stdout)["jobs"]
    assert {j["uuid"] for j in listed} == {body["uuid"], human_id}
    assert len(json.loads(sg(env, "jobs", "list", "--limit", "1", "--json").stdout)["jobs"]) == 1
    assert human_id in sg(env, "jobs").stdout

    # cancel: a slow encode, cancelled from the command line, ends REVOKED with 109
    slow = sg(env, "submit", "transcode", "--doc-url", f"file://{media}/medium.mp4", "-p", "preset=webm-vp9",
              "-p", "speed=slow", "--no-download").stdout.strip()
    cancelled = sg(env, "cancel", slow)
    assert slow in cancelled.stdout
    waited = sg(env, "wait", slow, "--json", "--timeout", "30", ok=False)
    assert waited.returncode == 3
    final = json.loads(waited.stdout)
    assert final["status"] == "REVOKED" and final["result"]["code"] == 109 and final["downloaded"] == []
    again = sg(env, "cancel", slow, ok=False)
    assert again.returncode == 1 and "JobFinished 210" in again.stderr

    # The operator's `sg jobs failed` still reads the job store with the server settings
    failed = subprocess.run([str(BIN / "sg"), "jobs", "failed", "--json"], env=stack.env, capture_output=True,
                            text=True, timeout=60)
    assert failed.returncode == 0 and "jobs" in json.loads(failed.stdout), failed.stderr


@pytest.mark.e2e
def test_sg_submit_pipeline_wait_one_bar_to_100_and_each_steps_result(stack, media, tmp_path):
    """The issue's done-when: from a fresh shell, `sg submit <pipeline> --wait` runs three steps on a
    generated clip with one progress bar climbing to 100 and prints each step's result."""
    from tests.test_pipelines import define
    define(stack, "cli-three", {"steps": [
        {"name": "small", "service": "transcode", "params": {"preset": "mp4-360p", "speed": "medium"}, "weight": 4},
        {"name": "facts", "service": "probe"},                                    # reads small's transcoded.mp4
        {"name": "thumbs", "service": "thumbnails", "input": "small", "params": {"count": 2}}]})
    client_id, secret = new_client(stack)
    env = client_env(stack, client_id, secret, tmp_path)          # nothing but PATH, HOME and SG_URL/_ID/_SECRET
    (tmp_path / "here").mkdir()

    done = subprocess.run([str(BIN / "sg"), "submit", "cli-three", "--doc-url", f"file://{media}/medium.mp4", "--wait"],
                          env=env, cwd=tmp_path / "here", capture_output=True, timeout=300)
    # (bytes: text mode's universal newlines would turn tqdm's \r redraws into lines of their own)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, (stdout, stderr)

    # One bar (tqdm on stderr: \r redraws on one line), climbing through the steps to 100
    bars = [line for line in stderr.split("\n") if "%|" in line]
    assert len(bars) == 1, stderr
    percents = [int(p) for p in re.findall(r"(\d+)%\|", bars[0])]
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert any(0 < p < 100 for p in percents), percents                # drawn while it ran, not only at the end
    assert "small" in bars[0]                                           # the bar named the running step

    # Each step's result: the merged result as JSON, then one line per step
    lines = stdout.splitlines()
    job_id, status = lines[0].split()[:2]
    assert status == "SUCCESS"
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step "))
    result = json.loads("\n".join(lines[1:first_step]))
    assert [(s["name"], s["service"], s["status"]) for s in result["steps"]] == [
        ("small", "transcode", "SUCCESS"), ("facts", "probe", "SUCCESS"), ("thumbs", "thumbnails", "SUCCESS")]
    steps = {s["name"]: s["result"] for s in result["steps"]}
    assert [s["height"] for s in steps["facts"]["streams"] if s["type"] == "video"] == [360]   # probed the 360p file
    assert abs(steps["facts"]["duration"] - 20.0) < 0.2 and steps["thumbs"]["summary"]["count"] == 2
    assert lines[first_step:first_step + 3] == [
        "step small (transcode): SUCCESS, transcoded.mp4",
        "step facts (probe): SUCCESS, no outputs",
        f"step thumbs (thumbnails): SUCCESS, {', '.join(o['name'] for o in steps['thumbs']['outputs'])}"]
    # ... and the outputs downloaded into the current directory
    assert video_of(tmp_path / "here" / "transcoded.mp4")[0]["height"] == 360
    assert all((tmp_path / "here" / o["name"]).stat().st_size == o["size"] for o in steps["thumbs"]["outputs"])
    assert stack.request("GET", f"/jobs/{job_id}", sub="root", admin=True).json()["service"] == "cli-three"


def test_sg_submit_callback_progress_asks_the_gateway_for_progress_deliveries(tmp_path):
    """`sg submit --callback-progress` sends callback_progress=true with the callback_url (a recording gateway)."""
    import http.server
    import json
    import threading

    bodies: list[dict] = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            bodies.append({"path": self.path, **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            payload = json.dumps({"uuid": UNKNOWN}).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SG_URL": f"http://127.0.0.1:{server.server_port}",
               "SG_TOKEN": "a-token"}
        argv = [str(BIN / "sg"), "submit", "transcode", "--doc-url", "https://media.example/a.mp4", "--json",
                "--callback-url", "https://hooks.example/sg"]
        plain = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        opted = subprocess.run([*argv, "--callback-progress"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert plain.returncode == 0 and opted.returncode == 0, (plain.stderr, opted.stderr)
    assert [b["path"] for b in bodies] == ["/transcode/process"] * 2
    assert not bodies[0].get("callback_progress")
    assert bodies[1]["callback_progress"] is True and bodies[1]["callback_url"] == "https://hooks.example/sg"
