"""The app page of ``edge-agent serve`` (GET /app), used as a person would: real headless Chromium, driven over
the DevTools protocol (tests/cdp.py) to type, press Enter and Escape, and click.

The real ``edge-agent serve`` runs in a subprocess on the scripted local model (``--model script:FILE``: steps
with delays, so they arrive one by one) and a scripted loopback cloud (FaultServer). The browser runs with
the network unavailable (a dead proxy for everything but loopback), so the page works offline or not at all.
What the page must show is read from the database and from ``edge-agent show ID --json``, not from the page.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cdp import CdpError
from tests.conftest import ROBE, run_cli
from tests.test_trace_page import CHROMIUM, _env, stop

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium")

POLICY = "hybrid(plan=always,loop=False,offload=False,lam=1)"  # the cloud plans; a shaky step is rewritten
SURE = {"min_top1": 0.99, "low_top1_share": 0.0}
SHAKY = {"min_top1": 0.05, "low_top1_share": 0.4}
SLOW = 0.4  # seconds per local step: the steps arrive one by one
COUNT = "Count to eight, one number per step."
PWN = ('<script>window.__pwned = "script"</script> <img src=x onerror="window.__pwned = \'img\'"> </pre><b>bold</b> '
       "What is 1 + 1?")
PWN_STEP = '</pre><img src=x onerror="window.__pwned = \'step\'"><script>window.__pwned = 1</script> 1 + 1 = 2, so \\boxed{2}.'
PWN_CLOUD = 'm<img src=x onerror="window.__pwned=\'cloud\'"></pre><script>window.__pwned=3</script>'
SCRIPT = {
    "steps": [
        "(never written: the cloud's plan takes step 0)",
        {"text": "Blue fiber: 2 bolts.", "signals": SURE, "delay_s": SLOW},
        {"text": "White fiber is half of that: 2 / 2 = 7 bolts.", "signals": SHAKY, "delay_s": SLOW},
        {"text": "In total 2 + 1 = 3, so \\boxed{3}.", "signals": SURE, "delay_s": SLOW},
    ],
    "when": [
        {"match": COUNT, "steps": [{"text": f"Number {n}.", "signals": SURE, "delay_s": 0.5} for n in range(1, 8)]
         + [{"text": "Eight, so \\boxed{8}.", "signals": SURE, "delay_s": 0.5}]},
        {"match": "What is 1 + 1?", "steps": ["(the cloud's plan)", {"text": PWN_STEP, "signals": SURE}]},
    ],
}
PLAN = "1. Find the white fiber.\n2. Add both colours."
REWRITE = "White fiber is half of 2: 2 / 2 = 1 bolt."
HOSTILE_PLAN = "Plan: " + PWN_STEP.replace("\\boxed{2}", "two")
LOCAL_RGB, CLOUD_RGB = "rgb(31, 143, 191)", "rgb(162, 54, 154)"
TOKEN = "app-page-token"
SERVER_CAP = 0.05
OFFLINE = ["--proxy-server=http://127.0.0.1:9",  # loopback bypasses a proxy; everything else meets a dead one
           "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # no network but this machine


def start_serve(tmp: Path, name: str, cloud_url: str, *extra: str, env: dict[str, str] | None = None):
    """``edge-agent serve`` on the scripted model and the scripted cloud: (process, base URL, log path)."""
    from edge_agent.cloud_local import free_port

    script = tmp / "script.json"
    script.write_text(json.dumps(SCRIPT))
    port, log = free_port(), tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "serve", "--model", f"script:{script}",
                                 "--db", str(tmp / f"{name}.db"), "--port", str(port), "--cloud", "openai:m",
                                 "--cloud-base-url", cloud_url + "/v1", "--price-in", "1", "--price-out", "2",
                                 *extra], stdout=out, stderr=subprocess.STDOUT, env=env or _env(tmp))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail("serve did not start: " + log.read_text(errors="replace")[-2000:])
        try:
            if get(base + "/app")[0] == 200:
                return proc, base, log
        except OSError:
            time.sleep(0.1)


def get(url: str, headers: dict[str, str] | None = None, body: bytes | None = None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Served:
    """A serve, its cloud, one browser tab on its app page, and one reader of its database (kept open: see
    tests/test_serve_browser.py on why a reader that closes may harm serve's WAL)."""

    def __init__(self, tmp: Path, name: str, cloud_replies: list[str], *extra: str) -> None:
        from tests.cdp import Browser
        from tests.servers import FaultServer

        self.tmp, self.name = tmp, name
        self.cloud = FaultServer("script", replies=cloud_replies)
        self.proc, self.base, self.log = start_serve(tmp, name, self.cloud.url, *extra)
        self.db = tmp / f"{name}.db"
        self.reader = sqlite3.connect(self.db, isolation_level=None)
        self.reader.row_factory = sqlite3.Row
        self.browser = Browser(*OFFLINE)
        self.page = self.browser.page()

    def rows(self, sql: str, args=()) -> list[dict]:
        return [dict(r) for r in self.reader.execute(sql, args).fetchall()]

    def open(self) -> None:
        self.page.goto(self.base + "/app")
        self.page.wait("document.querySelectorAll('#policy option').length > 1 || !document.getElementById('auth').hidden")

    def close(self) -> None:
        self.browser.close()
        self.reader.close()
        stop(self.proc)
        self.cloud.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("app"), "app", [PLAN, REWRITE], "--policy", POLICY,
                    "--max-cost", str(SERVER_CAP), "--max-steps", "10")
    yield served
    served.close()


