"""verify-repair's review is part of the session: a kill or Ctrl-C at any point of it is resumed, nothing paid is
paid again, and the resumed run decides as an uninterrupted one (issue 32, items 6, 7, 9 and 10).

A scripted local model and a scripted reading cloud (``tests.servers.ReadingCloud``) make every run decide the
same way; each kill waits for a point of the work seen in the database (an open reservation of a read or of the
repair, which the cloud holds), never for a time.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROBE, run_cli
from tests.servers import ReadingCloud

DRAFT = ["Blue fiber: 2 bolts.", "White fiber is half of that: 2 / 2 = 3 bolts.", "Total: 2 + 3 = \\boxed{5}."]
REPAIR = "White fiber is half of that: 2 / 2 = 1 bolt."
WRONG = {"= 3 bolts": -5.0}  # the read disbelieves the draft's step 1: suspicion far above tau, step 1 flagged
DISTRUSTED = ("= 1 bolt", -20.0)  # ... and, after the repair, the edge's finish even more: the draft is restored


@pytest.fixture
def setup(tmp_path):
    script = tmp_path / "draft.json"
    script.write_text(json.dumps(DRAFT))
    servers = []

    def make(restore: bool) -> tuple[ReadingCloud, list[str], dict[str, str]]:
        cloud = ReadingCloud(REPAIR, marks=WRONG, after=DISTRUSTED if restore else None)
        servers.append(cloud)
        args = ["--model", f"script:{script}", "--policy", "verify-repair", "--cloud", "openai:local",
                "--cloud-base-url", cloud.url, "--json"]
        return cloud, args, {"EDGE_AGENT_CONFIG": str(tmp_path / "none.toml")}

    yield make
    for s in servers:
        s.release.set()
        s.close()


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(tmp_path / "edge.db"))


def _ro(tmp_path: Path, sql: str, args=()) -> list:
    try:
        conn = sqlite3.connect(f"file:{tmp_path / 'edge.db'}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute(sql, list(args)).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or between migrations
        return []


def _at(tmp_path: Path, point: str) -> bool:
    """The solve is at ``point``: a cloud call of that kind holds an open reservation."""
    purpose = "rewrite_step" if point == "repair" else "read"
    open_ = _ro(tmp_path, "SELECT COUNT(*) FROM budget_reservations WHERE status = 'open' AND purpose = ?", [purpose])
    if not open_ or not open_[0][0]:
        return False
    repaired = _ro(tmp_path, "SELECT COUNT(*) FROM cloud_calls WHERE purpose = 'rewrite_step'")[0][0]
    return repaired > 0 if point == "second read" else repaired == 0


HOLD = {"read": ("read", 1), "repair": ("chat", 1), "second read": ("read", 2)}


def _interrupt_at(tmp_path, cloud, args, env, point, sig=signal.SIGKILL) -> subprocess.CompletedProcess:
    """Start the solve, stop it with ``sig`` while the cloud holds the call of ``point``; the stopped process."""
    cloud.hold_at(*HOLD[point])
    # the default SIGINT handler whatever this test's parent ignores (a background job starts with SIGINT ignored)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "solve", ROBE, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _at(tmp_path, point):
        assert time.monotonic() < deadline, f"the solve never reached the {point}"
        time.sleep(0.005)
    assert proc.poll() is None, f"the solve ended before the {point}: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    cloud.hold = set()
    cloud.release.set()  # the held call answers a client that is gone
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _outcome(tmp_path: Path, sid: str, db: str = "edge.db") -> dict:
    """What a user is left with: the answer, the active steps, the review's decisions, the calls that were paid."""
    conn = sqlite3.connect(str(tmp_path / db))
    status, answer = conn.execute("SELECT status, answer FROM sessions WHERE id = ?", [sid]).fetchone()
    steps = conn.execute("SELECT idx, author, text FROM steps WHERE session_id = ? AND superseded_by IS NULL "
                         "ORDER BY idx", [sid]).fetchall()
    decisions = conn.execute("SELECT action, step_idx FROM trigger_events WHERE session_id = ? AND trigger = "
                             "'verify_repair' ORDER BY id", [sid]).fetchall()
    answered = conn.execute("SELECT purpose, COUNT(*) FROM cloud_calls WHERE session_id = ? AND status = 'ok' "
                            "GROUP BY purpose ORDER BY purpose", [sid]).fetchall()
    conn.close()
    return {"status": status, "answer": answer, "steps": steps, "decisions": decisions, "answered": answered}


