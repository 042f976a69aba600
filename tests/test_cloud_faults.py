"""Issue 26: a cloud that trickles its reply, sends content that is not text, or bills past max_tokens.

Each fault is the scripted FaultServer on loopback; the CLI cases run on the scripted local model
(``--model script:``), so no model computes anything here.
"""

import json
import sqlite3
import time

import pytest

import store
from cloud.budget import Budget, Caps
from cloud.client import make_cloud
from cloud.pricing import Price
from edge_agent.errors import BudgetDenied, CloudError
from store import ledger
from tests.conftest import run_cli

MSGS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 1?"}]
PRICE = Price(1.0, 2.0)
HONEST_NUSD = 50 * 1000 + 7 * 2000  # the FaultServer's usage (50 in, 7 out) at $1/$2 per 1M tokens
STEPS = ["The robe needs 2 bolts of blue fiber.", "White fiber is half of that, so 1 bolt.",
         "Together that is 2 + 1 bolts.", "Counting again: blue 2, white 1.", "So the total is 3 bolts.",
         "The answer is \\boxed{3}."]


@pytest.fixture
def session(db):
    return store.new_session(db, problem="p", model="m", model_path="x", policy="every-k", settings={})


def _solve(server, tmp_path, config: str, *extra: str, policy: str = "every-k"):
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(STEPS))
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    env = {"EDGE_AGENT_CONFIG": str(cfg)}
    proc = run_cli("solve", "A robe takes 2 bolts of blue fiber and half that much white. How many bolts?", "--json",
                   "--model", f"script:{script}", "--policy", policy, "--cloud", "openai:m",
                   "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
                   "--max-steps", "8", *extra, env=env, timeout=120)
    return proc, env


def _calls(tmp_path) -> list[tuple]:
    conn = sqlite3.connect(tmp_path / "edge.db")
    return conn.execute("SELECT status, cost_nusd, reserved_nusd, claimed_nusd, input_tokens, output_tokens "
                        "FROM cloud_calls ORDER BY id").fetchall()


# -- 2. timeout_s bounds the whole call ------------------------------------------------------------

@pytest.mark.parametrize("provider, path", [("openai", "/v1"), ("anthropic", "")])
def test_a_trickling_reply_is_cut_at_the_deadline(fault_server, db, session, provider, path):
    """The issue's: headers, then a byte every half second held a 2 s timeout for 25 s (each byte restarts
    a read timeout). Here a byte every 0.1 s for ~20 s against a 1 s deadline."""
    server = fault_server("trickle")
    server.trickle_s = 0.1
    cloud = make_cloud(f"{provider}:m", base_url=server.url + path, price=PRICE, timeout_s=1.0, max_retries=0)
    t0 = time.monotonic()
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    took = time.monotonic() - t0
    assert e.value.kind == "timeout" and took < 1.8, took
    [row] = store.cloud_calls(db, session)
    assert row["status"] == "timeout" and row["cost_nusd"] == row["reserved_nusd"] > 0  # it may have been billed
    assert not cloud.breaker.allow() and cloud.breaker.trips == 1


def test_a_deadline_leaves_fast_replies_and_later_calls_alone(fault_server, db, session):
    server = fault_server("trickle")
    server.trickle_s = 0.1
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=PRICE, timeout_s=1.0, max_retries=0,
                       cooldown_s=0)
    budget = Budget(db, Caps(), session)
    with pytest.raises(CloudError):
        cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    server.mode = "ok"
    for _ in range(3):  # the same client, its pool and the deadline of each new request
        assert cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step").text
    assert [r["status"] for r in store.cloud_calls(db, session)] == ["timeout", "ok", "ok", "ok"]


