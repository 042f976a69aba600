"""The agent with a cloud: labeled cloud steps, caps that hold across processes, faults that end locally."""

import json
import sqlite3
import subprocess
import sys

import pytest

import store
from edge_agent.agent import Agent, parse_intervention
from tests.conftest import ROBE, run_cli

FAST = ["--max-steps", "4", "--max-step-tokens", "40"]


def _json(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_every_k_labels_cloud_steps_and_totals_agree(llama_server):
    report = _json(run_cli("solve", ROBE, "--json", "--policy", "every-k", "--cloud", "openai:local",
                           "--cloud-base-url", llama_server, *FAST))
    authors = [s["author"] for s in report["steps"]]
    assert "cloud" in authors and "local" in authors
    cloud_steps = [s for s in report["steps"] if s["author"] == "cloud"]
    assert all(s["trigger"] == "every_k" for s in cloud_steps)
    assert all(s["index"] % 2 == 1 for s in cloud_steps)
    u = report["usage"]
    assert u["cloud_steps"] == len(cloud_steps) and u["cloud_output_tokens"] > 0 and u["cost_usd"] > 0
    assert u["offload_ratio"] == round(u["local_steps"] / (u["local_steps"] + u["cloud_steps"]), 4)
    assert report["cloud"] == {"provider": "openai", "model": "local", "available": True}
    replaced = [e for e in report["events"] if e["trigger"] == "local_draft"]
    assert len(replaced) == len(cloud_steps)  # the local draft each cloud step replaced is kept

    shown = _json(run_cli("show", report["session_id"], "--json"))
    assert shown["usage"] == report["usage"]
    cost = _json(run_cli("cost", "--json"))
    assert cost["total_usd"] == pytest.approx(u["cost_usd"], abs=1e-12)
    assert sum(r["output_tokens"] for r in cost["rows"]) == u["cloud_output_tokens"]
    text = run_cli("solve", ROBE, "--policy", "every-k", "--cloud", "openai:local", "--cloud-base-url", llama_server,
                   "--max-steps", "2", "--max-step-tokens", "24").stdout.decode()
    assert "step 1 · cloud" in text


def test_a_tiny_cap_makes_no_call_and_the_solve_finishes_locally(llama_server, tmp_path):
    report = _json(run_cli("solve", ROBE, "--json", "--policy", "cloud-only", "--cloud", "openai:local",
                           "--cloud-base-url", llama_server, "--max-cost", "0.001",
                           "--price-in", "1000", "--price-out", "1000", *FAST))
    assert report["usage"]["cloud_steps"] == 0 and report["usage"]["cost_usd"] == 0
    assert all(s["author"] == "local" for s in report["steps"]) and report["steps"]
    denied = [e for e in report["events"] if e["trigger"] == "budget_denied"]
    assert len(denied) == len(report["steps"])
    assert all(e["score"] > e["threshold"] == 0.001 for e in denied)
    conn = sqlite3.connect(tmp_path / "edge.db")
    assert conn.execute("SELECT COUNT(*) FROM cloud_calls").fetchone()[0] == 0


def test_two_processes_share_one_daily_cap(llama_server, tmp_path):
    cap = 0.002
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[budget]\nmax_cost_day = {cap}\n")
    args = [sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--json", "--policy", "cloud-only",
            "--cloud", "openai:local", "--cloud-base-url", llama_server, "--price-in", "0.5", "--price-out", "2",
            "--max-steps", "8", "--max-step-tokens", "48"]
    # one llama.cpp thread each: three spinning thread pools on two cores slow to a crawl
    env = {**__import__("os").environ, "EDGE_AGENT_CONFIG": str(cfg), "EDGE_AGENT_THREADS": "1"}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode() for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    conn = sqlite3.connect(tmp_path / "edge.db")
    settled = conn.execute("SELECT COALESCE(SUM(cost_nusd), 0) FROM cloud_calls").fetchone()[0]
    calls = conn.execute("SELECT COUNT(*) FROM cloud_calls").fetchone()[0]
    assert 0 < settled <= cap * 1e9
    assert calls >= 2
    assert any(e["trigger"] == "budget_denied" for r in reports for e in r["events"])  # the cap did bind
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0


@pytest.mark.parametrize("mode, status", [
    ("refused", "connection"), ("hang", "timeout"), ("500", "http_500"), ("502", "http_502"), ("503", "http_503"),
    ("429", "rate_limited"), ("429-bare", "rate_limited"), ("malformed", "malformed"), ("truncated", "broken_response"),
])
def test_cloud_faults_end_locally_with_events(fault_server, mode, status, tmp_path):
    if mode == "refused":
        from edge_agent.cloud_local import free_port

        url = f"http://127.0.0.1:{free_port()}/v1"
    else:
        url = fault_server(mode, hang_s=4.0).url + "/v1"
    cfg = tmp_path / "config.toml"
    cfg.write_text("[cloud]\ntimeout_s = 0.5\nmax_retries = 1\ncooldown_s = 600\n")
    proc = run_cli("solve", ROBE, "--json", "--policy", "cloud-only", "--cloud", "openai:m", "--cloud-base-url", url,
                   "--price-in", "1", "--price-out", "2", "--max-steps", "3", "--max-step-tokens", "24",
                   env={"EDGE_AGENT_CONFIG": str(cfg)}, timeout=120)
    report = _json(proc)
    assert report["status"] in {"done", "max_steps", "ended"}
    assert report["steps"] and all(s["author"] == "local" for s in report["steps"])
    assert report["cloud"]["available"] is False
    unavailable = [e for e in report["events"] if e["trigger"] == "cloud_unavailable"]
    assert len(unavailable) == len(report["steps"])  # every skipped escalation is recorded
    conn = sqlite3.connect(tmp_path / "edge.db")
    rows = conn.execute("SELECT status, cost_nusd, reserved_nusd FROM cloud_calls").fetchall()
    assert len(rows) == 1  # the breaker stopped further calls
    assert rows[0][0] == status
    assert rows[0][1] in (0, rows[0][2])  # refused before sending: 0; possibly processed: the full reservation
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0
    assert report["usage"]["wall_s"] < 60


def test_offline_never_calls(llama_server, tmp_path):
    report = _json(run_cli("solve", ROBE, "--json", "--policy", "every-k", "--cloud", "openai:local",
                           "--cloud-base-url", llama_server, "--offline", *FAST))
    assert report["usage"]["cloud_steps"] == 0 and report["cloud"]["available"] is False
    assert sqlite3.connect(tmp_path / "edge.db").execute("SELECT COUNT(*) FROM cloud_calls").fetchone()[0] == 0


def test_api_key_never_reaches_db_or_output(llama_server, tmp_path):
    secret = "sk-test-SECRET-4f9a8b7c6d5e"
    proc = run_cli("solve", ROBE, "--json", "--policy", "every-k", "--cloud", "openai:local",
                   "--cloud-base-url", llama_server, *FAST, env={"OPENAI_API_KEY": secret})
    _json(proc)
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("edge.db*"))
    assert secret.encode() not in blob
    assert secret.encode() not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "content, needle",
    [("[cloud\nprovider =", "not valid TOML"), ("[cloud]\ncolour = 'red'\n", "unknown key cloud.colour"),
     ("[budget]\nmax_cost_day = -1\n", "must be >= 0"), ("[wat]\n", "unknown section")],
)
def test_bad_config_is_one_line_exit_2(tmp_path, content, needle):
    cfg = tmp_path / "config.toml"
    cfg.write_text(content)
    proc = run_cli("solve", ROBE, env={"EDGE_AGENT_CONFIG": str(cfg)})
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "\n" not in err and needle in err and "Traceback" not in err
    assert not (tmp_path / "edge.db").exists()


