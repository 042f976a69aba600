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


# -- holes 2 and 3: one writer per session ------------------------------------------------------------


def _race(tmp_path: Path, second, rounds: int = 10):
    """Per round: a session rolled back to step 1, a ``resume`` that holds it, then ``second(sid)``
    while the resume writes its slow steps. The rounds run side by side (one session each)."""
    path = tmp_path / "edge.db"
    script = _script(tmp_path, slow_s=1.3)
    db = store.open_db(path)
    sids = []
    for _ in range(rounds):
        sid = _session(db, script)
        store.rollback_to(db, sid, 1)  # as 'rollback SID --to 1 --no-continue' leaves it
        sids.append(sid)
    db.close()
    firsts = [subprocess.Popen(_cli("resume", sid, "--json", "--db", str(path)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for sid in sids]
    seconds = []
    for sid, first in zip(sids, firsts):
        _wait_active(path, sid, 2, first)  # the first has written step 1 and is in its slow steps
        seconds.append(subprocess.Popen(_cli(*second(sid), "--db", str(path)),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = []
    for sid, first, other in zip(sids, firsts, seconds):
        a, b = first.communicate(timeout=60), other.communicate(timeout=60)
        out.append((sid, first, a, other, b))
    return path, out


def _assert_one_chain(path: Path, sid: str, report: dict) -> None:
    """No duplicate active index, indexes 0..n-1, and no row besides the setup's and this chain's."""
    active = _active(path, sid)
    assert active == list(range(len(active))), active
    assert [s["index"] for s in report["steps"]] == active
    conn = _ro(path)
    superseded, total = conn.execute(
        "SELECT SUM(superseded_by IS NOT NULL), COUNT(*) FROM steps WHERE session_id = ?", [sid]).fetchone()
    status = conn.execute("SELECT status FROM sessions WHERE id = ?", [sid]).fetchone()[0]
    conn.close()
    assert superseded == 3 and total == 3 + len(active)  # exactly one writer wrote after the setup
    assert status == report["status"] == "done"


def test_two_resumes_of_one_session_one_writes_the_other_is_refused(tmp_path):
    path, rounds = _race(tmp_path, lambda sid: ["resume", sid, "--json"])
    for sid, first, (out_a, err_a), second, (out_b, err_b) in rounds:
        assert first.returncode == 0, err_a.decode()
        assert second.returncode == 2, (out_b.decode(), err_b.decode())
        line = _one_error_line(err_b)
        assert f"session {sid} is being continued by process {first.pid}" in line
        assert out_b == b""
        _assert_one_chain(path, sid, json.loads(out_a))
    conn = _ro(path)
    assert conn.execute("SELECT COUNT(*) FROM session_leases").fetchone()[0] == 0  # every lease released
    conn.close()


def test_a_rollback_during_a_resume_is_refused_and_changes_nothing(tmp_path):
    # even rounds only mark (--no-continue), odd rounds would also regenerate
    n = [0]

    def rollback(sid):
        n[0] += 1
        return ["rollback", sid, "--to", "1", "--json"] + (["--no-continue"] if n[0] % 2 else [])

    path, rounds = _race(tmp_path, rollback)
    for sid, first, (out_a, err_a), second, (out_b, err_b) in rounds:
        assert first.returncode == 0, err_a.decode()
        assert second.returncode == 2, (out_b.decode(), err_b.decode())
        assert f"session {sid} is being continued by process {first.pid}" in _one_error_line(err_b)
        _assert_one_chain(path, sid, json.loads(out_a))
        conn = _ro(path)
        assert conn.execute("SELECT COUNT(*) FROM rollbacks WHERE session_id = ?", [sid]).fetchone()[0] == 1
        conn.close()


def test_kill_9_leaves_no_lease_that_blocks_resume(tmp_path):
    path = tmp_path / "edge.db"
    db = store.open_db(path)
    sid = _session(db, _script(tmp_path, slow_s=1.0), n_steps=1, status="running")
    db.close()
    first = subprocess.Popen(_cli("resume", sid, "--json", "--db", str(path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_active(path, sid, 2, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    conn = _ro(path)
    assert conn.execute("SELECT pid FROM session_leases WHERE session_id = ?", [sid]).fetchone() == (first.pid,)
    conn.close()
    again = run_cli("resume", sid, "--json", "--db", str(path))
    assert again.returncode == 0, again.stderr.decode()
    assert json.loads(again.stdout)["status"] == "done"
    assert _active(path, sid) == [0, 1, 2, 3, 4, 5]


def test_rollback_that_continues_holds_the_session_for_its_whole_run(tmp_path):
    path = tmp_path / "edge.db"
    db = store.open_db(path)
    sid = _session(db, _script(tmp_path, slow_s=0.0))
    db.close()
    proc = run_cli("rollback", sid, "--to", "2", "--temperature", "0", "--json", "--db", str(path))
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["status"] == "done"
    assert _active(path, sid) == [0, 1, 2, 3, 4, 5]


def _agent(db, script: Path):
    from edge_agent.agent import Agent

    return Agent(ScriptedModel(script), db, "local-only", offline=True)


@pytest.mark.parametrize("ending", ["done", "max_steps", "error", "interrupt"])
def test_the_lease_is_released_however_the_run_ends(db, tmp_path, ending):
    from edge_agent.agent import Callbacks, Settings

    agent = _agent(db, _script(tmp_path, slow_s=0.0))
    sid = agent.start(PROBLEM, Settings(max_steps=2 if ending == "max_steps" else 12))
    seen = []

    def step_end(step):
        seen.append(db.execute("SELECT pid FROM session_leases WHERE session_id = ?", [sid]).fetchone())
        if ending == "error" and step.index == 1:
            raise RuntimeError("boom")
        if ending == "interrupt" and step.index == 1:
            raise KeyboardInterrupt

    if ending in ("error", "interrupt"):
        with pytest.raises((RuntimeError, KeyboardInterrupt)):
            agent.run(sid, Callbacks(step_end=step_end))
    else:
        assert agent.run(sid, Callbacks(step_end=step_end)).status == ending
    assert seen and all(row == (os.getpid(),) for row in seen)  # held while it ran
    assert db["session_leases"].count == 0


def test_a_live_holder_blocks_a_dead_or_reused_pid_does_not(db, tmp_path):
    sid = _session(db, _script(tmp_path), status="running")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = store.lease.proc_start(holder.pid)
        db["session_leases"].insert({"session_id": sid, "pid": holder.pid, "pid_start": start, "token": "T",
                                     "purpose": "run", "acquired_at": "x"})
        with pytest.raises(SessionError, match=f"being continued by process {holder.pid}"):
            with store.session_lease(db, sid):
                pass
        with pytest.raises(SessionError, match="being continued"):
            store.rollback_to(db, sid, 1)
        # the same pid started at another time is another process: its lease is stale
        db.execute("UPDATE session_leases SET pid_start = ?", [(start or 0) + 1])
        with store.session_lease(db, sid):
            assert db.execute("SELECT pid FROM session_leases").fetchone() == (os.getpid(),)
        assert db["session_leases"].count == 0
    finally:
        holder.kill()
        holder.wait()
    db["session_leases"].insert({"session_id": sid, "pid": holder.pid, "pid_start": None, "token": "T",
                                 "purpose": "run", "acquired_at": "x"})
    with store.session_lease(db, sid):  # the holder is dead: reclaimed
        pass


def test_one_process_holds_a_session_once_another_thread_is_refused(db, tmp_path):
    sid = _session(db, _script(tmp_path), status="running")
    errors = []

    def other():
        from store import open_db

        other_db = open_db(tmp_path / "unit.db")
        try:
            with store.session_lease(other_db, sid):
                pass
        except SessionError as e:
            errors.append(str(e))
        finally:
            other_db.close()

    with store.session_lease(db, sid):
        with store.session_lease(db, sid):  # re-entered by the holder (rollback, then its run)
            t = threading.Thread(target=other)
            t.start()
            t.join()
        assert db["session_leases"].count == 1
    assert db["session_leases"].count == 0
    assert len(errors) == 1 and "being continued" in errors[0]


def test_a_writer_whose_lease_was_taken_over_cannot_commit(db, tmp_path):
    sid = _session(db, _script(tmp_path), n_steps=1, status="running")
    with store.session_lease(db, sid):
        db.execute("UPDATE session_leases SET token = 'OTHER', pid = ?", [os.getppid()])  # another live process
        model = ScriptedModel(_script(tmp_path))
        with pytest.raises(SessionError, match="being continued"):
            store.commit_step(db, sid, Step(index=1, author="local", kind="step", text="x", raw="x\n\n",
                                            token_ids=tuple(model.tokenize("x\n\n"))))
    assert [s.index for s in store.load_state(db, sid).steps] == [0]
    assert db["session_leases"].count == 1  # the other holder's lease is left alone


def test_migration_supersedes_duplicate_active_steps_and_adds_the_unique_rule(tmp_path):
    from sqlite_utils import Database

    from store.db import migrations

    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m004_session_leases")
    model = ScriptedModel(_script(tmp_path))
    sid = store.new_session(old, problem=PROBLEM, model=model.name, model_path=model.path, policy="local-only",
                            settings={})
    for n, i in enumerate((0, 1, 1, 2, 2)):  # what two resumes at once wrote before the fix
        old["steps"].insert({"id": f"S{n}", "session_id": sid, "idx": i, "author": "local", "kind": "step",
                             "text": f"s{i}", "raw": f"s{i}\n\n", "token_ids": "[]", "superseded_by": None})
    old["sessions"].update(sid, {"status": "done", "answer": "4"})
    ok = store.new_session(old, problem=PROBLEM, model="m", model_path="m", policy="local-only", settings={})
    old["steps"].insert({"id": "T0", "session_id": ok, "idx": 0, "author": "local", "kind": "step", "text": "fine",
                         "raw": "fine\n\n", "token_ids": "[]", "superseded_by": None})
    old.close()

    db = store.open_db(path)
    assert [s.index for s in store.load_state(db, sid).steps] == [0]
    every = store.load_steps(db, sid, include_superseded=True)
    assert len(every) == 5  # kept, never deleted
    state = store.load_state(db, sid)
    assert (state.status, state.answer) == ("running", None)  # resume regenerates from step 1
    [rb] = list(db["rollbacks"].rows_where("session_id = ?", [sid]))
    assert (rb["to_idx"], rb["superseded"]) == (1, 4)
    assert [s.index for s in store.load_state(db, ok).steps] == [0]
    with pytest.raises(sqlite3.IntegrityError):
        db["steps"].insert({"id": "dup", "session_id": ok, "idx": 0, "superseded_by": None})
    db.close()


# -- hole 6: another app's file -----------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, tuple]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode, p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("journal, our_name", [("delete", True), ("wal", True), ("delete", False), ("wal", False)])
def test_another_apps_database_is_refused_untouched(tmp_path, journal, our_name):
    app = tmp_path / "app"
    app.mkdir()
    path = app / "other_app.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    if our_name:
        conn.execute("CREATE TABLE sessions (token TEXT, user TEXT)")  # an unrelated table with our name
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()
    os.chmod(path, 0o644)
    before = _snapshot(app)
    script = _script(tmp_path)
    for args in (["sessions"], ["sessions", "--json"], ["show", "X"], ["resume", "X"], ["cost"],
                 ["solve", PROBLEM, "--model", f"script:{script}"]):
        proc = run_cli(*args, "--db", str(path))
        assert proc.returncode == 2, (args, proc.stdout.decode(), proc.stderr.decode())
        assert "not an edge-agent database" in _one_error_line(proc.stderr)
        assert _snapshot(app) == before, args  # bytes, mode, mtime; no -wal, -shm or .lock left


def test_an_empty_sqlite_file_is_taken_as_new(tmp_path):
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # zero bytes
    store.open_db(path).close()
    conn = sqlite3.connect(path)
    assert {"sessions", "steps", "session_leases"} <= {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


# -- a damaged schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("drop, name", [("TABLE", "steps"), ("INDEX", "steps_active_idx")])
def test_a_missing_table_of_ours_is_an_error_and_nothing_changes(tmp_path, drop, name):
    path = tmp_path / "edge.db"
    db = store.open_db(path)
    sid = _session(db, _script(tmp_path, slow_s=0.0), n_steps=1, status="running")
    db.close()
    conn = sqlite3.connect(path)
    conn.execute(f"DROP {drop} {name}")
    conn.commit()
    conn.close()
    before = _snapshot(tmp_path)
    for args in (["resume", sid], ["sessions"], ["show", sid]):
        proc = run_cli(*args, "--db", str(path))
        assert proc.returncode == 2, (args, proc.stdout.decode(), proc.stderr.decode())
        line = _one_error_line(proc.stderr)
        assert "damaged" in line and f"{drop.lower()} {name} missing" in line, line
        assert _snapshot(tmp_path) == before, args
    with pytest.raises(StoreError, match="damaged"):
        store.open_db(path)
    conn = sqlite3.connect(path)
    assert name not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}  # not silently recreated
    conn.close()


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
    from edge_agent.factory import agent_for_session

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    agent = agent_for_session(db, row["id"])  # what 'resume' would run with
    assert agent.caps.session_usd == 0.01
    assert agent.cloud.adapter.base_url == url
    db.close()
