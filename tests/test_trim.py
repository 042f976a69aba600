"""TRIM policies: trim-thr with each scorer, trim-budget's formula, trim-learned's train/save/load
round trip, hybrid's priorities, and the agent supplying paid scores (self, cloud-judge)."""

import json
import os
import stat
import subprocess
import sys

import pytest

import store
from cloud.client import make_cloud
from cloud.pricing import Price
from edge_agent.agent import Agent, Settings
from triggers.errors import PolicyError
from edge_agent.values import Signals, Step
from tests.conftest import ROBE, run_cli
from triggers import get_policy
from triggers.scorers import Score, Spend, StepInputs, logprob_score


def _step(i=0, author="local", text="2 + 1 = 3", tokens=10, **sig):
    return Step(i, author, "step", text, text + "\n\n", (1,) * tokens, signals=Signals(n_tokens=tokens, **sig))


SHAKY = dict(min_top1=0.05, low_top1_share=0.4)  # logprob score ~0.28
SURE = dict(min_top1=0.95, low_top1_share=0.0)  # ~0.99


# -- trim-thr --------------------------------------------------------------------------------------

@pytest.mark.parametrize("scorer", ["self", "cloud-judge"])
def test_trim_thr_uses_the_paid_score_it_needs(scorer):
    policy = get_policy(f"trim-thr(scorer={scorer},tau=0.6)")
    assert policy.needs == (scorer,) and policy.label == f"trim-thr(scorer={scorer},tau=0.6)"
    step = _step(**SURE)  # the free score would accept it
    low = StepInputs(scores={scorer: Score(0.2, scorer, {"p_yes": 0.1})})
    [e] = policy.check([], step, low)
    assert e.fired and e.score == 0.2 and e.threshold == 0.6 and e.detail == {"scorer": scorer, "p_yes": 0.1}
    [e] = policy.check([], step, StepInputs(scores={scorer: Score(0.9, scorer)}))
    assert not e.fired
    [e] = policy.check([], step)  # not supplied: the free score stands in, and says so
    assert e.detail["scorer"] == "logprob" and "not supplied" in e.detail["fallback"] and not e.fired
    assert get_policy(f"trim-thr(scorer={scorer})").tau == 0.5  # a probability: default 0.5
    assert get_policy("trim-thr").needs == () and get_policy("trim-thr").tau == 0.68
    with pytest.raises(PolicyError, match="scorer must be one of logprob, self, cloud-judge"):
        get_policy("trim-thr(scorer=vibes)")


# -- trim-budget -----------------------------------------------------------------------------------

def test_trim_budget_escalates_when_gain_beats_lam_times_cost_and_lam_rises_as_the_cap_runs_out():
    policy = get_policy("trim-budget(lam=1,value=0.001)")
    assert policy.needs == ("spend",) and policy.threshold_param == "lam"
    policy.reset("x" * 400)  # ~100 problem tokens
    steps = [_step(0, tokens=20)]
    price = dict(price_in=0.5, price_out=2.0)
    cost = ((80 + 101 + 20) * 0.5 + 64 * 2.0) / 1e6  # input (instructions + problem + steps) and a typical rewrite
    full = StepInputs(spend=Spend(cost_usd=0.0, cap_usd=0.01, **price))
    shaky, sure = _step(1, **SHAKY), _step(1, **SURE)
    [e] = policy.check(steps, shaky, full)
    assert e.detail["expected_cost_usd"] == pytest.approx(cost) and e.detail["remaining_share"] == 1.0
    assert e.threshold == pytest.approx(1 - cost / 0.001, abs=1e-6)
    assert e.fired == ((1 - e.score) * 0.001 > cost) is True
    assert not policy.check(steps, sure, full)[0].fired
    # 90% of the cap spent: lam_eff = lam / 0.1, so the same shaky step no longer pays off
    low = StepInputs(spend=Spend(cost_usd=0.009, cap_usd=0.01, **price))
    [e] = policy.check(steps, shaky, low)
    assert e.detail["lam_eff"] == pytest.approx(10.0) and e.detail["remaining_share"] == pytest.approx(0.1)
    assert not e.fired and e.threshold == pytest.approx(1 - 10 * cost / 0.001, abs=1e-6)
    lost = _step(1, min_top1=0.0001, low_top1_share=0.9)  # ...but a step that is almost surely wrong still does
    assert policy.check(steps, lost, StepInputs(spend=Spend(cost_usd=0.005, cap_usd=0.01, **price)))[0].fired
    # no cap: a token budget of cloud output tokens plays the same part; with neither, the share is 1
    tok = get_policy("trim-budget(budget_tokens=100)")
    assert tok.check(steps, shaky, StepInputs(spend=Spend(cloud_output_tokens=75, **price)))[0].detail["remaining_share"] == 0.25
    assert get_policy("trim-budget").check(steps, shaky, StepInputs(spend=Spend(**price)))[0].detail["remaining_share"] == 1.0
    # a bigger lam escalates less; lam=0 escalates every step that is not certain
    thresholds = [get_policy(f"trim-budget(lam={lam})").check(steps, shaky, full)[0].threshold for lam in (0, 1, 3)]
    assert thresholds[0] == 1.0 and thresholds[0] > thresholds[1] > thresholds[2]


