"""solve --samples N --max-cost X: X is the cap of the whole command, shared by the parent and its samples,
together and after a kill and resume (scripted local model, scripted loopback cloud with exact usage)."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import ROBE, run_cli

# Input is free and output costs $100 per 1M tokens: a cloud step (max_tokens = --max-step-tokens = 16)
# reserves exactly 1,600,000 nUSD, and its reported usage (13 output tokens) costs 1,300,000 nUSD.
# A cap of two reservations pays two steps: after them 2 x 1.3M + 1.6M > 3.2M.
RESERVED, COST, CAP = 1_600_000, 1_300_000, "0.0032"
STEPS = ["2 blue.", "1 white.", "\\boxed{3}"]  # every-k: the cloud writes step 1 (an answer) where it may


def _cloud(fault_server):
    server = fault_server("usage")
    server.usage = {"prompt_tokens": 50, "completion_tokens": 13, "total_tokens": 63}
    return server


def _args(tmp_path, server, samples, batch, cases=None):
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"steps": STEPS, "when": [{"seed": s, "steps": v} for s, v in (cases or {}).items()]}))
    return ["--model", f"script:{script}", "--samples", str(samples), "--batch", batch, "--policy", "every-k",
            "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "0", "--price-out", "100",
            "--max-step-tokens", "16", "--max-cost", CAP, "--json"]


def _ledger(db):
    conn = sqlite3.connect(db)
    try:
        calls = conn.execute("SELECT session_id, cost_nusd, reserved_nusd, status FROM cloud_calls").fetchall()
        opened = conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0]
        denied = [json.loads(d) for (d,) in conn.execute(
            "SELECT detail FROM trigger_events WHERE trigger = 'budget_denied'").fetchall()]
        sessions = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    finally:
        conn.close()
    return calls, opened, denied, sessions


@pytest.mark.parametrize("batch", ["off", "on"])  # one after another, or together in threads (own connections)
def test_the_samples_share_the_commands_cap(tmp_path, fault_server, batch):
    server = _cloud(fault_server)
    r = run_cli("solve", ROBE, *_args(tmp_path, server, 4, batch))
    assert r.returncode == 0, r.stderr.decode()[-800:]
    calls, opened, denied, sessions = _ledger(tmp_path / "edge.db")
    assert sessions == 4 and opened == 0
    assert sum(c[1] for c in calls) <= int(float(CAP) * 1e9)  # the cap holds for the command, not per sample
    assert [(c[1], c[2], c[3]) for c in calls] == [(COST, RESERVED, "ok")] * 2
    assert len(server.requests) == 2  # a refused step was never sent
    assert len(denied) == 2 and all(d["scope"] == "group" and "shares with its samples" in d["message"] for d in denied)


def _progress(db):
    """(cloud calls settled, sessions done): a call is settled a moment before the step it wrote commits."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        n = conn.execute("SELECT COUNT(*) FROM cloud_calls").fetchone()[0]
        done = conn.execute("SELECT COUNT(*) FROM sessions WHERE status = 'done'").fetchone()[0]
        conn.close()
        return n, done
    except sqlite3.Error:  # not created or not migrated yet
        return 0, 0


def test_resume_of_samples_counts_what_the_group_already_spent(tmp_path, fault_server):
    server = _cloud(fault_server)
    db = tmp_path / "edge.db"
    slow = [{"text": "2 blue.", "delay_s": 5.0}, "1 white.", "\\boxed{3}"]  # samples 2 and 3 start slowly
    args = _args(tmp_path, server, 4, "off", cases={2: slow, 3: slow})
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "solve", ROBE, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and _progress(db) < (2, 2):  # the parent and sample 1 paid and wrote their cloud step
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the solve finished before it could be killed"
    assert _progress(db) == (2, 2)
    parent = sqlite3.connect(db).execute("SELECT id FROM sessions WHERE parent_id IS NULL").fetchone()[0]

    r = run_cli("resume", parent, "--json")
    assert r.returncode == 0, r.stderr.decode()[-800:]
    assert json.loads(r.stdout)["samples"]["complete"]
    calls, opened, denied, _ = _ledger(db)
    assert sum(c[1] for c in calls) <= int(float(CAP) * 1e9) and len(calls) == 2 and opened == 0
    assert len(denied) == 2 and {d["scope"] for d in denied} == {"group"}
