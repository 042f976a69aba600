"""The cloud read's money on the paths a user runs: a read whose usage overruns its reservation settles like any
call (solve, serve and llm finish locally), and resume keeps the session's ``[cloud] read`` setting.

The overrun needs a cloud that over-reports: ``ReadServer`` below, on loopback, answers reads (legacy completions
with echoed prompt log-probs) and chat calls. Resume reads from the real loopback cloud (``llama_server``)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROBE, run_cli
from tests.servers import _completion, _Handler, _Server

POLICY = "verify-repair(tau=-1000,rounds=1)"  # every draft is suspicious: a read, then a repair if the cloud can
STEPS = ["Blue takes 2 bolts.", "White takes 1 bolt, so \\boxed{3}."]


class ReadServer(_Server):
    """An OpenAI-compatible cloud whose reads report ``bill`` times the prompt's tokens as their usage."""

    def __init__(self, bill: int = 100):
        self.bill = bill
        super().__init__(_ReadHandler)


class _ReadHandler(_Handler):
    def do_POST(self):
        body = self._body()
        if self.path.endswith("/chat/completions"):
            return self._send(200, _completion("Half of 2 is 1, so \\boxed{3}."))
        prompt = body["prompt"]
        tokens = [str(t) for t in prompt] if isinstance(prompt, list) else list(prompt)
        n, billed = len(tokens), len(tokens) * self.server.owner.bill
        return self._send(200, {
            "id": "cmpl-x", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": {
                "tokens": tokens, "token_logprobs": [None] + [-0.5] * (n - 1), "text_offset": list(range(n)),
                "top_logprobs": None}}],
            "usage": {"prompt_tokens": billed, "completion_tokens": 0, "total_tokens": billed}})


@pytest.fixture
def read_server():
    server = ReadServer()
    yield server
    server.close()


def _script(tmp_path, steps=STEPS):
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(steps))
    return f"script:{path}"


def _cloud_args(server):
    return ["--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2"]


def _overrun_booked(db_path):
    """The read's ledger row and the events of the one session in ``db_path``."""
    conn = sqlite3.connect(db_path)
    try:
        reads = conn.execute("SELECT status, cost_nusd, reserved_nusd, claimed_nusd FROM cloud_calls"
                             " WHERE purpose = 'read'").fetchall()
        events = [(t, json.loads(d or "{}")) for t, d in conn.execute("SELECT trigger, detail FROM trigger_events")]
        opened = conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0]
    finally:
        conn.close()
    [(status, cost, reserved, claimed)] = reads
    assert status == "overrun" and cost == reserved > 0 and claimed > reserved and opened == 0
    assert any(t == "cloud_overrun" and d.get("purpose") == "read" for t, d in events), events
    return events


def _paths(server):
    return [r["path"] for r in server.requests]


def _only_the_read_was_sent(server):
    """The breaker tripped on the overrun: the repair the suspicious read asked for was never sent."""
    assert _paths(server) == ["/v1/completions"]


def test_solve_books_an_overrun_read_at_its_reservation_and_finishes_locally(tmp_path, read_server):
    r = run_cli("solve", ROBE, "--json", "--model", _script(tmp_path), "--policy", POLICY, *_cloud_args(read_server))
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err[-1500:]
    out = json.loads(r.stdout)
    assert out["status"] == "done" and out["answer"] == "3" and all(s["author"] == "local" for s in out["steps"])
    _overrun_booked(tmp_path / "edge.db")
    _only_the_read_was_sent(read_server)


def _free_port():
    from edge_agent.cloud_local import free_port

    return free_port()


def _serve(tmp_path, model, db, server, env=None):
    """``edge-agent serve`` on ``model`` with ``server`` as its cloud: (process, base URL, log path), once it answers."""
    port, log = _free_port(), tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "serve", "--model", model, "--db", str(db),
                                 "--port", str(port), "--policy", POLICY, *_cloud_args(server)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail("serve did not start: " + log.read_text(errors="replace")[-2000:])
        try:
            urllib.request.urlopen(base + "/v1/models", timeout=5).close()
            return proc, base, log
        except OSError:
            time.sleep(0.2)


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _post(url, body):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_serve_answers_normally_when_a_read_overruns(tmp_path, read_server):
    proc, base, log = _serve(tmp_path, _script(tmp_path), tmp_path / "serve.db", read_server)
    try:
        status, body = _post(base + "/v1/chat/completions",
                             {"model": "edge-agent", "messages": [{"role": "user", "content": ROBE}]})
        assert status == 200, body[-500:]
        reply = json.loads(body)
        assert "\\boxed{3}" in reply["choices"][0]["message"]["content"]
    finally:
        _stop(proc)
    assert "Traceback" not in log.read_text(errors="replace")
    _overrun_booked(tmp_path / "serve.db")
    _only_the_read_was_sent(read_server)