def test_trim_budget_through_the_agent_reads_the_session_cap(smol, db):
    # offline: no cloud price, so the reference price is used; the cap is spent by nothing yet
    from cloud.budget import Caps

    agent = Agent(smol, db, "trim-budget(lam=0)", caps=Caps(session_usd=0.5), offline=True)
    res = agent.solve(ROBE, Settings(max_steps=2, max_step_tokens=16))
    evs = [e for e in store.events(db, res.session_id) if e["trigger"] == "step_score"]
    assert evs and all(json.loads(e["detail"])["remaining_share"] == 1.0 for e in evs)
    assert any(e["trigger"] == "cloud_unavailable" for e in store.events(db, res.session_id))


# -- trim-learned ----------------------------------------------------------------------------------

def _synthetic_traces(n=40):
    """Steps whose correctness follows their logprob score and length, as in real traces."""
    import random

    from triggers.learned import features

    rng = random.Random(7)
    rows, labels = [], []
    for k in range(n):
        steps = []
        for i in range(3):
            good = rng.random() < 0.6
            sig = dict(min_top1=rng.uniform(0.5, 1.0) if good else rng.uniform(0.0, 0.3),
                       low_top1_share=0.0 if good else rng.uniform(0.1, 0.6),
                       mean_entropy=rng.uniform(0, 0.5) if good else rng.uniform(0.5, 2))
            step = _step(i, tokens=rng.randint(5, 20) if good else rng.randint(15, 60), **sig)
            rows.append(features(steps, step))
            labels.append(int(good))
            steps.append(step)
    return rows, labels


def test_learned_model_round_trips_through_versioned_json(tmp_path):
    from triggers.learned import FEATURES, fit, load_model, save_model

    rows, labels = _synthetic_traces()
    model = fit(rows, labels, training={"dataset": "synthetic"})
    directory = tmp_path / "models"
    path1, saved1 = save_model(model, directory)
    path2, saved2 = save_model(model, directory)
    assert (path1.name, path2.name, saved2.ref) == ("trim-learned-v1.json", "trim-learned-v2.json", "v2")
    assert stat.S_IMODE(os.stat(path1).st_mode) == 0o600
    data = json.loads(path1.read_text())
    assert data["features"] == list(FEATURES) and data["version"] == 1 and data["kind"] == "logistic_regression"
    assert set(data["scaler"]) == {"mean", "scale"} and len(data["coef"]) == len(FEATURES)
    assert data["training"]["dataset"] == "synthetic" and data["training"]["n_steps"] == len(rows)
    assert data["training"]["created"] and data["training"]["sklearn"]
    loaded = load_model("latest", directory)
    assert loaded.ref == "v2" and load_model("v1", directory).ref == "v1" and load_model(str(path1), directory).coef == model.coef
    assert [loaded.predict(x) for x in rows] == [model.predict(x) for x in rows]
    # the predictions agree with scikit-learn's own, and they separate the two kinds of step
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import numpy as np

    x = np.asarray(rows)
    sc = StandardScaler().fit(x)
    ref = LogisticRegression(max_iter=1000).fit(sc.transform(x), labels).predict_proba(sc.transform(x))[:, 1]
    assert np.allclose([loaded.predict(r) for r in rows], ref, atol=1e-5)
    good = [loaded.predict(r) for r, y in zip(rows, labels) if y]
    bad = [loaded.predict(r) for r, y in zip(rows, labels) if not y]
    assert sum(good) / len(good) > 0.7 > 0.3 > sum(bad) / len(bad)
    with pytest.raises(PolicyError, match="all 3 labelled steps are correct"):
        fit(rows[:3], [1, 1, 1])


