"""Cloud steps continue the edge's own turn: the request each adapter sends, the agent's use of it, the
fallback when a provider refuses a prefill, the handover action, and cloud-local's prefill end to end."""

import json
import sqlite3

import pytest

from edge_agent.prompts import SYSTEM, continuation_messages
from edge_agent.values import Step
from tests.conftest import run_cli

PROBLEM = "Ann has 3 boxes with 4 pens each. She gives away 5 pens. How many pens are left?"
FIRST = Step(0, "local", "step", "Ann has 3 boxes of 4 pens.", "Ann has 3 boxes of 4 pens.\n\n", (1,))


def _script(tmp_path, steps):
    path = tmp_path / "steps.json"
    path.write_text(json.dumps(steps))
    return f"script:{path}"


def test_the_openai_adapter_asks_to_continue_the_final_assistant_message(fault_server):
    from cloud.adapters import OpenAIAdapter

    server = fault_server("script", replies=["She has 3 * 4 = 12 pens."])
    adapter = OpenAIAdapter("m", base_url=server.url + "/v1", max_retries=0)
    msgs = continuation_messages(PROBLEM, [FIRST])
    adapter.complete(msgs, max_tokens=16, stop=["\n\n"], prefill=True)
    body = server.requests[0]["body"]
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert body["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROBLEM},
                                {"role": "assistant", "content": FIRST.raw}]
    adapter.complete(msgs[:2], max_tokens=16)  # no prefill asked: no flags
    assert "continue_final_message" not in server.requests[1]["body"]
    adapter.complete(continuation_messages(PROBLEM, []), max_tokens=16, prefill=True)  # nothing to continue yet
    third = server.requests[2]["body"]
    assert "continue_final_message" not in third and third["messages"][-1]["role"] == "user"


def test_the_anthropic_adapter_sends_the_prefix_as_a_prefill_without_trailing_whitespace(fault_server):
    from cloud.adapters import AnthropicAdapter

    server = fault_server("messages")
    server.usage = {"input_tokens": 40, "output_tokens": 9}
    adapter = AnthropicAdapter("m", base_url=server.url, api_key="k", max_retries=0)
    adapter.complete(continuation_messages(PROBLEM, [FIRST]), max_tokens=16, stop=["\n\n"], prefill=True)
    body = server.requests[0]["body"]
    assert body["system"][0]["text"] == SYSTEM
    assert body["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": FIRST.text}]}
    assert body["messages"][0]["content"][0]["text"] == PROBLEM and "stop_sequences" not in body


def test_a_cloud_step_continues_the_accepted_steps_and_never_sees_the_draft(fault_server, tmp_path):
    steps = ["Ann has 3 boxes of 4 pens.", "DRAFT says 99 pens.", "So 12 - 5 = 7 pens, \\boxed{7}."]
    server = fault_server("script", replies=["She has 3 * 4 = 12 pens.\n\nMore text the edge never sees."])
    proc = run_cli("solve", PROBLEM, "--json", "--model", _script(tmp_path, steps), "--policy", "every-k",
                   "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1",
                   "--price-out", "2", "--max-steps", "3", "--max-step-tokens", "64")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert [(s["author"], s["text"]) for s in report["steps"]] == [
        ("local", steps[0]), ("cloud", "She has 3 * 4 = 12 pens."), ("local", steps[2])]
    assert report["status"] == "done" and report["answer"] == "7"
    [request] = server.requests
    body = request["body"]
    assert body["messages"][-1] == {"role": "assistant", "content": steps[0] + "\n\n"}
    assert body["continue_final_message"] is True and body["stop"] == ["\n\n"]
    assert "DRAFT" not in json.dumps(body)  # the rejected local draft is never sent
    conn = sqlite3.connect(tmp_path / "edge.db")
    assert conn.execute("SELECT purpose, mode FROM cloud_calls").fetchall() == [("rewrite_step", "continuation")]
    assert json.loads(conn.execute("SELECT settings FROM sessions").fetchone()[0])["continuation"] == "on"


def test_a_refused_prefill_falls_back_to_the_transcript_for_the_rest_of_the_session(fault_server, tmp_path):
    steps = ["Ann has 3 boxes of 4 pens.", "DRAFT one.", "She gives 5 away.", "DRAFT two."]
    server = fault_server("no-prefill", replies=["She has 3 * 4 = 12 pens."])
    proc = run_cli("solve", PROBLEM, "--json", "--model", _script(tmp_path, steps), "--policy", "every-k",
                   "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1",
                   "--price-out", "2", "--max-steps", "4", "--max-step-tokens", "64")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert [s["author"] for s in report["steps"]] == ["local", "cloud", "local", "cloud"]
    refused = [e for e in report["events"] if e["trigger"] == "continuation_refused"]
    assert len(refused) == 1 and "Expected last role" in refused[0]["detail"]["message"]
    bodies = [r["body"] for r in server.requests]
    assert bodies[0].get("continue_final_message") is True
    assert all("continue_final_message" not in b and b["messages"][-1]["role"] == "user" for b in bodies[1:])
    assert len(bodies) == 3  # the refused call, then the transcript for both escalations
    conn = sqlite3.connect(tmp_path / "edge.db")
    calls = conn.execute("SELECT status, cost_nusd, mode FROM cloud_calls ORDER BY id").fetchall()
    assert calls[0] == ("http_400", 0, "continuation") and [c[0] for c in calls[1:]] == ["ok", "ok"]
    assert all(c[2] is None for c in calls[1:])  # the transcript prompt
    assert json.loads(conn.execute("SELECT settings FROM sessions").fetchone()[0])["continuation"] == "off"


