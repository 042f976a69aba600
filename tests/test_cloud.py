"""Cloud calls over real HTTP on loopback: the llama.cpp server (OpenAI path) and a Messages-API relay
(Anthropic path). Token counts and costs must match the server's usage fields exactly."""

import json
import urllib.request

import pytest

import store
from cloud.budget import Budget, Caps
from cloud.client import make_cloud
from cloud.pricing import PRICES, Price, cost_nusd
from edge_agent.errors import BudgetDenied, CloudError, ConfigError

MSGS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"}]


def _direct_usage(base, max_tokens):
    """What the server itself reports for the same request."""
    body = json.dumps({"model": "local", "messages": MSGS, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/chat/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["usage"]


@pytest.fixture
def session(db):
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="every-k", settings={})
    return sid


def test_openai_path_records_exact_usage_and_cost(llama_server, db, session):
    cloud = make_cloud("openai:local", base_url=llama_server, timeout_s=60, max_retries=0)
    reply = cloud.call(MSGS, max_tokens=16, budget=Budget(db, Caps(), session), purpose="rewrite_step", step_idx=0)
    want = _direct_usage(llama_server, 16)
    assert (reply.input_tokens, reply.output_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    price = PRICES["deepseek-reasoner"]
    exact = cost_nusd(price, input_tokens=want["prompt_tokens"], output_tokens=want["completion_tokens"])
    assert reply.cost_usd == exact / 1e9
    [row] = store.cloud_calls(db, session)
    assert (row["input_tokens"], row["output_tokens"], row["cost_nusd"], row["status"]) == (
        want["prompt_tokens"], want["completion_tokens"], exact, "ok")
    assert row["reserved_nusd"] >= row["cost_nusd"]
    assert db.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0


def test_anthropic_path_over_http_with_prompt_caching(anthropic_relay, llama_server, db, session):
    price = Price(3.0, 15.0, cached_input=0.3, cache_write=3.75)
    cloud = make_cloud("anthropic:claude-test", base_url=anthropic_relay.url, price=price, max_retries=0)
    before = len(anthropic_relay.requests)
    reply = cloud.call(MSGS, max_tokens=16, budget=Budget(db, Caps(), session), purpose="rewrite_step", stop=["\n\n"])
    req = anthropic_relay.requests[before]
    assert req["path"] == "/v1/messages"
    assert req["body"]["system"][0]["text"] == "Answer briefly."
    assert req["body"]["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "stop_sequences" not in req["body"]  # whitespace-only stops are cut client-side
    want = _direct_usage(llama_server, 16)
    assert (reply.input_tokens, reply.output_tokens) == (want["prompt_tokens"], want["completion_tokens"])
    [row] = store.cloud_calls(db, session)
    assert row["cost_nusd"] == cost_nusd(price, input_tokens=want["prompt_tokens"], output_tokens=want["completion_tokens"])
    assert row["provider"] == "anthropic"


def test_reservation_that_would_break_the_cap_is_refused_before_any_request(fault_server, db, session):
    server = fault_server("ok")
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1000.0, 1000.0), max_retries=0)
    with pytest.raises(BudgetDenied) as e:
        cloud.call(MSGS, max_tokens=64, budget=Budget(db, Caps(session_usd=0.001), session), purpose="rewrite_step")
    assert e.value.scope == "session"
    assert server.requests == []  # nothing was sent
    assert store.cloud_calls(db, session) == []


def test_missing_usage_is_costed_at_the_reservation(fault_server, db, session):
    server = fault_server("no_usage")
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), max_retries=0)
    cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    [row] = store.cloud_calls(db, session)
    assert row["status"] == "no_usage" and row["cost_nusd"] == row["reserved_nusd"] > 0


@pytest.mark.parametrize(
    "mode, kind, billed",
    [("hang", "timeout", True), ("429", "rate_limited", False), ("500", "http_500", False),
     ("503", "http_503", False), ("malformed", "malformed", True), ("truncated", "broken_response", True)],
)
def test_faults_are_recorded_and_open_the_breaker(fault_server, db, session, mode, kind, billed):
    server = fault_server(mode, hang_s=3.0)
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), timeout_s=0.5, max_retries=1)
    budget = Budget(db, Caps(), session)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    [row] = store.cloud_calls(db, session)
    if kind:
        assert e.value.kind == kind and row["status"] == kind
    assert (row["cost_nusd"] == row["reserved_nusd"]) if billed else row["cost_nusd"] == 0
    assert e.value.opens_breaker
    sent = len(server.requests)
    with pytest.raises(CloudError, match="paused"):
        cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    assert len(server.requests) == sent  # the open breaker sent nothing


def test_connection_refused(db, session):
    from edge_agent.cloud_local import free_port

    cloud = make_cloud("openai:m", base_url=f"http://127.0.0.1:{free_port()}/v1", price=Price(1.0, 2.0), max_retries=0)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=8, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind == "connection"
    [row] = store.cloud_calls(db, session)
    assert row["cost_nusd"] == 0 and row["status"] == "connection"


def test_unknown_price_and_missing_key_are_refused(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="no price known"):
        make_cloud("openai:mystery-model", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_cloud("openai:gpt-4o-mini")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        make_cloud("anthropic:claude-haiku-4-5")
    with pytest.raises(ConfigError, match="PROVIDER:MODEL"):
        make_cloud("gemini:pro")
