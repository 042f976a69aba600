"""TrigReason: each detector on crafted steps, the real embedder, and the agent's plan / offload /
intervention-with-rollback paths against a real HTTP endpoint."""

import json
import sqlite3

import pytest

from edge_agent.values import Signals, Step
from tests.conftest import run_cli
from triggers import detectors as d
from triggers import get_policy

PROBLEM = "Ann has 3 boxes with 4 pens each. She gives away 5 pens. How many pens are left?"


def _s(i, text, author="local", kind="step", **sig):
    return Step(i, author, kind, text, text + "\n\n", (1,) * 5, signals=Signals(**sig))


def test_overconfidence_fires_on_an_early_confident_answer_and_an_unsupported_number():
    early = _s(0, "The answer is \\boxed{7}.", mean_top1=0.97, has_answer=True)
    e = d.overconfidence(PROBLEM, [], early, confidence_min=0.9, min_steps=2)
    assert e.fired and e.detail["reason"] == "early_answer" and e.score == 0.97 and e.threshold == 0.9
    hesitant = _s(0, "The answer is \\boxed{7}.", mean_top1=0.6, has_answer=True)
    assert not d.overconfidence(PROBLEM, [], hesitant, confidence_min=0.9, min_steps=2).fired
    jump = _s(1, "So she has 19 pens.", mean_top1=0.95)
    e = d.overconfidence(PROBLEM, [_s(0, "3 boxes hold 4 pens each.")], jump, confidence_min=0.9, min_steps=2)
    assert e.fired and e.detail["reason"] == "unsupported_number" and e.detail["new_numbers"] == ["19"]
    shown = _s(1, "3 x 4 = 12 pens.", mean_top1=0.95)
    assert not d.overconfidence(PROBLEM, [_s(0, "Count the pens.")], shown, confidence_min=0.9, min_steps=2).fired
    # a plan with 4 sub-goals makes an answer at step 2 early
    plan = _s(0, "Plan:\n1. a\n2. b\n3. c\n4. d", author="cloud", kind="plan")
    e = d.overconfidence(PROBLEM, [plan, _s(1, "3 * 4 = 12")], _s(2, "12 - 5 = 7, \\boxed{7}", mean_top1=0.95,
                                                                   has_answer=True), confidence_min=0.9, min_steps=2)
    assert e.fired and e.detail["expected_steps"] == 4


def test_uncertainty_and_difficulty():
    assert d.uncertainty(_s(0, "x", first_top1=0.2, min_top1=0.5), first_top1_min=0.3, min_top1_min=0.05).fired
    assert d.uncertainty(_s(0, "x", first_top1=0.9, min_top1=0.01), first_top1_min=0.3, min_top1_min=0.05).fired
    assert not d.uncertainty(_s(0, "x", first_top1=0.9, min_top1=0.2), first_top1_min=0.3, min_top1_min=0.05).fired
    calm = _s(0, "3 * 4 = 12", max_entropy=1.0)
    assert not d.difficulty(PROBLEM, calm, entropy_max=1.5, words_max=45).fired
    e = d.difficulty(PROBLEM, _s(0, "hmm", max_entropy=2.0), entropy_max=1.5, words_max=45)
    assert e.fired and e.detail["first_step_max_entropy"] == 2.0
    assert d.difficulty("word " * 50, calm, entropy_max=1.5, words_max=45).fired


def test_loop_by_ngrams_by_stalling_and_by_embedding():
    kw = dict(cosine_min=0.9, window=3, ngram_share=0.6, stall_steps=3)
    a = "We multiply the number of boxes by the pens in each box to get the pens"
    steps = [_s(0, "3 * 4 = 12 pens."), _s(1, a)]
    e = d.loop(PROBLEM, steps, _s(2, a + " again"), **kw)
    assert e.fired and e.detail["test"] == "ngram" and e.score >= 0.6
    assert not d.loop(PROBLEM, steps, _s(2, "12 - 5 = 7 pens remain."), **kw).fired
    stall = [_s(0, "3 * 4 = 12 pens."), _s(1, "So there are 12 pens in the boxes."), _s(2, "Ann counts her pens.")]
    assert not d.loop(PROBLEM, stall[:2], stall[2], **kw).fired  # 12 was new two steps ago: progress
    e = d.loop(PROBLEM, stall, _s(3, "Ann then thinks about the 12 pens and 5 she gives."), **kw)
    assert e.fired and e.detail["test"] == "no_progress"
    # a cloud step resets the window: the local model is not looping on the cloud's words
    after_cloud = [_s(0, a), _s(1, "12 - 5 = 7", author="cloud")]
    assert not d.loop(PROBLEM, after_cloud, _s(2, a), **kw).fired

    def embed(texts):  # injected: every text maps to the same unit vector
        return [[1.0, 0.0] for _ in texts]

    e = d.loop(PROBLEM, [_s(0, "3 * 4 = 12")], _s(1, "Twelve minus five leaves 7."), **{**kw, "ngram_share": 1.1},
               embed=embed)
    assert e.fired and e.detail["test"] == "embedding" and e.detail["cosine"] == pytest.approx(1.0)
    e = d.loop(PROBLEM, [_s(0, "3 * 4 = 12")], _s(1, "Twelve minus five leaves 7."), **kw, embed=lambda t: None)
    assert not e.fired and e.detail["embedding"] == "warming up"