@pytest.mark.parametrize(
    "args, needle",
    [(["--cloud", "openai:gpt-4o-mini"], "OPENAI_API_KEY"), (["--cloud", "bogus"], "PROVIDER:MODEL"),
     (["--cloud", "openai:mystery", "--cloud-base-url", "http://127.0.0.1:9/v1"], "no price known"),
     (["--max-cost", "-1"], "--max-cost")],
)
def test_bad_cloud_options(args, needle, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    proc = run_cli("solve", ROBE, *args)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "\n" not in err and needle in err, err


def test_parse_intervention():
    assert parse_intervention('{"first_wrong_step": 1, "next_step": "Half of 2 is 1."}', 3) == (1, "Half of 2 is 1.")
    assert parse_intervention('Sure: {"first_wrong_step": null, "next_step": "x"}', 3) == (None, "x")
    assert parse_intervention('{"first_wrong_step": 7, "next_step": "x"}', 3) is None
    assert parse_intervention('{"first_wrong_step": true, "next_step": "x"}', 3) is None
    assert parse_intervention('{"first_wrong_step": 0, "next_step": ""}', 3) is None
    assert parse_intervention("no json", 3) is None


def test_plan_and_intervene_actions(smol, db, llama_server, fault_server):
    from cloud.client import make_cloud
    from cloud.pricing import Price

    cloud = make_cloud("openai:local", base_url=llama_server, max_retries=0)
    agent = Agent(smol, db, "every-k", cloud=cloud)
    from edge_agent.agent import Settings

    sid = agent.start(ROBE, Settings(max_steps=2, max_step_tokens=24))
    events = []
    plan = agent.plan(sid, ROBE, events)
    assert plan is not None and plan.author == "cloud" and plan.kind == "plan" and plan.text.startswith("Plan:")
    assert plan.token_ids and events == []

    bad = make_cloud("openai:m", base_url=fault_server("bad_json_reply").url + "/v1", price=Price(1, 2), max_retries=0)
    agent2 = Agent(smol, db, "every-k", cloud=bad)
    events = []
    assert agent2.intervene(sid, ROBE, [], events) is None
    assert [e.trigger for e, _ in events] == ["cloud_error"] and events[0][0].detail["kind"] == "invalid_json"
    calls = [c for c in store.cloud_calls(db, sid) if c["purpose"] == "intervene"]
    assert len(calls) == 2  # asked, re-asked once, then gave up
