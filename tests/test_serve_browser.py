"""``serve`` without ``--token`` against a browser: CSRF from a page of another origin, and DNS rebinding.

The real ``edge-agent serve`` runs in a subprocess on the scripted local model, with ``cloud-only`` behind
model id 'edge-agent' and a loopback FaultServer as its cloud: any request that got through would start a
session and make a (priced) cloud call, both of which the tests can count. Attacks come from real headless
Chromium where that matters (a page served by a second loopback server; a rebound name), and from raw
headers otherwise. The openai SDK and llm (its OpenAI-compatible model type) must keep working.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from tests.conftest import run_cli
from tests.test_trace_page import CHROMIUM, _env, chromium, needs_chromium, stop

ASK = {"model": "edge-agent", "messages": [{"role": "user", "content": "What is 2+2?"}]}
EVIL = "rebind.evil.example"


def start_serve(tmp: Path, cloud_url: str, *extra: str):
    """``edge-agent serve`` on the scripted model (cloud-only by default): (process, base URL, log path)."""
    from edge_agent.cloud_local import free_port

    script = tmp / "script.json"
    script.write_text(json.dumps(["2 + 2 = 4, so \\boxed{4}."]))
    port, log = free_port(), tmp / "serve.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "serve", "--model", f"script:{script}",
                                 "--db", str(tmp / "serve.db"), "--port", str(port), "--policy", "cloud-only",
                                 "--max-steps", "2", "--cloud", "openai:m", "--cloud-base-url", cloud_url + "/v1",
                                 "--price-in", "1", "--price-out", "2", *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(tmp))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail("serve did not start: " + log.read_text(errors="replace")[-2000:])
        try:
            if call("GET", base + "/v1/models")[0] == 200:
                return proc, base, log
        except OSError:
            time.sleep(0.2)


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    """A raw request with exactly these headers (urllib keeps a given Host): (status, text of the body)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """serve with one session made by a plain JSON client; the cloud counts the calls it gets."""
    from tests.servers import FaultServer

    tmp = tmp_path_factory.mktemp("browser")
    cloud = FaultServer("script", replies=["2 + 2 = 4, so \\boxed{4}."])
    proc, base, log = start_serve(tmp, cloud.url)
    try:
        status, text = call("POST", base + "/v1/chat/completions", json.dumps({**ASK, "model": "local-only"}).encode(),
                            {"Content-Type": "application/json"})
        assert status == 200, text
        # one reader for the whole module: a reader in another process that closes can, after a trace page
        # dropped serve's POSIX locks (store.open_db opens the file to check it), delete the WAL under serve
        reader = sqlite3.connect(tmp / "serve.db", isolation_level=None)
        yield {"base": base, "reader": reader, "cloud": cloud, "log": log, "tmp": tmp,
               "sid": json.loads(text)["edge_agent"]["session_id"]}
        reader.close()
    finally:
        stop(proc)
        cloud.close()


def counts(served) -> tuple[int, int]:
    """(sessions in serve's database, calls the cloud received)."""
    return served["reader"].execute("SELECT COUNT(*) FROM sessions").fetchone()[0], len(served["cloud"].requests)


def refused(status: int, text: str, want_status: int, code: str) -> None:
    assert status == want_status, text
    error = json.loads(text)["error"]  # OpenAI's error shape
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


# -- a real browser ---------------------------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><head><title>cute cats</title></head><body><script>
const body = JSON.stringify(%(ask)s);
const targets = %(targets)s;  // serve by two of its own names: same-site (other port) and cross-site
Promise.allSettled(targets.map(t => fetch(t + "/v1/chat/completions",
    {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body})))
  .then(rs => fetch("/done?" + rs.map(r => r.status).join(",")));
