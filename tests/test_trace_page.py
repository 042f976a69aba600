"""The trace pages of ``edge-agent serve`` (GET /, GET /sessions/ID), read by real headless Chromium.

The sessions are made through the real CLI: ``solve`` with the scripted local model and a scripted
cloud (FaultServer), then ``rollback``; the real ``edge-agent serve`` runs in a subprocess on that
database. What the page must show is read from the database file directly, not from the product.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import ROBE, run_cli

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "s3cret-token-for-pages"
# the cloud writes a plan; a step whose score falls below the threshold is rewritten by the cloud
POLICY = "hybrid(plan=always,loop=False,offload=False,lam=1)"
SURE = {"min_top1": 0.99, "low_top1_share": 0.0}
SHAKY = {"min_top1": 0.05, "low_top1_share": 0.4}
SCRIPT = {"steps": [
    "(never written: the cloud's plan takes step 0)",
    {"text": "Blue fiber: 2 bolts.", "signals": SURE},
    {"text": "White fiber is half of that: 2 / 2 = 7 bolts.", "signals": SHAKY},
    {"text": "In total 2 + 1 = 3, so \\boxed{3}.", "signals": SURE},
]}
CLOUD_REPLIES = ["1. Find the white fiber.\n2. Add both colours.",
                 "White fiber is half of 2: 2 / 2 = 1 bolt.",  # the rewrite the rollback supersedes
                 "White fiber: half of 2 bolts is 1 bolt."]  # the rewrite after the rollback
HOSTILE_PROBLEM = '<script>alert("pwned")</script> A robe takes 2 bolts & "half" as much <b>white</b>.'
HOSTILE_STEP = "<img src=x onerror=alert(1)> 2 + 1 = 3, so \\boxed{3}."


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "config"), "HF_HUB_OFFLINE": "1", "EDGE_AGENT_THREADS": "1"}
    for name in ("EDGE_AGENT_MODEL", "EDGE_AGENT_TOKEN", "EDGE_AGENT_DB"):
        env.pop(name, None)
    return env


def _ok(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return json.loads(proc.stdout)


def make_traced_session(db: Path, env: dict[str, str], model: str, cloud_url: str, policy: str = POLICY,
                        rollback_to: int = 2, extra: tuple[str, ...] = ("--max-steps", "6")) -> str:
    """A solve with a scripted cloud, then a rollback that regenerates from ``rollback_to``: the session id."""
    report = _ok(run_cli("solve", ROBE, "--json", "--db", str(db), "--model", model, "--policy", policy,
                         "--cloud", "openai:m", "--cloud-base-url", cloud_url + "/v1", "--price-in", "1",
                         "--price-out", "2", *extra, env=env))
    sid = report["session_id"]
    _ok(run_cli("rollback", sid, "--to", str(rollback_to), "--json", "--db", str(db), env=env))
    return sid


def start_serve(db: Path, script: Path, env: dict[str, str], log: Path):
    """The real ``edge-agent serve`` (scripted model: the pages read the DB only), with a token."""
    from edge_agent.cloud_local import free_port

    port = free_port()
    out = open(log, "wb")  # noqa: SIM115  (the server writes to it until stop(); closed by the caller)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "serve", "--model", f"script:{script}",
                             "--db", str(db), "--port", str(port), "--token", TOKEN],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert proc.poll() is None, "serve exited: " + log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "serve did not start: " + log.read_text(errors="replace")[-2000:]
            try:
                if _get(f"{base}/?token={TOKEN}")[0] == 200:
                    return proc, base, out
            except OSError:
                pass
            time.sleep(0.2)
    except BaseException:
        stop(proc)  # never leave a server behind
        out.close()
        raise


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two sessions (the traced one, then one with hostile text) and serve on their database."""
    from tests.servers import FaultServer

    tmp = tmp_path_factory.mktemp("trace")
    env, db = _env(tmp), tmp / "trace.db"
    script = tmp / "script.json"
    script.write_text(json.dumps(SCRIPT))
    cloud = FaultServer("script", replies=list(CLOUD_REPLIES))
    try:
        sid = make_traced_session(db, env, f"script:{script}", cloud.url)
    finally:
        cloud.close()
    hostile = tmp / "hostile.json"
    hostile.write_text(json.dumps([HOSTILE_STEP]))
    other = _ok(run_cli("solve", HOSTILE_PROBLEM, "--json", "--db", str(db), "--model", f"script:{hostile}",
                        env=env))["session_id"]
    log = tmp / "serve.log"
    proc, base, out = start_serve(db, script, env, log)
    yield {"base": base, "db": db, "sid": sid, "hostile": other, "log": log, "tmp": tmp}
    stop(proc)
    out.close()