def test_trim_learned_policy_loads_the_latest_model_without_sklearn(tmp_path):
    from triggers.learned import fit, save_model

    cfg = tmp_path / "config" / "edge-agent"
    code = ("import sys; from triggers import get_policy; from edge_agent.values import Signals, Step; "
            "p = get_policy('trim-learned'); "
            "s = Step(0, 'local', 'step', 't', 't', (1,) * 40, signals=Signals(n_tokens=40, min_top1=0.01, low_top1_share=0.5)); "
            "[e] = p.check([], s); print(p.label, e.fired, e.score, 'sklearn' in sys.modules)")
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert missing.returncode != 0 and "edge-agent tune --learn" in missing.stderr and str(cfg / "models") in missing.stderr
    rows, labels = _synthetic_traces()
    save_model(fit(rows, labels), cfg / "models")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    label, fired, score, sk = out.stdout.split()
    assert label == "trim-learned(model=v1)" and fired == "True" and float(score) < 0.5 and sk == "False"
    proc = run_cli("solve", ROBE, "--policy", "trim-learned(model=v9)", "--offline")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "\n" not in err and "edge-agent tune --learn" in err


def test_tune_learn_labels_traces_with_the_judge_and_saves_a_model(fault_server, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Tom has {i} apples and buys {i + 1} more. "
                                        "How many apples does he have?", "answer": str(2 * i + 1)}) + "\n"
                            for i in (2, 3, 4)))
    judge = fault_server("script", replies=["8", "1"] * 20)  # a real endpoint whose ratings alternate
    proc = run_cli("tune", "--learn", "--dataset", str(data), "--limit", "2", "--cloud", "openai:m", "--cloud-base-url",
                   judge.url + "/v1", "--price-in", "1", "--price-out", "2", "--max-steps", "3",
                   "--max-step-tokens", "24", "--out", str(tmp_path / "learn"), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["problems"] == 2 and result["steps"] >= 2 and 0 < result["correct"] < result["steps"]
    assert result["version"] == 1 and result["policy"] == "trim-learned(model=v1)"
    path = tmp_path / "config" / "edge-agent" / "models" / "trim-learned-v1.json"
    assert result["model"] == str(path) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["training"]["label"] == "judge" and saved["training"]["problems"] == 2
    db = store.open_db(tmp_path / "learn" / "bench.db")
    calls = list(db["cloud_calls"].rows)
    assert len(calls) == result["steps"] and {c["purpose"] for c in calls} == {"judge"}
    assert all(c["cost_nusd"] > 0 for c in calls)
    assert all(r["body"]["max_tokens"] == 1 for r in judge.requests)
    solved = run_cli("solve", ROBE, "--policy", "trim-learned", "--offline", "--max-steps", "2",
                     "--max-step-tokens", "16", "--json")
    assert solved.returncode == 0, solved.stderr.decode()
    assert json.loads(solved.stdout)["steps"]


# -- hybrid ----------------------------------------------------------------------------------------

def test_hybrid_puts_trigreason_first_then_the_budget_aware_score():
    from triggers import detectors as d

    p = get_policy("hybrid(loop=False,offload=False,plan=never,max_cloud=1)")
    assert p.needs == ("spend",) and p.label == "hybrid(loop=False,max_cloud=1,offload=False,plan=never)"
    assert get_policy("hybrid(lam=3,scorer=self)").needs == ("spend", "self")
    for spec in ("hybrid", "hybrid(lam=1.0)", "hybrid(lam=3,value=0.01,plan=always)"):  # the label rebuilds the policy
        built = get_policy(spec)
        again = get_policy(built.label)
        assert again.label == built.label and again.trim.lam == built.trim.lam and again.cfg == built.cfg
    assert get_policy("hybrid").trim.lam == 2.0 and get_policy("hybrid(lam=1.0)").label == "hybrid(lam=1.0)"
    spend = StepInputs(spend=Spend(price_in=0.5, price_out=2.0))
    shaky = _step(1, **SHAKY)
    events = p.check([_step(0, **SURE)], shaky, spend)
    assert [e.trigger for e in events] == ["step_score"] and events[0].fired
    action = p.decide([_step(0)], shaky, events)
    assert (action.kind, action.trigger, action.score) == ("rewrite", "step_score", events[0].score)
    assert p.decide([_step(0), _step(1, author="cloud")], shaky, events).reason == "max_cloud=1 reached"
    # a loop wins over the score
    q = get_policy("hybrid(plan=never,offload=False)")
    loop = d.loop("p", [_step(0, text="a b c d e")], _step(1, text="a b c d e"), cosine_min=0.9, window=3,
                  ngram_share=0.6, stall_steps=3)
    assert q.decide([_step(0, text="a b c d e")], shaky, [loop, events[0]]).kind == "intervene"
    assert q.decide([_step(0)], _step(1, **SURE), []).kind == "accept"


# -- the agent supplies paid scores ----------------------------------------------------------------

def test_self_scored_steps_keep_their_score_inputs_and_cost_local_time(smol, db):
    agent = Agent(smol, db, "trim-thr(scorer=self,tau=0.0)", offline=True)
    res = agent.solve(ROBE, Settings(max_steps=2, max_step_tokens=16))
    steps = store.load_steps(db, res.session_id)
    scored = [e for e in store.events(db, res.session_id) if e["trigger"] == "step_score"]
    assert len(scored) == len(steps) >= 1 and all(e["action"] == "scored" for e in scored)  # tau=0: never fires
    for e, s in zip(scored, steps):
        detail = json.loads(e["detail"])
        assert detail["scorer"] == "self" and 0 <= e["score"] <= 1
        assert e["score"] == pytest.approx(detail["p_yes"] / (detail["p_yes"] + detail["p_no"]), abs=1e-5)
        assert s["evaluated"] >= s["tokens"] + detail["question_tokens"]  # the question's tokens are counted
        assert s["seconds"] >= detail["seconds"] > 0  # and its time is local time
    # the step after a self-check evaluated only its own tokens: the KV held the checked step
    assert steps[1]["evaluated"] == steps[1]["tokens"] + json.loads(scored[1]["detail"])["question_tokens"]


def test_cloud_judge_policy_calls_the_cloud_once_per_local_step(smol, db, llama_server):
    cloud = make_cloud("openai:local", base_url=llama_server, max_retries=0)
    agent = Agent(smol, db, "trim-thr(scorer=cloud-judge,tau=0.0)", cloud=cloud)
    res = agent.solve(ROBE, Settings(max_steps=2, max_step_tokens=16))
    calls = store.cloud_calls(db, res.session_id)
    steps = store.load_steps(db, res.session_id)
    assert [c["purpose"] for c in calls] == ["judge"] * len(steps) and all(c["output_tokens"] == 1 for c in calls)
    scored = [e for e in store.events(db, res.session_id) if e["trigger"] == "step_score"]
    assert len(scored) == len(steps)
    for e in scored:
        detail = json.loads(e["detail"])
        assert detail["scorer"] in ("cloud-judge", "logprob") and ("fallback" in detail) == (detail["scorer"] == "logprob")
    # a refused judge falls back to the free score and the refusal is on record
    from cloud.budget import Caps

    denied = Agent(smol, db, "trim-thr(scorer=cloud-judge,tau=0.0)", cloud=cloud, caps=Caps(session_usd=0.0))
    res = denied.solve(ROBE, Settings(max_steps=1, max_step_tokens=16))
    evs = store.events(db, res.session_id)
    assert [e["trigger"] for e in evs] == ["budget_denied", "step_score"]
    assert json.loads(evs[1]["detail"])["scorer"] == "logprob" and not store.cloud_calls(db, res.session_id)


def test_paid_scorers_cannot_be_calibrated_from_traces(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "p", "problem": "What is 1 + 1?", "answer": "2"}) + "\n")
    for spec in ("trim-thr(scorer=self)", "trim-budget"):
        proc = run_cli("tune", "--dataset", str(data), "--policy", spec, "--target-escalation-rate", "0.2",
                       "--out", str(tmp_path / "o"))
        assert proc.returncode == 2 and "use --grid" in proc.stderr.decode(), proc.stderr.decode()
    assert logprob_score(Signals()) == 1.0


