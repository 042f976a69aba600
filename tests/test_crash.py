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
    while time.time() < deadline and len(rows) < 2:
        rows = _committed(db)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the solve finished before it could be killed"
    before = _committed(db)
    assert len(before) >= 2
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