def test_the_real_embedder_scores_paraphrases_close_and_other_text_far():
    from triggers.embed import Embedder

    emb = Embedder()
    assert emb.encode(["x"]) is None  # not ready yet: never blocks
    assert emb.wait(120), emb.error
    a, b, c = emb.encode(["She has 12 pens left in the box.", "There are 12 pens left in her box.",
                          "The train leaves the station at noon."])
    cos = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    assert cos(a, b) > 0.8 > 0.4 > cos(a, c)


def test_policy_decisions_and_caps():
    p = get_policy("trigreason(plan=always,max_interventions=1,max_cloud=2)")
    assert p.before_step([]).kind == "plan"
    loop_ev = d.loop(PROBLEM, [_s(0, "a b c d e")], _s(1, "a b c d e"), cosine_min=0.9, window=3, ngram_share=0.6,
                     stall_steps=3)
    assert p.decide([_s(0, "a b c d e")], _s(1, "a b c d e"), [loop_ev]).kind == "intervene"
    done = [_s(0, "fix", author="cloud", kind="intervention"), _s(1, "a b c d e")]
    assert p.decide(done, _s(2, "a b c d e"), [loop_ev]).kind == "rewrite"  # no ping-pong
    two = [_s(0, "p", author="cloud", kind="plan"), _s(1, "fix", author="cloud", kind="intervention")]
    assert p.decide(two, _s(2, "a"), [loop_ev]).kind == "accept"  # max_cloud reached
    assert get_policy("trigreason").label == "trigreason"
    with pytest.raises(Exception, match="plan must be"):
        get_policy("trigreason(plan=sometimes)")


def test_a_loop_intervention_rolls_back_and_the_local_model_continues(fault_server, tmp_path):
    fix = "Step fixed: 3 * 4 = 12 pens, and 12 - 5 = 7."
    server = fault_server("script", replies=[json.dumps({"first_wrong_step": 0, "next_step": fix})])
    # ngram_share=0 makes the loop test fire on the second local step whatever the text; 16-token steps
    # leave the real model no room to finish in step 0
    policy = "trigreason(plan=never,offload=False,loop=True,ngram_share=0.0,max_interventions=1,max_cloud=1)"
    proc = run_cli("solve", PROBLEM, "--json", "--policy", policy, "--cloud", "openai:m", "--cloud-base-url",
                   server.url + "/v1", "--price-in", "1", "--price-out", "2", "--max-steps", "4", "--max-step-tokens", "16")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    first = report["steps"][0]
    assert (first["author"], first["kind"], first["text"], first["trigger"]) == ("cloud", "intervention", fix, "loop")
    assert all(s["author"] == "local" for s in report["steps"][1:])
    loop = [e for e in report["events"] if e["trigger"] == "loop"]
    assert loop[0]["action"] == "intervene" and loop[0]["detail"]["test"] == "ngram"
    assert any(e["trigger"] == "local_draft" and e["action"] == "replaced" for e in report["events"])
    conn = sqlite3.connect(tmp_path / "edge.db")
    assert conn.execute("SELECT to_idx, reason, superseded FROM rollbacks").fetchall() == [(0, "intervention", 1)]
    kept = conn.execute("SELECT author, superseded_by IS NOT NULL FROM steps WHERE idx = 0 ORDER BY created_at").fetchall()
    assert kept == [("local", 1), ("cloud", 0)]  # the wrong step is kept, marked superseded
    # KV reuse: the step after the rollback evaluated the inserted tokens and its own, not the prompt again
    # (unless the model closed its turn right after the cloud's step: any text is allowed here)
    after = conn.execute("SELECT evaluated, tokens FROM steps WHERE idx = 1 AND superseded_by IS NULL").fetchall()
    assert after or report["status"] == "ended"
    inserted = conn.execute("SELECT tokens FROM steps WHERE idx = 0 AND author = 'cloud'").fetchone()[0]
    assert all(evaluated <= inserted + tokens + 2 for evaluated, tokens in after)
    review = server.requests[0]["body"]["messages"][1]["content"]  # the cloud saw the problem and both steps
    assert PROBLEM in review and "Step 0:" in review and "Step 1:" in review
    shown = run_cli("show", report["session_id"], "--events", "--all").stdout.decode()
    assert "⚑ loop" in shown and "intervene" in shown and "superseded" in shown