# -- reading pages ----------------------------------------------------------------------------------------


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


class Tree(HTMLParser):
    """A minimal DOM: nodes are dicts with tag, attrs and children (nodes and text)."""

    VOID = frozenset({"meta", "br", "img", "input", "link", "hr", "wbr"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = {"tag": "#root", "attrs": {}, "children": [], "parent": None}
        self.stack = [self.root]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "children": [], "parent": self.stack[-1]}
        self.stack[-1]["children"].append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1]["children"].append(data)


def nodes(node, tag=None, cls=None):
    for child in node["children"]:
        if isinstance(child, dict):
            if (tag is None or child["tag"] == tag) and (cls is None or cls in classes(child)):
                yield child
            yield from nodes(child, tag, cls)


def classes(node) -> set[str]:
    return set((node["attrs"].get("class") or "").split())


def text(node) -> str:
    return "".join(c if isinstance(c, str) else text(c) for c in node["children"])


def ancestor(node, tag, cls):
    node = node["parent"]
    while node is not None:
        if node["tag"] == tag and cls in classes(node):
            return node
        node = node["parent"]
    return None


def db_rows(db: Path, sql: str, args=()) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def check_trace(dom: str, db: Path, sid: str) -> None:
    """The session page shows what the database holds: steps, authors, badges, rollbacks, calls, plan."""
    tree = Tree(dom)
    steps = db_rows(db, "SELECT * FROM steps WHERE session_id = ? ORDER BY idx, id", [sid])
    session = db_rows(db, "SELECT * FROM sessions WHERE id = ?", [sid])[0]
    shown = list(nodes(tree.root, "li", "step"))
    active = [n for n in shown if ancestor(n, "li", "rollback") is None]
    want = [(r["idx"], r["author"], r["text"]) for r in steps if r["superseded_by"] is None]
    got = [(int(n["attrs"]["data-idx"]), n["attrs"]["data-author"], text(next(nodes(n, "pre", "text"))))
           for n in active]
    assert got == want
    for n in shown:
        assert n["attrs"]["data-author"] in classes(n)  # coloured by author
        assert ({"local", "cloud"} & classes(n)) == {n["attrs"]["data-author"]}
    assert text(next(nodes(tree.root, "pre", "problem"))) == session["problem"]

    gone = [r for r in steps if r["superseded_by"] is not None]
    folded = {}
    for block in nodes(tree.root, "li", "rollback"):
        details = next(nodes(block, "details"))  # folded: closed until clicked
        assert "open" not in details["attrs"]
        for n in nodes(details, "li", "step"):
            assert "superseded" in classes(n)
            folded[(block["attrs"]["data-rollback"], int(n["attrs"]["data-idx"]))] = text(next(nodes(n, "pre", "text")))
    assert folded == {(r["superseded_by"], r["idx"]): r["text"] for r in gone}

    badges = list(nodes(tree.root, "span", "badge"))
    events = db_rows(db, "SELECT * FROM trigger_events WHERE session_id = ? AND score IS NOT NULL "
                         "AND threshold IS NOT NULL", [sid])
    for e in events:
        match = [b for b in badges if b["attrs"].get("data-trigger") == e["trigger"]
                 and b["attrs"].get("data-score") == str(e["score"])
                 and b["attrs"].get("data-threshold") == str(e["threshold"])]
        assert match, f"no badge for {e['trigger']} {e['score']} vs {e['threshold']}"
        assert all(f"{e['score']:.3g} vs threshold {e['threshold']:.3g}" in text(b) for b in match)
    by_id = {n["attrs"]["data-step"]: n for n in shown}
    for r in steps:  # a cloud step, superseded or not, shows its own call and the trigger that made it
        if r["author"] == "cloud":
            step = by_id[r["id"]]
            assert any(b["attrs"]["data-trigger"] == r["trigger"] for b in nodes(step, "span", "badge"))
            assert list(nodes(step, "div", "call")), f"step {r['idx']} ({r['id']}) shows no cloud call"

    calls = db_rows(db, "SELECT * FROM cloud_calls WHERE session_id = ? ORDER BY id", [sid])
    shown_calls = [text(c) for c in nodes(tree.root, "div", "call")]
    assert len(shown_calls) == len(calls)
    for c in calls:  # each call once, with its purpose, tokens and cost
        want = (c["purpose"], f"{c['input_tokens']} in / {c['output_tokens']} out", f"${c['cost_nusd'] / 1e9:.6f}")
        line = next((t for t in shown_calls if all(w in t for w in want)), None)
        assert line is not None, f"cloud call {want} not shown"
        shown_calls.remove(line)
    total = sum(c["cost_nusd"] for c in calls)
    assert f"${total / 1e9:.6f}" in text(next(nodes(tree.root, "span", "total-cost")))

    plan = [r for r in steps if r["kind"] == "plan" and r["superseded_by"] is None]
    plans = [text(p) for p in nodes(tree.root, "pre", "plan")]
    assert plans == [p["text"] for p in plan]