def test_llm_answers_without_an_error_when_a_read_overruns(tmp_path, read_server):
    cfg = tmp_path / "edge-agent.toml"
    cfg.write_text(f'[cloud]\nprovider = "openai"\nmodel = "m"\nbase_url = "{read_server.url}/v1"\nmax_retries = 0\n\n'
                   '[prices."m"]\ninput = 1.0\noutput = 2.0\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("EDGE_AGENT_CLOUD", "OPENAI_BASE_URL", "LLM_RAISE_ERRORS",
                                                            "LLM_MODEL")}
    env.update({"LLM_USER_PATH": str(tmp_path / "llm"), "LLM_LOAD_PLUGINS": "edge-agent",
                "EDGE_AGENT_CONFIG": str(cfg)})
    r = subprocess.run([sys.executable, "-m", "llm", "-m", "edge-agent", "-o", "model", _script(tmp_path),
                        "-o", "policy", POLICY, ROBE], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "Error" not in r.stderr, r.stderr[-1500:]
    assert r.stdout.strip().endswith("Answer: 3")
    _overrun_booked(os.environ["EDGE_AGENT_DB"])
    _only_the_read_was_sent(read_server)


def _committed_steps(db_path):
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        rows = conn.execute("SELECT session_id FROM steps").fetchall()
        conn.close()
        return [r[0] for r in rows]
    except sqlite3.Error:  # not created or not migrated yet
        return []


def test_resume_keeps_the_sessions_read_setting_off(tmp_path, llama_server):
    """``[cloud] read = "off"`` at solve: the review after a kill and resume pays no read (the real loopback cloud)."""
    cfg = tmp_path / "off.toml"
    cfg.write_text('[cloud]\nread = "off"\n')
    script = tmp_path / "steps.json"
    script.write_text(json.dumps([STEPS[0], {"text": STEPS[1], "delay_s": 60.0}]))
    db = tmp_path / "edge.db"
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--model", f"script:{script}",
                             "--policy", POLICY, "--cloud", "openai:local", "--cloud-base-url", llama_server],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "EDGE_AGENT_CONFIG": str(cfg)})
    deadline = time.time() + 60
    while time.time() < deadline and not _committed_steps(db):  # step 0 is in; step 1 takes a minute
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the solve finished before it could be killed"
    [sid] = set(_committed_steps(db))
    script.write_text(json.dumps(STEPS))  # the same steps, now without the wait

    # resumed without the config file: the session's own setting holds, as continuation's does
    r = run_cli("resume", sid, "--json", env={"EDGE_AGENT_CONFIG": str(tmp_path / "none.toml")}, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-1500:]
    out = json.loads(r.stdout)
    conn = sqlite3.connect(db)
    calls = [p for (p,) in conn.execute("SELECT purpose FROM cloud_calls WHERE session_id = ?", [sid])]
    settings = json.loads(conn.execute("SELECT settings FROM sessions WHERE id = ?", [sid]).fetchone()[0])
    conn.close()
    assert calls == [] and out["usage"]["cost_usd"] == 0  # no read paid, so nothing to repair either
    assert out["status"] == "done" and out["answer"] == "3" and settings["read"] == "off"


def test_the_app_pages_resume_keeps_the_sessions_read_setting_off(tmp_path):
    """The same through ``serve``'s resume (the app page's Resume): the server's own setting is auto, the session's off."""
    server = ReadServer(bill=1)
    cfg = tmp_path / "off.toml"
    cfg.write_text('[cloud]\nread = "off"\n')
    script = tmp_path / "steps.json"
    script.write_text(json.dumps([STEPS[0], {"text": STEPS[1], "delay_s": 60.0}]))
    db = tmp_path / "edge.db"
    try:
        solving = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--model", f"script:{script}",
                                    "--policy", POLICY, *_cloud_args(server)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env={**os.environ, "EDGE_AGENT_CONFIG": str(cfg)})
        deadline = time.time() + 60
        while time.time() < deadline and not _committed_steps(db):
            time.sleep(0.05)
        solving.send_signal(signal.SIGKILL)
        solving.wait()
        [sid] = set(_committed_steps(db))
        script.write_text(json.dumps(STEPS))
        proc, base, log = _serve(tmp_path, f"script:{script}", db, server,
                                 env={"EDGE_AGENT_CONFIG": str(tmp_path / "none.toml")})
        try:
            status, body = _post(f"{base}/app/api/sessions/{sid}/resume", {})
            assert status == 200, body[-500:]
        finally:
            _stop(proc)
        conn = sqlite3.connect(db)
        calls = [p for (p,) in conn.execute("SELECT purpose FROM cloud_calls WHERE session_id = ?", [sid])]
        row = conn.execute("SELECT status, answer FROM sessions WHERE id = ?", [sid]).fetchone()
        conn.close()
        assert calls == [] and server.requests == []  # no read paid, so nothing to repair either
        assert row == ("done", "3")
    finally:
        server.close()