def test_a_trickling_cloud_ends_locally_within_the_deadline(fault_server, tmp_path):
    server = fault_server("trickle")
    server.trickle_s = 0.1
    proc, _ = _solve(server, tmp_path, "[cloud]\ntimeout_s = 1\nmax_retries = 0\ncooldown_s = 600\n")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["steps"] and all(s["author"] == "local" for s in report["steps"])
    assert report["cloud"]["available"] is False
    [(status, cost, reserved, *_)] = _calls(tmp_path)  # the breaker stopped further calls
    assert status == "timeout" and cost == reserved > 0
    assert report["usage"]["wall_s"] < 8, report["usage"]


# -- 3. message content that is not a string -------------------------------------------------------

def test_content_as_text_parts_is_joined(fault_server, db, session):
    server = fault_server("content")
    server.content = [{"type": "text", "text": "2 + 1 = 3,"}, {"type": "reasoning", "summary": "adding"},
                      {"type": "text", "text": " so \\boxed{3}."}]
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=PRICE, max_retries=0)
    reply = cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert (reply.text, reply.status) == ("2 + 1 = 3, so \\boxed{3}.", "ok")


@pytest.mark.parametrize("content", [7, True, {"text": "3"}, 1.5, [1, 2], ["a", "b"], [{"type": "text", "text": 5}],
                                     [{"text": "no type"}]],
                         ids=["int", "bool", "object", "float", "list-of-ints", "list-of-str", "part-int", "part-untyped"])
def test_content_that_is_not_text_is_a_malformed_reply_booked_at_its_usage(fault_server, db, session, content):
    server = fault_server("content")
    server.content = content
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=PRICE, max_retries=0)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind == "malformed" and e.value.billed
    [row] = store.cloud_calls(db, session)
    assert row["status"] == "malformed"
    assert (row["input_tokens"], row["output_tokens"], row["cost_nusd"]) == (50, 7, HONEST_NUSD)  # what it cost
    assert row["cost_nusd"] <= row["reserved_nusd"]
    assert not cloud.breaker.allow()


@pytest.mark.parametrize("content", [7, [{"type": "text", "text": 5}]], ids=["int", "part-int"])
def test_content_not_text_stays_local_and_resume_pays_nothing_again(fault_server, tmp_path, content):
    """The issue's: AttributeError 'strip' after the call was paid, exit 1, and every resume paid and crashed again."""
    server = fault_server("content")
    server.content = content
    proc, env = _solve(server, tmp_path, "[cloud]\nmax_retries = 0\n", policy="cloud-only")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["steps"] and all(s["author"] == "local" for s in report["steps"])
    assert any(e["trigger"] == "cloud_unavailable" and "malformed" in json.dumps(e) for e in report["events"])
    [(status, cost, *_)] = _calls(tmp_path)
    assert status == "malformed" and cost == HONEST_NUSD
    assert report["status"] == "done"  # the session ended: on the old code it was left running
    again = run_cli("resume", report["session_id"], "--json", env=env, timeout=120)
    assert b"already finished" in again.stderr and b"Traceback" not in again.stderr, again.stderr.decode()
    assert len(_calls(tmp_path)) == 1 and len(server.requests) == 1  # nothing was paid twice


# -- 4. an endpoint that bills past max_tokens ---------------------------------------------------

def test_the_first_overrun_stops_calls_to_that_endpoint_for_the_session(fault_server, db, session):
    server = fault_server("bill-50x")
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=PRICE, max_retries=0, cooldown_s=0)
    budget = Budget(db, Caps(day_usd=0.01), session)
    reply = cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    assert reply.status == "overrun" and reply.text  # paid for, so used
    assert cloud.breaker.trips == 1  # the breaker counts it
    with pytest.raises(BudgetDenied) as denied:  # even with no cool-down: not again in this session
        cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    assert denied.value.scope == "overrun" and "billed past its reservation" in str(denied.value)
    assert len(server.requests) == 1
    [row] = store.cloud_calls(db, session)
    claimed = 50 * 1000 + 50 * 32 * 2000  # 50x max_tokens out, at $2 per 1M
    assert (row["status"], row["claimed_nusd"]) == ("overrun", claimed)
    assert row["cost_nusd"] == row["reserved_nusd"] < claimed  # booked at the reservation, the claim kept beside
    other = store.new_session(db, problem="q", model="m", model_path="x", policy="every-k", settings={})
    assert cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), other), purpose="rewrite_step").status == "overrun"