def test_a_plan_comes_first_and_a_refused_one_is_recorded(llama_server, tmp_path):
    proc = run_cli("solve", PROBLEM, "--json", "--policy", "trigreason(plan=always,loop=False)", "--cloud", "openai:local",
                   "--cloud-base-url", llama_server, "--max-steps", "2", "--max-step-tokens", "24")
    report = json.loads(proc.stdout)
    plan = report["steps"][0]
    assert (plan["author"], plan["kind"], plan["trigger"]) == ("cloud", "plan", "strategic_initiation")
    assert plan["text"].startswith("Plan:") and report["steps"][1]["author"] == "local"
    denied = run_cli("solve", PROBLEM, "--json", "--policy", "trigreason(plan=always,loop=False)", "--cloud", "openai:local",
                     "--cloud-base-url", llama_server, "--max-steps", "2", "--max-step-tokens", "24", "--max-cost", "0")
    rep = json.loads(denied.stdout)
    assert all(s["author"] == "local" for s in rep["steps"]) and rep["steps"]
    assert [e["trigger"] for e in rep["events"]][:2] == ["strategic_initiation", "budget_denied"]
    shown = run_cli("show", rep["session_id"], "--events").stdout.decode()
    assert "budget_denied" in shown


LOOPING = "Tom has 5 apples. He eats one apple each day. Describe each day in its own paragraph until he has none left."
LOOP_STEP = "Day 1: Tom eats one apple, so Tom has one apple less than before and the apples go on."


def test_a_looping_model_gets_an_intervention_and_a_kill_during_it_resumes(fault_server, tmp_path):
    """Default loop thresholds on a model that repeats itself (scripted, so it loops on any build);
    SIGKILL while the cloud is reviewing; resume reclaims the dead call, applies the rollback and completes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "loop.json"
    script.write_text(json.dumps({"steps": [LOOP_STEP], "then": "repeat"}))
    server = fault_server("hang", hang_s=120)
    policy = "trigreason(plan=never,offload=False,max_interventions=1,max_cloud=1)"
    args = ["--model", f"script:{script}", "--policy", policy, "--cloud", "openai:m", "--cloud-base-url",
            server.url + "/v1", "--price-in", "1", "--price-out", "2", "--max-steps", "4", "--max-step-tokens", "128"]
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "solve", LOOPING, "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    deadline = time.time() + 180
    while time.time() < deadline and not server.requests and proc.poll() is None:
        time.sleep(0.05)
    assert server.requests, "the looping model got no intervention: " + proc.stderr.read().decode()[-500:]
    assert "first_wrong_step" in server.requests[0]["body"]["messages"][0]["content"]  # the review prompt
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(tmp_path / "edge.db")
    sid, status = conn.execute("SELECT id, status FROM sessions").fetchone()
    before = conn.execute("SELECT id, idx, author, text FROM steps").fetchall()
    assert status == "running" and [(r[1], r[2]) for r in before] == [(0, "local")]
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 1
    conn.close()

    fix = "Day 1: Tom eats one apple, so he has 5 - 1 = 4 apples left."
    server.mode, server.replies = "script", [json.dumps({"first_wrong_step": 0, "next_step": fix})]
    resumed = run_cli("resume", sid, "--json")
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = json.loads(resumed.stdout)
    assert report["status"] == "max_steps"  # the model goes on repeating; max_interventions=1 lets it
    assert [s["text"] for s in report["steps"][1:]] == [LOOP_STEP] * 3
    first = report["steps"][0]
    assert (first["author"], first["kind"], first["text"], first["trigger"]) == ("cloud", "intervention", fix, "loop")
    loop = next(e for e in report["events"] if e["trigger"] == "loop")
    assert loop["action"] == "intervene" and loop["detail"]["test"] in {"ngram", "embedding"}
    conn = sqlite3.connect(tmp_path / "edge.db")
    old = conn.execute("SELECT id, idx, author, text, superseded_by IS NOT NULL FROM steps WHERE id = ?",
                       [before[0][0]]).fetchone()
    assert old == (*before[0], 1) and before[0][3] == LOOP_STEP  # kept verbatim, marked superseded
    assert conn.execute("SELECT to_idx, reason FROM rollbacks").fetchall() == [(0, "intervention")]
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0
    calls = conn.execute("SELECT c.status, c.cost_nusd, r.amount_nusd FROM cloud_calls c "
                         "JOIN budget_reservations r ON r.id = c.reservation_id ORDER BY c.id").fetchall()
    assert [c[0] for c in calls] == ["reclaimed", "ok"]
    assert calls[0][1] == calls[0][2] > 0  # the dead call is charged its full reservation: never under-counted


def test_a_plan_that_states_an_answer_does_not_end_the_solve(fault_server):
    server = fault_server("script", replies=["Plan:\n1. Multiply the boxes by the pens.\n2. The answer is \\boxed{7}."])
    proc = run_cli("solve", PROBLEM, "--json", "--policy", "trigreason(plan=always,loop=False,offload=False)",
                   "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
                   "--max-steps", "2", "--max-step-tokens", "24")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["steps"][0]["kind"] == "plan" and len(report["steps"]) >= 2
    assert report["steps"][1]["author"] == "local"  # the local model went on after the plan