</script></body></html>"""


class AttackSite:
    """A second loopback server on another port: the hostile page, and ``/done`` once its fetches settled."""

    def __init__(self, targets: list[str]) -> None:
        page = (ATTACK_PAGE % {"ask": json.dumps(ASK), "targets": json.dumps(targets)}).encode()
        self.done = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.startswith("/done"):
                    site.done.set()
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@needs_chromium
def test_a_page_of_another_origin_cannot_start_a_solve_from_chromium(served):
    """The CSRF of issue 26: fetch(POST, text/plain, no-cors) needs no preflight, so the browser sends it."""
    port = served["base"].rsplit(":", 1)[1]
    site = AttackSite([served["base"], f"http://localhost:{port}"])
    before = counts(served)
    log_start = served["log"].stat().st_size
    try:
        user_dir = served["tmp"] / "chromium"
        proc = subprocess.Popen([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                 f"--user-data-dir={user_dir}", "--virtual-time-budget=20000", "--dump-dom", site.url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not site.done.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
                pass
            assert site.done.is_set(), "the page's fetches did not settle"
        finally:
            stop(proc)
    finally:
        site.close()
    time.sleep(0.5)  # let a solve the requests may have started reach the database and the cloud
    assert counts(served) == before  # no session, no cloud call
    log = served["log"].read_bytes()[log_start:].decode(errors="replace")
    posts = [line for line in log.splitlines() if '"POST /v1/chat/completions HTTP/1.1"' in line]  # access log
    assert len(posts) == 2 and all(" 403 " in line for line in posts), log  # both were sent, and refused


@needs_chromium
def test_a_rebound_name_cannot_read_the_session_list_in_chromium(served):
    """DNS rebinding: the browser resolves the attacker's name to 127.0.0.1, so its page is same-origin."""
    port = served["base"].rsplit(":", 1)[1]
    proc = chromium(f"--host-resolver-rules=MAP {EVIL} 127.0.0.1", "--dump-dom", f"http://{EVIL}:{port}/")
    dom = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert "host_not_allowed" in dom and served["sid"] not in dom


# -- raw headers ------------------------------------------------------------------------------------------


def test_a_rebinding_host_is_refused_on_the_pages_and_the_api(served):
    base, port = served["base"], served["base"].rsplit(":", 1)[1]
    before = counts(served)
    for host in (f"{EVIL}:{port}", EVIL, f"127.0.0.1.{EVIL}:{port}", f"127.0.0.1:{port}@{EVIL}"):
        for path in ("/", f"/sessions/{served['sid']}", "/v1/models"):
            status, text = call("GET", base + path, headers={"Host": host})
            refused(status, text, 403, "host_not_allowed")
            assert served["sid"] not in text
        status, text = call("POST", base + "/v1/chat/completions", json.dumps(ASK).encode(),
                            {"Host": host, "Content-Type": "application/json"})
        refused(status, text, 403, "host_not_allowed")
    assert counts(served) == before
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):  # loopback names pass
        assert call("GET", base + "/", headers={"Host": host})[0] == 200, host


CROSS = [
    {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},  # the request of issue 26
    {"Origin": "http://evil.example"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # a page on another port of 127.0.0.1
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "null"},  # a sandboxed frame, a file:// page
]


@pytest.mark.parametrize("headers", CROSS, ids=lambda h: " ".join(f"{k}={v}" for k, v in h.items()))
def test_a_cross_origin_request_is_refused_before_any_work(served, headers):
    base = served["base"]
    before = counts(served)
    for content_type in ("text/plain", "application/json"):
        status, text = call("POST", base + "/v1/chat/completions", json.dumps(ASK).encode(),
                            {**headers, "Content-Type": content_type})
        refused(status, text, 403, "cross_origin_request")
    for path in ("/", f"/sessions/{served['sid']}"):  # the trace pages follow the same rule
        status, text = call("GET", base + path, headers=headers)
        refused(status, text, 403, "cross_origin_request")
        assert served["sid"] not in text
    assert counts(served) == before


def test_the_servers_own_pages_still_open_in_a_browser(served):
    base = served["base"]
    own = {"Origin": base, "Sec-Fetch-Site": "same-origin"}
    for headers in (own, {"Sec-Fetch-Site": "none"}):  # a link on its own page; a URL typed in
        status, text = call("GET", f"{base}/sessions/{served['sid']}", headers=headers)
        assert status == 200 and served["sid"] in text


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_a_post_body_that_is_not_json_is_415(served, content_type):
    import http.client

    before = counts(served)
    conn = http.client.HTTPConnection(served["base"].removeprefix("http://"), timeout=30)
    try:  # http.client sends only the headers given (urllib would add a form Content-Type)
        conn.request("POST", "/v1/chat/completions", json.dumps(ASK).encode(),
                     {"Content-Type": content_type} if content_type else {})
        resp = conn.getresponse()
        refused(resp.status, resp.read().decode(), 415, "unsupported_media_type")
    finally:
        conn.close()
    assert counts(served) == before