def chromium(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as user_dir:
        return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={user_dir}", *args],
                              capture_output=True, timeout=timeout, check=False)


def dump_dom(url: str) -> str:
    proc = chromium("--dump-dom", url)
    assert proc.returncode == 0 and b"</html>" in proc.stdout, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode()


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install chromium "
                                                                  "(.ci/run installs it)")


# -- tests --------------------------------------------------------------------------------------------------


def test_the_session_made_by_the_cli_has_what_the_page_must_show(served):
    """The precondition of the browser test: local and cloud steps, a scored trigger, a rollback, a plan."""
    db, sid = served["db"], served["sid"]
    steps = db_rows(db, "SELECT author, kind, superseded_by FROM steps WHERE session_id = ?", [sid])
    assert {"local", "cloud"} <= {s["author"] for s in steps}
    assert any(s["superseded_by"] for s in steps) and db_rows(db, "SELECT * FROM rollbacks WHERE session_id = ?", [sid])
    assert any(s["kind"] == "plan" for s in steps)
    assert db_rows(db, "SELECT * FROM trigger_events WHERE session_id = ? AND trigger = 'step_score' "
                       "AND score < threshold", [sid])
    assert all(c["cost_nusd"] > 0 for c in db_rows(db, "SELECT cost_nusd FROM cloud_calls WHERE session_id = ?",
                                                   [sid]))


@needs_chromium
def test_chromium_renders_the_trace_of_a_solve_with_a_rollback(served):
    url = f"{served['base']}/sessions/{served['sid']}?token={TOKEN}"
    check_trace(dump_dom(url), served["db"], served["sid"])
    shot = served["tmp"] / "trace.png"
    proc = chromium(f"--screenshot={shot}", "--window-size=1200,1600", url)
    assert proc.returncode == 0 and shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    from matplotlib.image import imread

    pixels = (imread(shot)[:, :, :3] * 255).round()
    assert pixels.shape[:2] == (1600, 1200)

    def share(rgb):  # the share of pixels of this colour: the author borders and badges are drawn
        return float(((abs(pixels - rgb)).max(axis=2) <= 8).mean())

    assert share((0x1F, 0x8F, 0xBF)) > 0.0005 and share((0xA2, 0x36, 0x9A)) > 0.0005  # local and cloud
    assert share((0xFF, 0xE6, 0x80)) > 0.0002  # a trigger badge
    assert share((255, 255, 255)) < 0.98  # not a blank page