ARRIVALS = """(() => {
  window.__arrivals = [];
  new MutationObserver(() => {
    for (const li of document.querySelectorAll("#conversation li.step:not(.superseded)")) {
      const idx = Number(li.dataset.idx);
      if (window.__arrivals.some((a) => a.idx === idx)) continue;
      const status = li.closest("section.turn").querySelector(".status");
      window.__arrivals.push({idx, author: li.dataset.author, color: getComputedStyle(li).borderLeftColor,
                              t: performance.now(), running: !!status && status.textContent === "running…"});
    }
  }).observe(document.getElementById("conversation"), {childList: true, subtree: true});
  return true;
})()"""

TURN_STATE = """(() => [...document.querySelectorAll("section.turn")].map((s) => ({
  sid: s.dataset.session, status: (s.querySelector(".status") || {}).textContent,
  answer: (s.querySelector(".answer") || {}).textContent,
  steps: [...s.querySelectorAll(":scope > ol.steps > li.step")].map((li) => [Number(li.dataset.idx), li.dataset.author,
                                                                   li.querySelector("pre.text").textContent]),
  usage: Object.fromEntries([...s.querySelectorAll("[data-usage]")].map((u) => [u.dataset.usage,
                                                                               [u.dataset.value, u.textContent]])),
  badges: [...s.querySelectorAll(".badge")].map((b) => ({trigger: b.dataset.trigger, score: b.dataset.score,
                                                         threshold: b.dataset.threshold, text: b.textContent,
                                                         refused: b.classList.contains("refused")})),
  folded: [...s.querySelectorAll("li.rollback")].map((r) => [Number(r.dataset.to), !!r.querySelector("details[open]"),
                                                            [...r.querySelectorAll("li.step")].map((li) => Number(li.dataset.idx))]),
  link: (s.querySelector("a.trace") || {}).href,
  resume: !!s.querySelector(".result button.resume"),
})))()"""


def turns(page) -> list[dict]:
    return page.eval(TURN_STATE)


def ask(page, problem: str, *, policy: str | None = None, cap: str = "") -> None:
    """Type the problem and press Enter, by keyboard alone (the policy and cap set as a form would be)."""
    page.eval(f"document.getElementById('cap').value = {json.dumps(cap)}")
    if policy is not None:
        page.eval(f"document.getElementById('policy').value = {json.dumps(policy)}")
    page.eval("document.getElementById('problem').focus()")
    page.type(problem)
    page.key("Enter")