def test_outcome_labels_mark_a_step_wrong_when_its_cloud_rewrite_fixes_the_answer(smol, db, fault_server):
    from edge_agent.learn import label_traces

    problem = "Tom has 2 apples and buys 3 more. How many apples does he have?"
    server = fault_server("script", replies=["He has 2 + 3 = 5 apples, so \\boxed{5}."])
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1, 2), max_retries=0)
    settings = Settings(max_steps=2, max_step_tokens=16)
    agent = Agent(smol, db, "local-only", cloud=cloud)
    traces = []
    for correct in (False, True):
        res = agent.solve(problem, settings)
        traces.append({"session_id": res.session_id, "gold": "5", "correct": correct})
    n = len(store.load_state(db, traces[0]["session_id"]).steps)
    data = label_traces(agent, db, traces, "outcome", settings)
    # the "wrong" trace: every step's rewrite states the right answer, so each step is labelled wrong;
    # the right trace's steps are all correct and cost nothing
    assert data.labels == [0] * n + [1] * n and data.skipped == 0 and data.problems == 2
    replays = [s for s in db["sessions"].rows if s["id"] not in {t["session_id"] for t in traces}]
    assert len(replays) == n == len(server.requests)
    calls = [c for s in replays for c in store.cloud_calls(db, s["id"])]
    assert [c["purpose"] for c in calls] == ["rewrite_step"] * n
    for k, s in enumerate(sorted(replays, key=lambda s: s["id"])):  # replay k keeps the first k local steps
        steps = store.load_state(db, s["id"]).steps
        assert [st.author for st in steps] == ["local"] * k + ["cloud"] and s["answer"] == "5"