def test_the_index_lists_sessions_newest_first_with_counts_and_cost(served):
    status, _, body = _get(f"{served['base']}/", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    rows = list(nodes(Tree(body).root, "tr", "session"))
    sessions = db_rows(served["db"], "SELECT id, status, answer FROM sessions ORDER BY created_at DESC, id DESC")
    assert [r["attrs"]["data-session"] for r in rows] == [s["id"] for s in sessions]
    for row, s in zip(rows, sessions):
        steps = db_rows(served["db"], "SELECT author FROM steps WHERE session_id = ? AND superseded_by IS NULL "
                                      "AND kind = 'step'", [s["id"]])
        cost = sum(c["cost_nusd"] for c in db_rows(served["db"], "SELECT cost_nusd FROM cloud_calls WHERE "
                                                                 "session_id = ?", [s["id"]]))
        assert s["status"] in text(row) and (s["answer"] or "") in text(row)
        got = [text(c) for c in nodes(row, "td") if "num" in classes(c)]
        assert got == [str(sum(x["author"] == "local" for x in steps)), str(sum(x["author"] == "cloud" for x in steps)),
                       f"${cost / 1e9:.6f}"]
    link = next(nodes(rows[-1], "a"))["attrs"]["href"]
    assert link == f"/sessions/{served['sid']}"  # a header token is not copied into links


def test_a_token_is_required_and_a_query_token_opens_the_page_but_stays_out_of_the_log(served):
    base, sid = served["base"], served["sid"]
    for url, headers in ((f"{base}/", None), (f"{base}/sessions/{sid}", None), (f"{base}/?token=wrong", None),
                         (f"{base}/sessions/{sid}", {"Authorization": "Bearer wrong"})):
        status, head, body = _get(url, headers)
        assert status == 401 and head.get("www-authenticate", head.get("WWW-Authenticate")) == "Bearer", url
        assert "?token=" in body and sid not in body and "Blue fiber" not in body
    status, head, body = _get(f"{base}/sessions/{sid}?token={TOKEN}")
    assert status == 200 and "Blue fiber: 2 bolts." in body
    assert "script-src" not in head.get("content-security-policy", "") and "default-src 'none'" in \
        head.get("content-security-policy", "")
    status, _, index = _get(f"{base}/?token={TOKEN}")
    assert status == 200 and f'href="/sessions/{sid}?token={TOKEN}"' in index  # links keep the page openable
    log = served["log"]
    deadline = time.monotonic() + 10
    while "token=***" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = log.read_text(errors="replace")
    assert f"/sessions/{sid}?token=*** " in logged  # the access log does log the request line ...
    assert TOKEN not in logged  # ... without the token


def test_an_unknown_session_is_a_404_page(served):
    status, head, body = _get(f"{served['base']}/sessions/01NOSUCHSESSION?token={TOKEN}")
    assert status == 404 and head.get("content-type", head.get("Content-Type", "")).startswith("text/html")
    assert "no session" in body and "Traceback" not in body
    status, _, body = _get(f"{served['base']}/?limit=zero&token={TOKEN}")
    assert status == 400 and "limit" in body


def test_untrusted_problem_and_step_text_are_escaped(served):
    hostile = served["hostile"]
    for url in (f"{served['base']}/sessions/{hostile}?token={TOKEN}", f"{served['base']}/?token={TOKEN}"):
        status, _, body = _get(url)
        assert status == 200
        assert "<script" not in body and "<b>white" not in body and "<img" not in body
        assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in body
    tree = Tree(_get(f"{served['base']}/sessions/{hostile}?token={TOKEN}")[2])
    assert text(next(nodes(tree.root, "pre", "problem"))) == HOSTILE_PROBLEM
    assert [text(next(nodes(n, "pre", "text"))) for n in nodes(tree.root, "li", "step")] == [HOSTILE_STEP]


def test_show_open_prints_the_page_url(served):
    db, sid = str(served["db"]), served["sid"]
    proc = run_cli("show", sid[:10].lower(), "--open", "--db", db)
    assert proc.returncode == 0 and proc.stdout.decode() == f"http://127.0.0.1:8088/sessions/{sid}\n"
    proc = run_cli("show", sid, "--open", "--host", "::1", "--port", "9123", "--json", "--db", db)
    assert json.loads(proc.stdout) == {"session_id": sid, "url": f"http://[::1]:9123/sessions/{sid}"}
    bad = run_cli("show", "01NOSUCH", "--open", "--db", db)
    assert bad.returncode == 2 and len(bad.stderr.decode().strip().splitlines()) == 1
    assert "Traceback" not in bad.stderr.decode()


@needs_chromium
def test_trace_page_of_a_real_solve_on_the_embedded_model(tmp_path, smol_path, fault_server):
    """The same page for a session the real embedded model (smollm2-135m) wrote, with a scripted cloud.

    hybrid(plan=always) has the cloud write a plan before the first local step, so the session has
    local and cloud steps and a trigger event whatever the model writes; the rollback regenerates
    from step 1.
    """
    env, db = _env(tmp_path), tmp_path / "real.db"
    cloud = fault_server("script", replies=["Half of 2 bolts is 1 bolt of white fiber.",
                                            "So 2 + 1 = 3 bolts in total. The answer is \\boxed{3}."])
    sid = make_traced_session(db, env, "smollm2-135m", cloud.url, policy="hybrid(plan=always,loop=False,offload=False)", rollback_to=1,
                              extra=("--max-step-tokens", "48", "--max-steps", "4"))
    steps = db_rows(db, "SELECT author, superseded_by FROM steps WHERE session_id = ?", [sid])
    assert {"local", "cloud"} <= {s["author"] for s in steps} and any(s["superseded_by"] for s in steps), \
        "the real solve ended before the cloud's step: the page test needs both authors"
    script = tmp_path / "serve.json"
    script.write_text("[]")
    proc, base, out = start_serve(db, script, env, tmp_path / "serve.log")
    try:
        check_trace(dump_dom(f"{base}/sessions/{sid}?token={TOKEN}"), db, sid)
    finally:
        stop(proc)
        out.close()