def done(page, n: int, timeout: float = 60) -> dict:
    """Wait until turn ``n`` (0-based) has finished and the page shows its stored result."""
    page.wait(f"(() => {{ const s = document.querySelectorAll('section.turn')[{n}]; if (!s) return false;"
              " const st = s.querySelector('.status'); return st && st.textContent !== 'running…' &&"
              " document.getElementById('send').disabled === false && !!s.querySelector('[data-usage]'); })()",
              timeout)
    return turns(page)[n]


def show_json(served: Served, sid: str) -> dict:
    proc = run_cli("show", sid, "--json", "--db", str(served.db), env=_env(served.tmp))
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def only_own_origin(served: Served) -> None:
    """Every request the tab made, and every resource it loaded, went to the server's own origin."""
    urls = served.page.requests()
    assert urls and all(u.startswith(served.base + "/") for u in urls), urls
    loaded = served.page.eval("performance.getEntriesByType('resource').map((e) => e.name)")
    assert all(u.startswith(served.base + "/") for u in loaded), loaded


# -- the tests ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def solved(app):
    """ROBE typed into a fresh page and sent with Enter: the turn as shown, the order the steps arrived in, and
    a screenshot taken mid-solve (``EDGE_AGENT_APP_SHOT=docs/app_page.png`` makes the picture in the docs)."""
    app.open()
    app.page.eval(ARRIVALS)
    ask(app.page, ROBE)
    app.page.wait("window.__arrivals.length >= 2")
    try:  # the picture is better with the trigger badge of the cloud's rewrite on it (if it is there in time)
        app.page.wait("document.querySelector('.badge[data-threshold]') && document.getElementById('stop').disabled"
                      " === false", timeout=1.5)
    except CdpError:
        pass
    shot = Path(os.environ.get("EDGE_AGENT_APP_SHOT") or app.tmp / "mid_solve.png")
    app.page.screenshot(shot)
    turn = done(app.page, 0)
    return {"turn": turn, "arrivals": app.page.eval("window.__arrivals"), "shot": shot}


def test_steps_arrive_one_by_one_coloured_by_author_and_the_result_matches_show(app, solved):
    turn, shot = solved["turn"], solved["shot"]
    sid = turn["sid"]
    steps = app.rows("SELECT idx, author, text FROM steps WHERE session_id = ? AND superseded_by IS NULL "
                     "ORDER BY idx", [sid])
    assert [s["author"] for s in steps] == ["cloud", "local", "cloud", "local"]  # plan, step, rewrite, answer
    arrivals = solved["arrivals"]
    assert [a["idx"] for a in arrivals] == [s["idx"] for s in steps]  # in order, each once
    assert [a["author"] for a in arrivals] == [s["author"] for s in steps]
    assert [a["color"] for a in arrivals] == [CLOUD_RGB if s["author"] == "cloud" else LOCAL_RGB for s in steps]
    assert arrivals[0]["running"] and arrivals[1]["running"], arrivals  # shown before the solve finished
    assert arrivals[-1]["t"] - arrivals[0]["t"] > SLOW, arrivals  # one by one, not all at the end
    assert turn["steps"] == [[s["idx"], s["author"], s["text"]] for s in steps]

    report = show_json(app, sid)
    assert turn["status"] == report["status"] == "done" and turn["answer"] == report["answer"] == "3"
    u = report["usage"]
    for key in ("local_steps", "cloud_steps", "local_tokens", "wall_s"):
        assert float(turn["usage"][key][0]) == u[key], key
    assert turn["usage"]["cloud_tokens"][0] == f"{u['cloud_input_tokens']}/{u['cloud_output_tokens']}"
    assert turn["usage"]["cost_usd"][1] == f"cost ${u['cost_usd']:.6f}" and u["cost_usd"] > 0
    assert turn["link"] == f"{app.base}/sessions/{sid}"
    scored = [e for e in report["events"] if e["score"] is not None and e["threshold"] is not None]
    assert scored, "the solve fired no scored trigger: the badge check would be empty"
    for e in scored:  # each badge: its score against its threshold
        assert any(b["trigger"] == e["trigger"] and float(b["score"]) == e["score"]
                   and float(b["threshold"]) == e["threshold"] and " vs threshold " in b["text"]
                   for b in turn["badges"]), e
    spent = app.page.eval("Number(document.getElementById('spend-today').dataset.spent)")
    cost = json.loads(run_cli("cost", "--json", "--db", str(app.db), env=_env(app.tmp)).stdout)
    assert spent == pytest.approx(cost["today_usd"]) and spent == pytest.approx(u["cost_usd"])
    from matplotlib.image import imread

    pixels = (imread(shot)[:, :, :3] * 255).round()
    share = lambda rgb: float(((abs(pixels - rgb)).max(axis=2) <= 8).mean())  # noqa: E731
    assert share((0x1F, 0x8F, 0xBF)) > 0.0003 and share((0xA2, 0x36, 0x9A)) > 0.0003  # both authors drawn