# -- clients that must keep working -------------------------------------------------------------------------


def test_the_openai_sdk_still_works(served):
    client = openai.OpenAI(base_url=served["base"] + "/v1", api_key="unused", max_retries=0, timeout=60)
    sessions, calls = counts(served)
    assert "edge-agent" in [m.id for m in client.models.list()]
    answer = client.chat.completions.create(**ASK)  # cloud-only behind 'edge-agent': a cloud call
    assert "\\boxed{4}" in answer.choices[0].message.content
    with client.chat.completions.with_streaming_response.create(**{**ASK, "model": "local-only"},
                                                                stream=True) as resp:
        chunks = list(resp.parse())
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    now_sessions, now_calls = counts(served)
    assert now_sessions == sessions + 2 and now_calls > calls  # the counters the refusals are checked with work


def test_llm_through_its_openai_compatible_models_still_works(served, tmp_path):
    """edge-agent's llm plugin runs the agent in-process (no HTTP); llm reaches ``serve`` this way."""
    user = tmp_path / "llm"
    user.mkdir()
    (user / "extra-openai-models.yaml").write_text(
        f"- model_id: edge-serve\n  model_name: edge-agent\n  api_base: {served['base']}/v1\n"
        "  api_key_name: edge\n")
    env = {**os.environ, "LLM_USER_PATH": str(user), "LLM_LOAD_PLUGINS": ""}
    for name in ("OPENAI_BASE_URL", "LLM_MODEL", "OPENAI_API_KEY"):
        env.pop(name, None)
    (user / "keys.json").write_text(json.dumps({"edge": "unused"}))
    before = counts(served)[0]
    proc = subprocess.run([sys.executable, "-m", "llm", "-m", "edge-serve", ASK["messages"][0]["content"]],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "\\boxed{4}" in proc.stdout and counts(served)[0] == before + 1


# -- the operator's names -------------------------------------------------------------------------------------


def test_allow_host_adds_a_name_and_only_that_name(tmp_path):
    from tests.servers import FaultServer

    cloud = FaultServer("script", replies=["unused"])
    proc, base, log = start_serve(tmp_path, cloud.url, "--allow-host", "Box.Example", "--allow-host", "10.0.0.7")
    try:
        port = base.rsplit(":", 1)[1]
        for host in (f"box.example:{port}", "box.example", f"10.0.0.7:{port}"):
            assert call("GET", base + "/v1/models", headers={"Host": host})[0] == 200, host
        for host in (f"evil.box.example:{port}", f"box.example.evil:{port}", f"10.0.0.8:{port}"):
            refused(*call("GET", base + "/v1/models", headers={"Host": host}), 403, "host_not_allowed")
        assert "also answers to Host box.example, 10.0.0.7" in log.read_text()
    finally:
        stop(proc)
        cloud.close()


@pytest.mark.parametrize("name", ["http://box.example", "box.example:8088", "*", "box example"])
def test_a_bad_allow_host_fails_in_one_line(name):
    proc = run_cli("serve", "--allow-host", name, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("Error: ") and "--allow-host" in err and "no port" in err
    assert len(err.strip().splitlines()) == 1


def test_a_wildcard_bind_also_answers_to_ip_literals_but_never_to_a_dns_name():
    from edge_agent.serve_guard import HostRule, host_name

    wildcard, loopback = HostRule.bound_to("0.0.0.0"), HostRule.bound_to("127.0.0.1")
    assert wildcard.allows(host_name("192.168.1.5:8088")) and wildcard.allows(host_name("[fe80::1]:8088"))
    assert not wildcard.allows(host_name(f"{EVIL}:8088")) and not loopback.allows(host_name("192.168.1.5:8088"))
    assert HostRule.bound_to("192.168.1.5").allows("192.168.1.5")
