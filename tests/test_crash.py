"""kill -9 mid-solve, then resume: committed steps are kept verbatim and the session completes."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

from tests.conftest import ROBE, run_cli


def _committed(db, sid=None):
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = conn.execute(
            "SELECT s.id, t.idx, t.text, t.token_ids FROM sessions s JOIN steps t ON t.session_id = s.id "
            "WHERE t.superseded_by IS NULL ORDER BY t.id"
        ).fetchall()
        conn.close()
        return rows
    except sqlite3.Error:
        return []


def test_kill_9_mid_solve_then_resume(tmp_path):
    db = tmp_path / "edge.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--json",
         "--max-steps", "8", "--max-step-tokens", "24", "--temperature", "0.9", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    rows = []
    while time.time() < deadline and not rows:  # kill once a step is committed: holds for any text
        rows = _committed(db)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the solve finished before it could be killed"
    before = _committed(db)
    assert len(before) >= 1
    sid = before[0][0]
    status = sqlite3.connect(db).execute("SELECT status FROM sessions WHERE id = ?", [sid]).fetchone()[0]
    assert status == "running"

    resumed = run_cli("resume", sid, "--json")
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = json.loads(resumed.stdout)
    assert report["status"] in {"done", "max_steps", "ended", "context_full"}
    after = _committed(db)
    assert after[: len(before)] == before  # verbatim: same ids, indices, text and tokens
    assert len(report["steps"]) >= len(before)
    assert [s["text"] for s in report["steps"][: len(before)]] == [r[2] for r in before]


def test_ten_seeded_kills_with_the_loopback_cloud_lose_nothing_and_leave_no_open_reservation(llama_server, tmp_path):
    import random

    rng = random.Random(1234)
    db = tmp_path / "edge.db"
    kills = 0
    for round_ in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--json", "--policy", "every-k",
             "--cloud", "openai:local", "--cloud-base-url", llama_server, "--max-steps", "6",
             "--max-step-tokens", "24", "--temperature", "0.9", "--seed", str(round_)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(1.0, 4.0))  # the CLI needs ~1 s to start: kills land at load, local or cloud work
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        conn = sqlite3.connect(db)
        row = conn.execute("SELECT id, status FROM sessions ORDER BY id DESC LIMIT 1").fetchone()
        conn.close()
        if row is None or row[1] != "running":
            continue  # killed before the session was written, or it finished first
        before = _committed(db)
        resumed = run_cli("resume", row[0], "--json")
        assert resumed.returncode == 0, resumed.stderr.decode()
        assert json.loads(resumed.stdout)["status"] in {"done", "max_steps", "ended", "context_full"}
        assert _committed(db)[: len(before)] == before  # every committed step, verbatim
    assert kills >= 6
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM sessions WHERE status = 'running'").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0
    # the ledger: one settled call per reservation, never more than was reserved
    settled = conn.execute("SELECT id, amount_nusd FROM budget_reservations").fetchall()
    calls = dict(conn.execute("SELECT reservation_id, cost_nusd FROM cloud_calls").fetchall())
    assert set(calls) == {rid for rid, _ in settled}
    assert all(calls[rid] <= amount for rid, amount in settled)
    assert conn.execute("SELECT COUNT(*) FROM cloud_calls").fetchone()[0] == len(settled) > 0