def test_roll_back_to_a_step_and_continue_folds_the_old_steps(app, solved):
    sid = solved["turn"]["sid"]
    app.page.click(f'section.turn[data-session="{sid}"] li.step[data-idx="3"] button.back')
    app.page.wait("document.querySelector('section.turn li.rollback') !== null")
    turn = done(app.page, 0)
    rollbacks = app.rows("SELECT to_idx FROM rollbacks WHERE session_id = ?", [sid])
    assert [r["to_idx"] for r in rollbacks] == [3]
    steps = app.rows("SELECT idx, author, text FROM steps WHERE session_id = ? AND superseded_by IS NULL "
                     "ORDER BY idx", [sid])
    assert turn["steps"] == [[s["idx"], s["author"], s["text"]] for s in steps] and turn["status"] == "done"
    assert turn["folded"] == [[3, False, [3]]]  # the superseded step, folded (closed) under its rollback
    assert len(app.rows("SELECT id FROM sessions WHERE id = ?", [sid])) == 1


def test_a_follow_up_is_a_turn_of_the_same_conversation(app, solved):
    ask(app.page, "And how many bolts for two robes?", policy="local-only")
    turn = done(app.page, 1)
    first = app.rows("SELECT id, problem, settings FROM sessions WHERE id = ?", [solved["turn"]["sid"]])[0]
    second = app.rows("SELECT id, problem, settings FROM sessions WHERE id = ?", [turn["sid"]])[0]
    a, b = json.loads(first["settings"]), json.loads(second["settings"])
    assert a["conversation_id"] == b["conversation_id"] and (a["turn"], b["turn"]) == (0, 1)
    assert "Earlier in this conversation:" in second["problem"] and "The answer is 3." in second["problem"]
    assert second["problem"].endswith("And how many bolts for two robes?")


def test_stop_keeps_the_steps_and_resume_finishes_the_same_session(app):
    page = app.page
    app.open()
    ask(page, COUNT, policy="local-only")
    page.wait("document.querySelectorAll('section.turn li.step').length >= 2")
    page.key("Escape")  # stop, by keyboard
    page.wait("(() => { const b = document.querySelector('section.turn .result button.resume');"
              " return b && !b.disabled; })()")
    time.sleep(1.2)  # the page looks again a second after a stop
    turn = turns(page)[0]
    sid = turn["sid"]
    session = app.rows("SELECT status FROM sessions WHERE id = ?", [sid])[0]
    steps = app.rows("SELECT idx, author, text FROM steps WHERE session_id = ? ORDER BY idx", [sid])
    assert session["status"] == "running" and turn["status"] == "stopped" and turn["resume"]
    assert 2 <= len(steps) < 8 and turn["steps"] == [[s["idx"], s["author"], s["text"]] for s in steps]
    app.page.click("section.turn .result button.resume")
    page.wait("document.querySelector('section.turn .status').textContent === 'running…'")
    turn = done(page, 0)
    assert turn["status"] == "done" and turn["answer"] == "8" and len(turn["steps"]) == 8
    assert [r["id"] for r in app.rows("SELECT id FROM sessions WHERE problem = ?", [COUNT])] == [sid]  # one session
    assert [[s["idx"], s["author"], s["text"]] for s in app.rows(
        "SELECT idx, author, text FROM steps WHERE session_id = ? ORDER BY idx", [sid])] == turn["steps"]


