"""Tuning: the response cache, threshold calibration into the config, and a grid sweep's Pareto front."""

import json
import os
import stat

import pytest

import store
from edge_agent.state import load_state
from cloud.budget import Budget, Caps
from cloud.client import make_cloud
from edge_agent.config import load_config
from tests.conftest import run_cli

MSGS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 4 + 4?"}]


def _data(tmp_path, n=2):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Tom has {i} apples and buys {i + 1} more. "
                                        "How many apples does he have?", "answer": str(2 * i + 1)}) + "\n"
                            for i in range(2, 2 + n)))
    return path


def test_a_cached_reply_costs_nothing_and_keeps_its_would_be_cost(llama_server, db):
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="every-k", settings={})
    cloud = make_cloud("openai:local", base_url=llama_server, max_retries=0, cache=True)
    budget = Budget(db, Caps(), sid)
    first = cloud.call(MSGS, max_tokens=12, budget=budget, purpose="rewrite_step", step_idx=0)
    second = cloud.call(MSGS, max_tokens=12, budget=budget, purpose="rewrite_step", step_idx=1)
    other = cloud.call(MSGS, max_tokens=13, budget=budget, purpose="rewrite_step", step_idx=2)  # a different request
    assert second.text == first.text and second.cost_usd == 0.0 and first.cost_usd > 0
    rows = store.cloud_calls(db, sid)
    assert [r["status"] for r in rows] == ["ok", "cache_hit", "ok"]
    assert rows[1]["cost_nusd"] == 0 and rows[1]["would_be_nusd"] == rows[0]["cost_nusd"]
    assert rows[1]["output_tokens"] == rows[0]["output_tokens"]  # a hit is never mistaken for a free, empty call
    assert other.cost_usd > 0
    from edge_agent.report import usage_of  # noqa: F401  (the report reads the same rows)
    from edge_agent.report import session_report

    usage = session_report(db, sid)["usage"]
    assert usage["cache_hits"] == 1
    assert usage["would_be_cost_usd"] == pytest.approx(usage["cost_usd"] + rows[0]["cost_nusd"] / 1e9)
    # off by default: the same request is paid again
    plain = make_cloud("openai:local", base_url=llama_server, max_retries=0)
    assert plain.call(MSGS, max_tokens=12, budget=budget, purpose="rewrite_step").cost_usd > 0


def test_calibration_sets_tau_to_the_score_quantile_and_solve_uses_it(tmp_path):
    from edge_agent.bench import quantile
    from triggers import get_policy

    out = tmp_path / "tune"
    proc = run_cli("tune", "--dataset", str(_data(tmp_path)), "--policy", "trim-thr", "--target-escalation-rate", "0.25",
                   "--out", str(out), "--max-steps", "3", "--max-step-tokens", "32", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    tau = result["chosen"]["tau"]
    db = store.open_db(out / "bench.db")
    policy = get_policy("trim-thr")
    scores = [policy.score(s) for row in db["sessions"].rows for s in load_state(db, row["id"]).steps]
    assert len(scores) >= 2
    assert tau == pytest.approx(quantile(scores, 0.25, lower=True))
    assert sum(s < tau for s in scores) / len(scores) <= 0.25 + 1e-9
    cfg_path = tmp_path / "config" / "edge-agent" / "config.toml"
    assert result["config"] == str(cfg_path)
    assert stat.S_IMODE(os.stat(cfg_path).st_mode) == 0o600
    assert load_config(cfg_path).policy["trim-thr"]["tau"] == pytest.approx(tau)
    solved = run_cli("solve", "What is 2 + 2?", "--policy", "trim-thr", "--offline", "--max-steps", "1",
                     "--max-step-tokens", "16", "--json")
    assert solved.returncode == 0, solved.stderr.decode()
    db2 = store.open_db(tmp_path / "edge.db")
    [session] = list(db2["sessions"].rows)
    assert session["policy"] == get_policy(f"trim-thr(tau={tau})").label  # the config default is baked in


def test_grid_sweep_prints_a_pareto_front_and_writes_the_choice(llama_server, tmp_path):
    out = tmp_path / "grid"
    args = ["tune", "--dataset", str(_data(tmp_path)), "--policy", "trim-thr", "--grid", "tau=0.0,1.0",
            "--cloud", "openai:local", "--cloud-base-url", llama_server, "--out", str(out),
            "--max-steps", "3", "--max-step-tokens", "24", "--json"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    by = {s["policy"]: s for s in result["summary"]}
    assert set(by) == {"local-only", "cloud-only", "trim-thr(tau=0.0)", "trim-thr(tau=1.0)"}
    assert by["trim-thr(tau=0.0)"]["cloud_out_per_problem"] == 0  # never escalates
    assert by["trim-thr(tau=1.0)"]["cloud_out_per_problem"] > 0  # escalates every step
    assert result["pareto_front"][0] == "trim-thr(tau=0.0)"
    assert result["chosen"]["tau"] in ("0.0", "1.0")
    assert "tau" in load_config(tmp_path / "config" / "edge-agent" / "config.toml").policy["trim-thr"]
    # the sweep is resumable: re-running does not solve anything again
    sessions = store.open_db(out / "bench.db")["sessions"].count
    assert run_cli(*args).returncode == 0
    assert store.open_db(out / "bench.db")["sessions"].count == sessions


@pytest.mark.parametrize("args, message", [
    (["--grid", "tau"], "name=v1,v2"),
    (["--grid", "lam=1,2"], "has no parameter lam"),
    ([], "either --grid or --target-escalation-rate"),
])
def test_tune_refuses_bad_grids(tmp_path, args, message):
    proc = run_cli("tune", "--dataset", str(_data(tmp_path)), "--policy", "trim-thr", *args, "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and message in proc.stderr.decode(), proc.stderr.decode()