def _uninterrupted(tmp_path, args, env) -> dict:
    """The same solve, run through, in a database of its own."""
    r = run_cli("solve", ROBE, *args, "--db", str(tmp_path / "plain.db"), env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    return _outcome(tmp_path, json.loads(r.stdout)["session_id"], "plain.db")


def _all_steps(tmp_path: Path, sid: str) -> list:
    return _db(tmp_path).execute("SELECT id, idx, author, text, token_ids FROM steps WHERE session_id = ? ORDER BY id",
                                 [sid]).fetchall()


def _resumed_after_kill(tmp_path, cloud, args, env, point) -> tuple[str, dict]:
    killed = _interrupt_at(tmp_path, cloud, args, env, point)
    assert killed.returncode == -signal.SIGKILL
    sid = _db(tmp_path).execute("SELECT id FROM sessions ORDER BY id DESC LIMIT 1").fetchone()[0]
    before = _all_steps(tmp_path, sid)
    resumed = run_cli("resume", sid, "--json", env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-800:]
    assert set(before) <= set(_all_steps(tmp_path, sid))  # every committed step is kept verbatim (some superseded)
    conn = _db(tmp_path)
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0
    # the call killed in flight is booked at its reservation, once; every reservation has exactly one ledger row
    reserved = dict(conn.execute("SELECT id, amount_nusd FROM budget_reservations WHERE session_id = ?", [sid]))
    booked = conn.execute("SELECT reservation_id, cost_nusd, status FROM cloud_calls WHERE session_id = ?",
                          [sid]).fetchall()
    assert sorted(rid for rid, _, _ in booked) == sorted(reserved)
    assert [s for _, _, s in booked].count("reclaimed") == 1
    assert all(cost <= reserved[rid] for rid, cost, _ in booked)
    return sid, _outcome(tmp_path, sid)


@pytest.mark.parametrize("point", ["read", "repair", "second read"])
def test_a_kill_during_the_review_is_resumed_and_no_answered_call_is_paid_again(tmp_path, setup, point):
    cloud, args, env = setup(restore=False)
    expected = _uninterrupted(tmp_path, args, env)
    assert expected["decisions"] == [("rewrite", 1), ("accept", 2)]  # read, repair, read the repair and keep it
    assert expected["answered"] == [("read", 2), ("rewrite_step", 1)]
    _, got = _resumed_after_kill(tmp_path, cloud, args, env, point)
    got.pop("decisions"), expected.pop("decisions")  # (item 7's test compares them)
    assert got == expected  # the same answer and steps; each answered call paid for once, the killed one booked


@pytest.mark.parametrize("restore", [False, True], ids=["keep", "restore"])
@pytest.mark.parametrize("point", ["repair", "second read"])
def test_a_resumed_review_keeps_or_restores_exactly_as_an_uninterrupted_run(tmp_path, setup, point, restore):
    cloud, args, env = setup(restore=restore)
    expected = _uninterrupted(tmp_path, args, env)
    assert expected["decisions"] == [("rewrite", 1), ("restore" if restore else "accept", 1 if restore else 2)]
    kept = REPAIR if not restore else DRAFT[1]
    assert [text for _, _, text in expected["steps"]] == [DRAFT[0], kept, DRAFT[2]]
    _, got = _resumed_after_kill(tmp_path, cloud, args, env, point)
    assert got == expected  # the same decision on the same grounds: the draft's trust outlived the process


def test_ctrl_c_during_the_review_says_how_to_resume_and_that_works(tmp_path, setup):
    cloud, args, env = setup(restore=False)
    stopped = _interrupt_at(tmp_path, cloud, args, env, "read", signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr.decode()[-800:]
    err = stopped.stderr.decode()
    hint = err[err.index("edge-agent resume "):].split("'")[0].split()
    assert "Traceback" not in err and hint[:2] == ["edge-agent", "resume"]
    resumed = run_cli(*hint[1:], "--json", env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-800:]
    out = json.loads(resumed.stdout)
    assert (out["status"], out["answer"]) == ("done", "5")
    assert [(s["author"], s["text"]) for s in out["steps"]] == [("local", DRAFT[0]), ("cloud", REPAIR),
                                                                  ("local", DRAFT[2])]
    assert _db(tmp_path).execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0


@pytest.mark.parametrize("fault", ["budget", "http_500"])
def test_a_repair_the_cloud_cannot_make_leaves_the_draft_and_stores_why(tmp_path, setup, fault):
    cloud, args, env = setup(restore=False)
    if fault == "http_500":
        cloud.status = 500
    cap = ["--max-cost", "0.0004"] if fault == "budget" else []  # pays the read ($0.00024), not the repair's reservation
    r = run_cli("solve", ROBE, *args, *cap, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    out = json.loads(r.stdout)
    assert (out["status"], out["answer"]) == ("done", "5")
    assert [(s["author"], s["text"]) for s in out["steps"]] == [("local", t) for t in DRAFT]  # the draft stands
    assert [e["action"] for e in out["events"] if e["trigger"] == "verify_repair"] == ["cloud_failed"]
    why = [e for e in out["events"] if e["detail"].get("purpose") == "rewrite_step"]
    assert len(why) == 1, out["events"]
    if fault == "budget":  # the refusal, with its scope and amounts (committed + needed against the cap)
        assert why[0]["trigger"] == "budget_denied" and why[0]["detail"]["scope"] == "session"
        assert why[0]["threshold"] == pytest.approx(0.0004) and why[0]["score"] > 0.0004
    else:
        assert why[0]["trigger"] == "cloud_unavailable" and why[0]["detail"]["kind"] == "http_500"


def test_a_rollback_during_an_unfinished_review_starts_the_review_again(tmp_path, setup):
    cloud, args, env = setup(restore=False)
    killed = _interrupt_at(tmp_path, cloud, args, env, "read")
    assert killed.returncode == -signal.SIGKILL
    sid = _db(tmp_path).execute("SELECT id FROM sessions ORDER BY id DESC LIMIT 1").fetchone()[0]
    back = run_cli("rollback", sid, "--to", "1", "--no-continue", env=env, timeout=60)
    assert back.returncode == 0, back.stderr.decode()[-800:]
    resumed = run_cli("resume", sid, "--json", env=env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr.decode()[-800:]
    out = json.loads(resumed.stdout)  # the edge wrote steps 1 and 2 again; the new draft was read and repaired
    assert (out["status"], out["answer"]) == ("done", "5")
    assert [s["text"] for s in out["steps"]] == [DRAFT[0], REPAIR, DRAFT[2]]


def _replay(chunks: list[dict]) -> str:
    """The answer an SSE client shows: each step's text, a ``rollback_to`` k dropping the steps from k on."""
    steps: list[tuple[int, str]] = []
    for c in chunks:
        ext = c.get("edge_agent") or {}
        if ext.get("step") is None:
            continue
        if ext.get("rollback_to") is not None:
            steps = [(i, t) for i, t in steps if i < ext["rollback_to"]]
        steps.append((ext["step"], c["choices"][0]["delta"]["content"].lstrip("\n")))
    return "\n\n".join(t for _, t in steps)


@pytest.mark.parametrize("restore", [False, True], ids=["keep", "restore"])
def test_a_streamed_review_shows_the_answer_the_whole_response_gives(tmp_path, setup, restore):
    from cloud.client import make_cloud
    from edge_agent.agent import Agent, Settings
    from edge_agent.scripted import ScriptedModel
    from edge_agent.serve import ServeOptions, create_app
    from store import open_db
    from tests.test_serve import _post, _start

    cloud, args, _ = setup(restore=restore)
    script = args[args.index("--model") + 1].removeprefix("script:")
    made: dict = {}

    def make_agent(policy):
        if not made:  # on the worker thread, which owns the connection
            made["db"] = open_db(tmp_path / "serve.db")
        return Agent(ScriptedModel(script), made["db"], policy, cloud=make_cloud("openai:local", base_url=cloud.url))

    options = ServeOptions(default_policy="verify-repair", resolve_policy=lambda spec: spec,
                           settings=Settings(max_steps=6, max_step_tokens=64), has_cloud=True)
    server, thread, base = _start(create_app(make_agent, options))
    try:
        body = {"model": "edge-agent", "messages": [{"role": "user", "content": ROBE}]}
        status, _, whole = _post(f"{base}/chat/completions", json.dumps(body).encode())
        assert status == 200, whole
        text = whole["choices"][0]["message"]["content"]
        assert text == "\n\n".join([DRAFT[0], DRAFT[1] if restore else REPAIR, DRAFT[2]])
        import urllib.request

        req = urllib.request.Request(f"{base}/chat/completions", json.dumps({**body, "stream": True}).encode(),
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            lines = r.read().decode().splitlines()
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert _replay(chunks) == text  # the replaced draft step is marked, so the client shows the same answer
        assert chunks[-1]["edge_agent"]["answer"] == whole["edge_agent"]["answer"] == "5"
    finally:
        server.should_exit = True
        thread.join(15)