def test_a_cap_above_the_servers_is_refused_and_one_the_cloud_cannot_pay_shows_refused(app):
    page = app.page
    app.open()
    sessions = len(app.rows("SELECT id FROM sessions"))
    ask(page, ROBE, cap=str(SERVER_CAP * 10))
    message = page.wait("(() => { const n = document.getElementById('notice'); return !n.hidden && n.textContent; })()")
    assert "above this server's cap" in message and "\n" not in message
    assert len(app.rows("SELECT id FROM sessions")) == sessions and not turns(page)  # nothing started
    calls = len(app.cloud.requests)
    ask(page, "A robe, again: how many bolts in total?", cap="0.000001")
    turn = done(page, 0)
    sid = turn["sid"]
    refused = [b for b in turn["badges"] if b["refused"]]
    assert refused and refused[0]["trigger"] == "budget_denied" and "refused" in refused[0]["text"]
    assert len(app.cloud.requests) == calls  # nothing was sent ...
    spent = app.rows("SELECT COALESCE(SUM(cost_nusd), 0) AS n FROM cloud_calls WHERE session_id = ?", [sid])[0]["n"]
    assert spent == 0 and turn["usage"]["cost_usd"][1] == "cost $0.000000"  # ... and nothing spent
    assert json.loads(app.rows("SELECT settings FROM sessions WHERE id = ?", [sid])[0]["settings"])["max_cost"] == 1e-06


def test_the_page_made_no_request_to_another_origin(app):
    only_own_origin(app)
    assert app.page.eval("window.__pwned") is None


def test_a_page_of_another_origin_cannot_use_the_apps_endpoints(app, tmp_path):
    """As tests/test_serve_browser.py: a page on another loopback port tries every way in; all are refused."""
    sid = app.rows("SELECT id FROM sessions WHERE problem = ?", [COUNT])[0]["id"]
    app.rows("UPDATE sessions SET status = 'running' WHERE id = ?", [sid])  # resumable again, if a request got in
    site = ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    import threading

    threading.Thread(target=site.serve_forever, daemon=True).start()
    before = (len(app.rows("SELECT id FROM steps")), len(app.cloud.requests), len(app.rows("SELECT id FROM sessions")))
    log_start = app.log.stat().st_size
    tab = app.browser.page()
    try:
        tab.goto(f"http://127.0.0.1:{site.server_address[1]}/")
        targets = [f"/app/api/sessions/{sid}/resume", f"/app/api/sessions/{sid}/rollback", "/v1/chat/completions"]
        body = json.dumps({"to": 0, "model": "local-only", "messages": [{"role": "user", "content": "hi"}]})
        script = f"""Promise.allSettled({json.dumps(targets)}.flatMap((p) => [
            fetch({json.dumps(app.base)} + p, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
                                               body: {json.dumps(body)}}}),
            fetch({json.dumps(app.base)} + p, {{method: "POST", headers: {{"Content-Type": "application/json"}},
                                               body: {json.dumps(body)}}}),
            fetch({json.dumps(app.base)} + "/app/api/state")])).then((rs) => rs.map((r) => r.status))"""
        assert tab.eval(script) == ["fulfilled", "rejected", "rejected"] * 3  # opaque answers, or CORS-blocked
        time.sleep(0.5)
    finally:
        site.shutdown()
        site.server_close()
    after = (len(app.rows("SELECT id FROM steps")), len(app.cloud.requests), len(app.rows("SELECT id FROM sessions")))
    assert after == before  # no step, no cloud call, no session
    log = app.log.read_bytes()[log_start:].decode(errors="replace")
    posts = [line for line in log.splitlines() if '"POST /' in line]
    assert posts and all(" 403 " in line or " 415 " in line for line in posts), log


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        page = b"<!doctype html><title>another origin</title>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)


