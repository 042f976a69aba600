"""verify-repair: the cloud reads the finished draft, repairs the step it flags, and keeps the finish it trusts."""

from __future__ import annotations

import json

from triggers import get_policy
from triggers.reading import StepRead, TraceRead
from triggers.types import Step
from tests.conftest import ROBE, run_cli


def _read(gaps, n=10):
    return TraceRead(tuple(StepRead(i, n, -g - 1.0, -1.0, 0, -1.0) for i, g in enumerate(gaps)))


def _steps(k):
    return [Step(i, "local", "step", f"s{i}", f"s{i}\n\n", (i,)) for i in range(k)]


def test_a_suspicious_draft_is_sent_back_to_the_most_flagged_step_and_a_believable_one_stands():
    p = get_policy("verify-repair(tau=5)")
    p.reset("q")
    steps = _steps(5)
    a = p.review(steps, "done", 0, _read([0.5, 3.0, 4.0, 0.1, 9.0]))  # suspicion 16.6; step 4 is past max_k
    assert (a.kind, a.at, a.score, a.threshold) == ("rewrite", 2, 16.6, 5.0)
    p.reset("q")
    a = p.review(steps, "done", 0, _read([0.5, 1.0, 1.0, 0.1, 0.2]))
    assert a.kind == "accept" and a.score < a.threshold


def test_the_repair_is_undone_when_the_read_trusts_the_draft_more_and_rounds_bound_it():
    p = get_policy("verify-repair(tau=1,rounds=1)")
    p.reset("q")
    steps = _steps(4)
    first = _read([2.0, 0.0, 0.0, 0.0])  # trust -0.05
    assert p.review(steps, "done", 0, first).at == 0
    worse = _read([6.0, 0.0, 0.0, 0.0])  # the repaired finish: trust -0.15
    a = p.review(steps, "done", 1, worse)
    assert a.kind == "restore" and a.at == 0 and p.restore_steps == steps and p.restore_status == "done"
    p.reset("q")
    p.review(steps, "done", 0, first)
    better = _read([0.5, 0.0, 0.0, 0.0])
    a = p.review(steps, "done", 1, better)
    assert a.kind == "accept"  # kept the repair, and rounds=1 allows no second one
    assert p.review(steps, "done", 1, _read([9.0, 9.0, 0, 0])).kind == "accept"


def test_no_read_leaves_the_draft():
    p = get_policy("verify-repair")
    p.reset("q")
    assert p.review(_steps(3), "done", 0, None).kind == "accept"


def test_a_live_solve_reads_repairs_once_and_books_every_read(llama_server, tmp_path):
    r = run_cli("solve", ROBE, "--policy", "verify-repair(tau=-1000,rounds=1)", "--cloud", "openai:local",
                "--cloud-base-url", llama_server, "--max-steps", "3", "--max-step-tokens", "24", "--json",
                env={"EDGE_AGENT_CONFIG": str(tmp_path / "none.toml")}, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-500:]
    out = json.loads(r.stdout)
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "edge.db"))
    purposes = [p for (p,) in db.execute("select purpose from cloud_calls where session_id = ?", [out["session_id"]])]
    assert purposes.count("read") == 2 and purposes.count("rewrite_step") == 1  # read, repair, read the repair
    reads = db.execute("select input_tokens, output_tokens, status from cloud_calls where purpose = 'read'").fetchall()
    assert all(o == 0 and i > 0 and s == "ok" for i, o, s in reads)
    assert out["usage"]["cost_usd"] > 0


def test_a_cap_that_cannot_pay_the_read_leaves_the_draft_and_says_so(llama_server, tmp_path):
    r = run_cli("solve", ROBE, "--policy", "verify-repair(tau=-1000)", "--cloud", "openai:local",
                "--cloud-base-url", llama_server, "--max-steps", "2", "--max-step-tokens", "16", "--max-cost", "0.0000001",
                "--json", env={"EDGE_AGENT_CONFIG": str(tmp_path / "none.toml")}, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-500:]
    out = json.loads(r.stdout)
    assert all(s["author"] == "local" for s in out["steps"])
    assert any(e["trigger"] == "budget_denied" for e in out["events"])
    assert out["usage"]["cost_usd"] == 0


def test_a_cloud_without_prompt_logprobs_is_asked_the_judge_and_an_event_says_so(llama_server, tmp_path):
    cfg = tmp_path / "judge.toml"
    cfg.write_text('[cloud]\nread = "judge"\n')
    r = run_cli("solve", ROBE, "--policy", "verify-repair", "--cloud", "openai:local", "--cloud-base-url", llama_server,
                "--max-steps", "2", "--max-step-tokens", "16", "--json", env={"EDGE_AGENT_CONFIG": str(cfg)}, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-500:]
    out = json.loads(r.stdout)
    judged = [e for e in out["events"] if e["trigger"] == "read_by_judge"]
    assert judged and "no prompt log-probs" in json.dumps(judged)
    import sqlite3

    db = sqlite3.connect(str(tmp_path / "edge.db"))
    rows = db.execute("select output_tokens, mode from cloud_calls where purpose = 'read' and session_id = ?",
                      [out["session_id"]]).fetchall()
    assert rows and all(o <= 8 and m != "echo" for o, m in rows)  # a chat call of a few tokens, not a prefill


def test_the_judge_reply_is_parsed_to_a_step_or_none():
    from triggers.reading import JudgeRead, parse_judge

    assert parse_judge("2", 4) == 2 and parse_judge("Step 1.", 4) == 1 and parse_judge("none", 4) is None
    assert parse_judge("9", 4) == "unparsed" and parse_judge("hmm", 4) == "unparsed"
    j = JudgeRead(1, 4)
    assert j.flagged(4) == 1 and j.flagged(1) is None and j.trust == 0.0 and j.suspicion > 1e9
    assert JudgeRead(None, 4).flagged(4) is None and JudgeRead(None, 4).trust == 1.0