def test_the_mode_goes_by_provider_unless_set():
    from cloud.client import make_cloud
    from cloud.pricing import Price
    from edge_agent.cloud_steps import resolve_continuation

    def cloud(spec, url):
        return make_cloud(spec, base_url=url, api_key="k", price=Price(1, 2))

    assert resolve_continuation("auto", cloud("openai:gpt-4o-mini", None)) == "off"
    assert resolve_continuation("auto", cloud("openai:m", "https://api.openai.com/v1")) == "off"
    assert resolve_continuation("auto", cloud("openai:m", "http://127.0.0.1:9/v1")) == "on"
    assert resolve_continuation("auto", cloud("anthropic:claude-haiku-4-5", None)) == "on"
    assert resolve_continuation("on", cloud("openai:gpt-4o-mini", None)) == "on"
    assert resolve_continuation("off", cloud("anthropic:claude-haiku-4-5", None)) == "off"
    assert resolve_continuation("auto", None) == "off"


def test_a_handover_lets_the_cloud_write_the_rest_from_the_prefix(fault_server, tmp_path):
    shaky = {"min_top1": 0.1, "low_top1_share": 0.5}  # a logprob score of about 0.28
    steps = [{"text": "DRAFT one.", "signals": shaky}, "never written", "never written"]
    server = fault_server("script", replies=["She has 12 pens.\n\nShe gives 5 away: 12 - 5 = 7.\n\n"
                                             "So \\boxed{7}.\n\nAfter the answer: dropped."])
    # handover_at=1: the first escalation hands the rest of the solution over
    proc = run_cli("solve", PROBLEM, "--json", "--model", _script(tmp_path, steps), "--policy",
                   "trim-thr(tau=0.5,handover_at=1)", "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1",
                   "--price-in", "1", "--price-out", "2", "--max-steps", "6", "--max-step-tokens", "64")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert [(s["author"], s["text"]) for s in report["steps"]] == [
        ("cloud", "She has 12 pens."), ("cloud", "She gives 5 away: 12 - 5 = 7."), ("cloud", "So \\boxed{7}.")]
    assert report["answer"] == "7" and [e["action"] for e in report["events"] if e["trigger"] == "step_score"] == ["handover"]
    [request] = server.requests
    assert request["body"]["messages"][-1]["role"] == "user"  # nothing accepted yet: a plain new turn
    assert "stop" not in request["body"]
    conn = sqlite3.connect(tmp_path / "edge.db")
    assert conn.execute("SELECT purpose FROM cloud_calls").fetchall() == [("handover",)]


def test_cloud_local_continues_a_final_assistant_message(llama_server, smol):
    """The loopback server renders the earlier turns, opens the assistant turn and continues the prefix."""
    from cloud.adapters import OpenAIAdapter

    adapter = OpenAIAdapter("local", base_url=llama_server, max_retries=0)
    msgs = continuation_messages(PROBLEM, [FIRST])
    continued = adapter.complete(msgs, max_tokens=8, stop=["\n\n"], prefill=True)
    prompt = smol.render(msgs[:-1]) + FIRST.raw  # what the edge's own context holds
    expected = len(smol.tokenize(prompt, special=True))
    assert continued.usage["input_tokens"] in (expected, expected + 1)  # +1: a BOS the server may add
    closed = adapter.complete(msgs, max_tokens=8, stop=["\n\n"])  # the same messages as a new turn
    assert closed.usage["input_tokens"] > continued.usage["input_tokens"]


@pytest.mark.parametrize("body, expected", [
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "continue_final_message": True}, "<user>q|a"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, None),
    ({"messages": [{"role": "user", "content": "q"}], "continue_final_message": True}, None),
])
def test_cloud_local_takes_only_a_final_assistant_message_with_the_flag_as_a_prefill(body, expected):
    from edge_agent.cloud_server import prefill_prompt

    render = lambda msgs: "".join(f"<{m['role']}>{m['content']}" for m in msgs) + "|"  # noqa: E731
    assert prefill_prompt(body, render) == expected