def test_the_app_launcher_opens_a_running_serve(app):
    proc = run_cli("app", "--port", app.base.rsplit(":", 1)[1], env={**_env(app.tmp), "BROWSER": "false"},
                   timeout=60)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"{app.base}/app (a serve already runs there)" in out
    assert f"could not open a browser: open {app.base}/app yourself" in out


# -- hostile text, and the token ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A serve whose cloud has a hostile model name and writes hostile text, behind a token."""
    tmp = tmp_path_factory.mktemp("hostile")
    served = Served(tmp, "hostile", [HOSTILE_PLAN], "--policy", POLICY,
                    "--token", TOKEN)
    yield served
    served.close()


def test_the_page_asks_for_the_token_once_and_keeps_it_in_the_tab(hostile):
    page = hostile.page
    hostile.open()
    assert page.eval("!document.getElementById('auth').hidden")  # asked
    assert get(hostile.base + "/app/api/state")[0] == 401
    page.eval("document.getElementById('token').focus()")
    page.type(TOKEN)
    page.key("Enter")
    page.wait("document.querySelectorAll('#policy option').length > 1")
    assert page.eval("sessionStorage.getItem('edge-agent-token')") == TOKEN
    assert page.eval("document.cookie") == ""
    page.goto(hostile.base + "/app")  # the same tab again: not asked twice
    page.wait("document.querySelectorAll('#policy option').length > 1")
    assert page.eval("document.getElementById('auth').hidden")


def test_hostile_problem_step_and_cloud_text_show_as_text_and_run_nothing(hostile):
    page = hostile.page
    ask(page, PWN)
    turn = done(page, 0)
    assert page.eval("window.__pwned") is None  # no script ran: not the problem's, the step's or the cloud's
    assert page.eval("document.querySelectorAll('script').length") == 1  # app.js alone
    assert page.eval("document.querySelectorAll('img').length") == 0
    assert page.eval("[...document.querySelectorAll('b')].filter((b) => b.textContent === 'bold').length") == 0
    assert page.eval("document.querySelector('section.turn pre.problem').textContent") == PWN
    steps = hostile.rows("SELECT idx, author, text FROM steps WHERE session_id = ? ORDER BY idx", [turn["sid"]])
    assert turn["steps"] == [[s["idx"], s["author"], s["text"]] for s in steps]
    assert [s[1:] for s in turn["steps"]] == [["cloud", "Plan:\n" + HOSTILE_PLAN], ["local", PWN_STEP]]
    only_own_origin(hostile)


def test_a_hostile_cloud_model_name_shows_as_text(tmp_path):
    """The cloud's name comes from the operator's flags, but the page treats it as it treats any text."""
    served = Served(tmp_path, "named", ["unused"], "--policy", "local-only", "--cloud", f"openai:{PWN_CLOUD}")
    try:
        served.open()
        shown = served.page.wait("document.getElementById('cloud-state').textContent.includes('reachable') &&"
                                 " document.getElementById('cloud-state').textContent")
        assert f"cloud openai:{PWN_CLOUD}: reachable" == shown
        assert served.page.eval("window.__pwned") is None
        assert served.page.eval("document.querySelectorAll('img').length") == 0
    finally:
        served.close()


# -- the command line -----------------------------------------------------------------------------------------


