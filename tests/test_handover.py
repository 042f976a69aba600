"""solve --samples N --handover-below A: the vote first; below A agreement the cloud alone solves the problem.

A scripted local model (its drafts chosen by seed) and a scripted OpenAI-shaped cloud on loopback."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edge_agent.handover import hands_over
from edge_agent.samples import vote
from tests.conftest import ROBE, run_cli

GREEDY = ["Blue takes 2 bolts.", "White takes 1 bolt.", "In all \\boxed{3}."]
CLOUD = "Blue is 2 bolts and white is half of that, 1 bolt. In all \\boxed{7}."


def _script(tmp_path, cases):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"steps": GREEDY, "when": [{"seed": s, "steps": v} for s, v in cases.items()]}))
    return f"script:{path}"


DISAGREE = {1: ["So \\boxed{4}."], 2: ["It is \\boxed{5}."]}  # 3, 4, 5: agreement 1/3
AGREE = {1: ["So \\boxed{3}."], 2: ["It is \\boxed{3.0}."]}  # 3, 3, 3: agreement 1


def _strict(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))


def _cloud_args(server, *extra):
    return ("--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
            *extra)


def _solve(tmp_path, server, cases, *extra):
    """``solve --samples 3 --handover-below 0.6`` on the scripted model and cloud, strict JSON out."""
    return _strict(run_cli("solve", ROBE, "--json", "--model", _script(tmp_path, cases), "--samples", "3",
                           "--handover-below", "0.6", *_cloud_args(server, *extra)))


def _rows(db, sql, args=()):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_low_agreement_hands_the_problem_to_the_cloud_and_its_answer_stands(tmp_path, fault_server):
    db = tmp_path / "edge.db"
    server = fault_server("script", replies=[CLOUD])
    report = _solve(tmp_path, server, DISAGREE)
    h = report["handover"]
    assert report["samples"]["winner"] == "3" and report["samples"]["agreement"] == pytest.approx(1 / 3, abs=1e-6)
    assert h["handed"] and h["cloud_answered"] and h["answer"] == "7" and report["answer"] == "7"
    assert h["below"] == 0.6 and h["status"] == "done" and h["cost_usd"] > 0
    assert len(server.requests) == 1  # one cloud call: the whole solution
    [(policy, parent)] = _rows(db, "SELECT policy, parent_id FROM sessions WHERE id = ?", [h["session_id"]])
    assert policy == "cloud-only" and parent == report["session_id"]
    assert _rows(db, "SELECT COUNT(*) FROM sessions")[0][0] == 4  # the greedy parent, 2 samples, the handover
    shown = _strict(run_cli("show", report["session_id"], "--json"))
    assert shown["answer"] == "7" and shown["handover"] == h
    assert _strict(run_cli("show", h["session_id"], "--json"))["handover_of"] == {"session_id": report["session_id"]}
    text = run_cli("show", report["session_id"]).stdout.decode()
    assert "handover: agreement below 0.60 · the cloud answered 7" in text
    again = run_cli("resume", report["session_id"])  # the vote and the handover are finished: nothing to resume
    assert again.returncode == 2 and "already finished" in again.stderr.decode()


def test_agreement_at_or_above_the_threshold_keeps_the_vote_and_spends_nothing(tmp_path, fault_server):
    server = fault_server("script", replies=[CLOUD])
    report = _strict(run_cli("solve", ROBE, "--json", "--model", _script(tmp_path, AGREE), "--samples", "3",
                             "--handover-below", "1", *_cloud_args(server)))
    assert report["answer"] == "3" and report["handover"]["handed"] is False and report["handover"]["session_id"] is None
    # a tie at the threshold keeps the vote too: 2 of 4 agree, below 0.5 is strictly below
    tie = {1: ["So \\boxed{4}."], 2: ["The answer is 4.0"], 3: ["It is \\boxed{3.0}"]}
    report = _strict(run_cli("solve", ROBE, "--json", "--model", _script(tmp_path, tie), "--samples", "4",
                             "--handover-below", "0.5", *_cloud_args(server), "--db", str(tmp_path / "tie.db")))
    assert report["samples"]["agreement"] == 0.5 and report["handover"]["handed"] is False
    assert server.requests == []


def test_live_and_replay_hand_over_the_same_problems():
    """The atlas's replay (vote_eval.handover_below) uses the live rule: strictly below the threshold."""
    from edge_agent.atlas_drafts import Drafts
    from edge_agent.vote_eval import Problem, handover_below

    def problem(pid, answers, cloud_correct):
        v = vote(answers)
        d = Drafts(pid, tuple(answers), tuple(a == "3" for a in answers), tuple(10 for _ in answers),
                   tuple(0.5 for _ in answers), v.winner, v.winner == "3", v.agreement)
        return Problem(pid, d, cloud_correct, 100, 0.001)

    ps = [problem("a", ["3", "4", "5"], True), problem("b", ["4", "4", "3", "3"], True),
          problem("c", ["4", "4", "4"], True)]
    got = handover_below(ps, 0.5)
    assert got["handed"] == [vote(["3", "4", "5"]).agreement < 0.5, False, False] == [True, False, False]
    assert [hands_over(p.drafts.agreement, 0.5) for p in ps] == got["handed"]
    assert got["accuracy"] == pytest.approx(1 / 3)  # a: the cloud's; b: the tie goes to the greedy 4, wrong; c: wrong
    assert got["share_tokens"] == pytest.approx(1 / 3) and got["share_usd"] == pytest.approx(1 / 3)
    from edge_agent.vote_eval import thresholds

    rows = {r["below"]: r for r in thresholds(ps)}  # each agreement level the drafts take, above the lowest
    assert sorted(rows) == [0.5, 1.0]
    assert rows[0.5]["handed"] == pytest.approx(1 / 3, abs=1e-4) and rows[1.0]["handed"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows[1.0]["accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # a and b handed, both right in the cloud


def test_a_cap_the_handover_cannot_pay_sends_nothing_and_the_vote_stands(tmp_path, fault_server):
    server = fault_server("script", replies=[CLOUD])
    report = _solve(tmp_path, server, DISAGREE, "--max-cost", "0.000001")
    h = report["handover"]
    assert server.requests == []  # nothing left the process
    assert h["handed"] and not h["cloud_answered"] and h["cost_usd"] == 0 and report["answer"] == "3"
    db = tmp_path / "edge.db"
    assert _rows(db, "SELECT COALESCE(SUM(cost_nusd), 0) FROM cloud_calls")[0][0] == 0
    denied = _rows(db, "SELECT COUNT(*) FROM trigger_events WHERE session_id = ? AND trigger = 'budget_denied'",
                   [h["session_id"]])
    assert denied[0][0] >= 1  # the refusal is recorded with the handover's session


def test_kill_9_during_the_handover_call_then_resume_finishes_it_once(tmp_path, fault_server):
    db = tmp_path / "edge.db"
    server = fault_server("hang", hang_s=60)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--json", "--model", _script(tmp_path, DISAGREE),
         "--samples", "3", "--handover-below", "0.6", *_cloud_args(server)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not server.requests:  # the handover's call is in flight
        time.sleep(0.02)
    assert server.requests, proc.communicate()[1].decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _rows(db, "SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'")[0][0] == 1
    server.mode, server.replies = "script", [CLOUD]
    parent = _rows(db, "SELECT id FROM sessions WHERE parent_id IS NULL")[0][0]
    report = _strict(run_cli("resume", parent, "--json"))
    assert report["answer"] == "7" and report["handover"]["cloud_answered"]
    assert len(_rows(db, "SELECT id FROM sessions WHERE policy = 'cloud-only'")) == 1  # created once
    assert _rows(db, "SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'")[0][0] == 0
    settled = dict(_rows(db, "SELECT id, amount_nusd FROM budget_reservations"))
    calls = dict(_rows(db, "SELECT reservation_id, cost_nusd FROM cloud_calls"))
    assert set(calls) == set(settled) and len(calls) == 2  # the killed call booked at its reservation, then one more
    assert all(calls[r] <= settled[r] for r in settled)


@pytest.mark.parametrize("args, message", [
    (("--samples", "3", "--handover-below", "0"), "--handover-below must be an agreement share > 0 and <= 1"),
    (("--samples", "3", "--handover-below", "1.5"), "--handover-below must be an agreement share > 0 and <= 1"),
    (("--samples", "3", "--handover-below", "nan"), "--handover-below must be an agreement share > 0 and <= 1"),
    (("--handover-below", "0.6"), "--handover-below needs a vote: add --samples N"),
    (("--samples", "3", "--handover-below", "0.6", "--offline"), "--handover-below hands problems to the cloud"),
])
def test_bad_handover_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    proc = run_cli("solve", ROBE, "--model", _script(tmp_path, AGREE), "--cloud", "openai:m",
                   "--cloud-base-url", "http://127.0.0.1:9/v1", "--price-in", "1", "--price-out", "2", *args)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "edge.db").exists() or _rows(tmp_path / "edge.db", "SELECT COUNT(*) FROM sessions")[0][0] == 0


def test_a_damaged_stored_threshold_is_one_line_naming_it(tmp_path, fault_server):
    db = tmp_path / "edge.db"
    server = fault_server("script", replies=[CLOUD])
    report = _solve(tmp_path, server, AGREE)
    sid = report["session_id"]
    conn = sqlite3.connect(db)
    settings = json.loads(conn.execute("SELECT settings FROM sessions WHERE id = ?", [sid]).fetchone()[0])
    settings["samples"]["handover_below"] = "lots"
    conn.execute("UPDATE sessions SET settings = ? WHERE id = ?", [json.dumps(settings), sid])
    conn.commit()
    conn.close()
    for cmd in (("show", sid, "--json"), ("resume", sid)):
        proc = run_cli(*cmd)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "samples.handover_below" in err and "Traceback" not in err, err