def test_the_cool_down_also_stops_the_next_call(fault_server, db, session):
    server = fault_server("bill-50x")
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=PRICE, max_retries=0, cooldown_s=600)
    budget = Budget(db, Caps(), session)
    cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    assert e.value.kind == "circuit_open" and "overrun" in str(e.value)
    assert len(server.requests) == 1


def test_honest_calls_store_their_claim_equal_to_the_booked_cost(fault_server, db, session):
    cloud = make_cloud("openai:m", base_url=fault_server("ok").url + "/v1", price=PRICE, max_retries=0)
    cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    [row] = store.cloud_calls(db, session)
    assert (row["status"], row["cost_nusd"], row["claimed_nusd"]) == ("ok", HONEST_NUSD, HONEST_NUSD)
    s = ledger.spend(db)
    assert s["total_nusd"] == s["total_claimed_nusd"] == HONEST_NUSD and s["overrun_calls"] == 0


def test_a_50x_biller_is_called_once_and_cost_and_doctor_say_what_it_claimed(fault_server, tmp_path):
    """The issue's: 9 overrun calls, $0.0099 booked under a $0.01 day cap, $0.23 claimed, and 'cost' showed only the booked."""
    server = fault_server("bill-50x")
    proc, env = _solve(server, tmp_path, "[cloud]\nmax_retries = 0\ncooldown_s = 0\n[budget]\nmax_cost_day = 0.01\n")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    [(status, cost, reserved, claimed, *_)] = _calls(tmp_path)
    assert len(server.requests) == 1 and status == "overrun" and cost == reserved < claimed
    denied = [e for e in report["events"] if e["trigger"] == "budget_denied"]
    assert denied and all(e["detail"]["scope"] == "overrun" for e in denied)  # later escalations: refused, recorded

    out = json.loads(run_cli("cost", "--json", env=env, timeout=60).stdout)
    assert out["total_usd"] == pytest.approx(cost / 1e9) and out["claimed_usd"]["total"] == pytest.approx(claimed / 1e9)
    assert out["overrun_calls"] == 1
    [row] = out["rows"]
    assert row["claimed_usd"] == pytest.approx(claimed / 1e9) and row["overrun_calls"] == 1
    text = run_cli("cost", env=env, timeout=60).stdout.decode()
    assert "providers claimed" in text and f"{claimed / 1e9:.6f}" in text

    script = tmp_path / "steps.json"
    doc = json.loads(run_cli("doctor", "--json", "--offline", "--model", f"script:{script}", env=env, timeout=60).stdout)
    [billing] = [c for c in doc["checks"] if c["name"] == "cloud billing"]
    assert billing["level"] == "warn" and "openai:m" in billing["detail"] and billing["fix"]
    assert doc["overruns"][0]["calls"] == 1


def test_doctor_billing_is_ok_without_overruns(tmp_path):
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(STEPS))
    doc = json.loads(run_cli("doctor", "--json", "--offline", "--model", f"script:{script}", timeout=60).stdout)
    [billing] = [c for c in doc["checks"] if c["name"] == "cloud billing"]
    assert billing["level"] == "ok" and doc["overruns"] == []


def test_any_adapter_reply_that_is_not_text_is_malformed(db, session):
    from cloud.adapters import RawReply
    from cloud.client import Cloud

    class Odd:
        provider, model, base_url = "p", "m", None

        def complete(self, messages, **_):
            return RawReply(["not", "text"], {"input_tokens": 50, "output_tokens": 7})

    cloud = Cloud(Odd(), PRICE)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind == "malformed"
    [row] = store.cloud_calls(db, session)
    assert (row["status"], row["cost_nusd"]) == ("malformed", HONEST_NUSD)