def launch(tmp: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """Run a launcher (``serve --open``, ``app``) with a browser command that fails: (process, the URL it printed)."""
    import re

    script = tmp / "script.json"
    script.write_text(json.dumps(["\\boxed{1}"]))
    log = tmp / "launch.log"
    env = {**_env(tmp), "BROWSER": "false"}
    env.pop("DISPLAY", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", *args, "--model", f"script:{script}",
                                 "--db", str(tmp / "x.db")], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while not (m := re.search(r"could not open a browser: open (\S+) yourself", log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(log.read_text(errors="replace"))
        time.sleep(0.1)
    return proc, m[1]


def test_serve_open_prints_the_url_when_no_browser_opens(tmp_path):
    from edge_agent.cloud_local import free_port

    port = free_port()
    proc, url = launch(tmp_path, "serve", "--open", "--port", str(port))
    try:
        assert url == f"http://127.0.0.1:{port}/app"
        assert get(url)[0] == 200  # it was listening when it said so
    finally:
        stop(proc)


def test_app_starts_a_serve_on_a_free_port_when_another_program_has_its_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, url = launch(tmp_path, "app", "--port", str(port))
        try:
            assert url.startswith("http://127.0.0.1:") and url.endswith("/app") and f":{port}/" not in url
            status, page = get(url)
            assert status == 200 and 'content="edge-agent app"' in page
        finally:
            stop(proc)


@pytest.mark.parametrize("args, words", [
    (["app", "--port", "0"], "--port"),
    (["app", "--port", "http"], "--port"),
    (["serve", "--port", "70000"], "--port"),
    (["app", "--max-cost", "abc"], "--max-cost"),
    (["serve", "--open", "--max-cost", "-1", "--port", "FREE"], "--max-cost"),
])
def test_bad_launcher_input_is_one_line_and_exit_2(args, words, tmp_path):
    from edge_agent.cloud_local import free_port

    args = [str(free_port()) if a == "FREE" else a for a in args]
    proc = run_cli(*args, "--db", str(tmp_path / "x.db"), env=_env(tmp_path), timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("Error: ") and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.db").exists()


def test_help_of_the_new_command_and_flag():
    app_help = run_cli("app", "--help", timeout=60).stdout.decode()
    assert "Open the agent in the browser" in app_help and "--port" in app_help and "--max-cost" in app_help
    assert "--open" in run_cli("serve", "--help", timeout=60).stdout.decode()


def test_the_page_files_ship_with_the_package():
    """pyproject's package-data names every file of the page, so a wheel (not only a checkout) serves it."""
    import fnmatch

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["edge_agent"]
    files = [p.relative_to(root / "edge_agent").as_posix() for p in (root / "edge_agent" / "app").iterdir()]
    assert {"app/index.html", "app/app.js", "app/app.css"} <= set(files)
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), files


# -- the endpoints, by raw requests ---------------------------------------------------------------------------


def post(served: Served, path: str, body: object, token: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    return get(served.base + path, headers, json.dumps(body).encode())


ASK = {"model": "local-only", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


@pytest.mark.parametrize("extra, param", [
    ({"max_cost": "0.01"}, "max_cost"), ({"max_cost": -1}, "max_cost"), ({"max_cost": True}, "max_cost"),
    ({"max_cost": SERVER_CAP * 2}, "max_cost"), ({"conversation_id": "../x"}, "conversation_id"),
    ({"conversation_id": 7}, "conversation_id"),
])
def test_a_bad_cap_or_conversation_is_a_400_and_starts_nothing(app, extra, param):
    sessions = len(app.rows("SELECT id FROM sessions"))
    status, text = post(app, "/v1/chat/completions", {**ASK, **extra})
    assert status == 400 and json.loads(text)["error"]["param"] == param, text
    assert len(app.rows("SELECT id FROM sessions")) == sessions


def test_refused_requests_leave_the_model_free(app):
    """Every refusal above came before the request took its place in line: the line is empty again."""
    for _ in range(6):  # more than --queue (4) + 1
        assert post(app, "/v1/chat/completions", {**ASK, "max_cost": -1})[0] == 400
    status, text = post(app, "/v1/chat/completions", ASK)
    assert status == 200 and json.loads(text)["edge_agent"]["status"] == "done", text


def test_resume_and_rollback_refuse_what_they_cannot_do(app):
    sid = app.rows("SELECT id FROM sessions WHERE status = 'done' ORDER BY created_at LIMIT 1")[0]["id"]
    steps = len(app.rows("SELECT id FROM steps"))
    status, text = post(app, f"/app/api/sessions/{sid}/resume", {})
    assert status == 400 and "finished" in json.loads(text)["error"]["message"], text
    for body, param in (({"to": -1}, "to"), ({"to": "1"}, "to"), ({}, "to"), ({"to": 0, "temperature": 9}, "temperature")):
        status, text = post(app, f"/app/api/sessions/{sid}/rollback", body)
        assert status == 400 and json.loads(text)["error"]["param"] == param, text
    status, text = post(app, f"/app/api/sessions/{sid}/rollback", {"to": 99})
    assert status == 400 and "step" in json.loads(text)["error"]["message"], text
    assert get(app.base + "/app/api/sessions/01NOSUCHSESSION")[0] == 404
    assert post(app, "/app/api/sessions/01NOSUCHSESSION/resume", {})[0] == 400
    assert get(app.base + "/app/nothing.js")[0] == 404
    assert len(app.rows("SELECT id FROM steps")) == steps and not app.rows("SELECT * FROM rollbacks WHERE to_idx != 3")


def test_the_state_is_the_ledger_and_the_breaker(app):
    state = json.loads(get(app.base + "/app/api/state")[1])
    cost = json.loads(run_cli("cost", "--json", "--db", str(app.db), env=_env(app.tmp)).stdout)
    assert state["spend"]["today_usd"] == cost["today_usd"] and state["spend"]["month_usd"] == cost["month_usd"]
    assert state["spend"]["caps_usd"] == cost["caps_usd"]
    assert state["max_cost"] == SERVER_CAP and state["offline"] is False
    assert state["cloud"]["name"] == "openai:m" and state["cloud"]["breaker"] == "closed"


def test_the_apps_endpoints_need_the_token(hostile):
    sid = "01NOSUCHSESSION"
    for status in (get(hostile.base + "/app/api/state")[0], get(hostile.base + f"/app/api/sessions/{sid}")[0],
                   post(hostile, f"/app/api/sessions/{sid}/resume", {})[0],
                   post(hostile, f"/app/api/sessions/{sid}/rollback", {"to": 0})[0]):
        assert status == 401
    assert get(hostile.base + "/app/api/state", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    status, page = get(hostile.base + "/app")  # the page itself holds no data: it loads, then asks
    assert status == 200 and 'content="edge-agent app"' in page


def test_the_page_works_on_the_embedded_model_with_no_cloud(tmp_path):
    """No cloud, no network, the real embedded model (smollm2-135m): the page solves and says it is offline."""
    from edge_agent.cloud_local import free_port
    from tests.cdp import Browser

    flags = ["--model", "smollm2-135m", "--max-steps", "2", "--max-step-tokens", "24", "--n-ctx", "1024"]

    port, log, db = free_port(), tmp_path / "embedded.log", tmp_path / "embedded.db"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "serve", *flags, "--db", str(db),
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=_env(tmp_path))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            try:
                if get(base + "/app")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        with Browser(*OFFLINE) as browser:
            page = browser.page()
            page.goto(base + "/app")
            shown = page.wait("document.getElementById('cloud-state').textContent.startsWith('offline') &&"
                              " document.getElementById('cloud-state').textContent")
            assert shown == "offline: no cloud configured, every step is local"
            ask(page, "What is 17 * 23?")
            turn = done(page, 0, timeout=120)
            reader = sqlite3.connect(db)
            try:
                steps = reader.execute("SELECT idx, author, text FROM steps WHERE session_id = ? ORDER BY idx",
                                       [turn["sid"]]).fetchall()
                status = reader.execute("SELECT status FROM sessions WHERE id = ?", [turn["sid"]]).fetchone()[0]
            finally:
                reader.close()
            assert steps and turn["steps"] == [list(s) for s in steps] and {s[1] for s in steps} == {"local"}
            assert turn["status"] == status != "running"
            assert page.eval("location.origin") == base
            urls = page.requests()
            assert all(u.startswith(base + "/") for u in urls), urls
    finally:
        stop(proc)
