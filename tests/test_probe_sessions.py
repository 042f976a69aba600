"""One writer per session, another app's SQLite file left alone, settings written with the session.

Every run here uses the scripted local model (``--model script:FILE.json``): no llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import store
from edge_agent.errors import SessionError, StoreError
from edge_agent.scripted import ScriptedModel
from edge_agent.values import Step
from tests.conftest import run_cli

PROBLEM = "Add the numbers one to four."
FAST = ["Step one: start with 1.", "Step two: add 2 to get 3.", "Step three: add 3 to get 6."]
ANSWER = "Step five: the answer is \\boxed{10}."


def _script(tmp_path: Path, slow_s: float = 1.0, name: str = "steps.json") -> Path:
    """Steps 0-1 come at once; steps 2-4 take ``slow_s`` each, so a resume holds the session a while."""
    slow = [{"text": f"Slow step {k}: add {k} more.", "delay_s": slow_s} for k in (2, 3, 4)]
    path = tmp_path / name
    path.write_text(json.dumps({"steps": FAST[:2] + slow + [ANSWER]}))
    return path


def _session(db, script: Path, n_steps: int = 4, status: str = "done") -> str:
    """A scripted session with ``n_steps`` committed steps, as a finished solve would leave it."""
    model = ScriptedModel(script)
    texts = FAST + ["Step four: add 4 to get 10."]
    settings = {"max_steps": 12, "max_step_tokens": 256, "temperature": 0.0, "n_ctx": 4096, "seed": 0, "offline": True}
    sid = store.new_session(db, problem=PROBLEM, model=model.name, model_path=model.path, policy="local-only",
                            settings=settings)
    for i in range(n_steps):
        raw = texts[i] + "\n\n"
        store.commit_step(db, sid, Step(index=i, author="local", kind="step", text=texts[i], raw=raw,
                                        token_ids=tuple(model.tokenize(raw))))
    store.set_status(db, sid, status)
    return sid


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_agent.cli", *args]


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _active(path: Path, sid: str) -> list[int]:
    conn = _ro(path)
    try:
        return [r[0] for r in conn.execute(
            "SELECT idx FROM steps WHERE session_id = ? AND superseded_by IS NULL ORDER BY id", [sid])]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _wait_active(path: Path, sid: str, n: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until the session has ``n`` active steps, i.e. the process is writing it."""
    deadline = time.time() + timeout
    while len(_active(path, sid)) < n:
        assert proc.poll() is None, proc.communicate()[1].decode()
        assert time.time() < deadline, "the first process never started writing"
        time.sleep(0.02)


def _one_error_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr.decode()
    return lines[0]


# -- hole 7: the session and its settings in one write ------------------------------------------------


def test_a_kill_right_after_the_session_is_created_keeps_its_cap_and_cloud_url(tmp_path, monkeypatch):
    """The process dies (os._exit, no cleanup) as soon as the session exists; its settings must be there."""
    path = tmp_path / "edge.db"
    script = _script(tmp_path)
    url = "http://127.0.0.1:9/v1"
    killer = (
        "import os, sys, store, edge_agent.agent as agent\n"
        "die = lambda *a, **k: os._exit(137)\n"
        "store.update_settings = die\n"
        "agent.Agent.run = die\n"
        "from edge_agent.cli import cli\n"
        "sys.argv = ['edge-agent'] + sys.argv[1:]\n"
        "cli()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    proc = subprocess.run([sys.executable, "-c", killer, "solve", PROBLEM, "--model", f"script:{script}",
                           "--cloud", "openai:gpt-4o-mini", "--cloud-base-url", url, "--max-cost", "0.01",
                           "--policy", "every-k", "--db", str(path)], capture_output=True, env=env, timeout=60)
    assert proc.returncode == 137, proc.stderr.decode()
    db = store.open_db(path)
    [row] = store.list_sessions(db)
    state = store.load_state(db, row["id"])
    assert state.settings["max_cost"] == 0.01
    assert state.settings["cloud_base_url"] == url
    from edge_agent.cli import _agent_for_session

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    agent = _agent_for_session(db, row["id"])  # what 'resume' would run with
    assert agent.caps.session_usd == 0.01
    assert agent.cloud.adapter.base_url == url
    db.close()
