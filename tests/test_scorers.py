"""Step scorers: the formulas on crafted inputs, the self scorer's KV reuse on the real model, and the
cloud judge through the budget and the ledger against real HTTP endpoints."""

import math

import pytest

import store
from cloud.budget import Budget, Caps
from cloud.client import make_cloud
from cloud.pricing import Price
from edge_agent.agent import Agent, Settings
from edge_agent.prompts import messages
from edge_agent.values import Signals, Step
from tests.conftest import ROBE
from triggers.scorers import NO, VERIFY_QUESTION, YES, digit_score, judge_messages, logprob_score, self_score


def _step(i=0, text="2 + 1 = 3 bolts.", **sig):
    return Step(i, "local", "step", text, text + "\n\n", (1, 2, 3), signals=Signals(n_tokens=3, **sig))


def test_self_score_normalises_yes_over_yes_and_no():
    assert self_score(0.3, 0.1) == pytest.approx(0.75)
    assert self_score(0.02, 0.18) == pytest.approx(0.1)
    assert self_score(0.0, 0.0) == 0.5  # no mass on either answer: no opinion
    assert self_score(1e-3, 0.0) == 1.0


def test_digit_score_prefers_logprobs_and_merges_variants():
    top = [("7", math.log(0.5)), (" 7", math.log(0.1)), ("9", math.log(0.2)), ("The", math.log(0.15)), ("10", -1.0)]
    value, detail = digit_score(top, "7")
    expected = (7 * 0.6 + 9 * 0.2) / 0.8
    assert value == pytest.approx(expected / 9, abs=1e-6)
    assert detail["source"] == "logprobs" and detail["probs"] == {"7": 0.6, "9": 0.2}
    assert detail["digit_mass"] == pytest.approx(0.8)
    assert digit_score(None, "Rating: 3") == (pytest.approx(3 / 9, abs=1e-6), {"source": "text", "digit": 3})
    assert digit_score([("The", -0.1)], "4")[1]["source"] == "text"  # no digit among the alternatives
    assert digit_score([("The", -0.1)], "The step") is None


def test_judge_messages_carry_problem_earlier_steps_and_the_last_one():
    msgs = judge_messages(ROBE, [_step(0, "Blue is 2 bolts.")], _step(1, "White is 1 bolt."))
    body = msgs[-1]["content"]
    assert ROBE in body and "Step 0: Blue is 2 bolts." in body and "LAST step (Step 1):\nWhite is 1 bolt." in body
    assert "one digit" in msgs[0]["content"]


def test_verify_evaluates_only_the_question_and_leaves_the_kv_at_the_step(smol):
    ctx = smol.prompt_tokens(messages(ROBE))
    first = smol.next_step(ctx, max_tokens=24)
    after = ctx + list(first.token_ids)
    # reference: the next step decoded with no verification in between, from the same KV state
    # (the step evaluated as one batch, as below: batched and one-by-one logits differ in the last bits)
    smol.sync(ctx)
    smol.sync(after)
    reference = smol.next_step(after, max_tokens=16)
    smol.sync(ctx)
    assert smol.sync(after) == len(first.token_ids)
    suffix = smol.question_suffix(VERIFY_QUESTION)
    assert 5 < len(suffix) < 40 and VERIFY_QUESTION in smol.detokenize(suffix)
    v = smol.verify(after, VERIFY_QUESTION, YES, NO)
    assert v.evaluated == v.suffix_tokens == len(suffix)  # the context came from the KV cache
    assert 0 < v.p_yes + v.p_no <= 1
    assert smol.llm.n_tokens == len(after) and smol._kv == after  # the question is gone from the cache
    assert smol.sync(after) == 0  # nothing to re-evaluate, not even the step's last token
    second = smol.next_step(after, max_tokens=16)
    assert second.evaluated == len(second.token_ids)  # only the new tokens
    assert second.token_ids == reference.token_ids and second.signals == reference.signals


def test_the_cloud_judge_is_one_budgeted_token_with_logprobs(llama_server, db):
    sid = store.new_session(db, problem=ROBE, model="m", model_path="x", policy="p", settings={})
    cloud = make_cloud("openai:local", base_url=llama_server, max_retries=0, cache=True)
    msgs = judge_messages(ROBE, [], _step())
    reply, top = cloud.judge(msgs, budget=Budget(db, Caps(), sid), step_idx=0)
    again, top2 = cloud.judge(msgs, budget=Budget(db, Caps(), sid), step_idx=0)
    assert reply.output_tokens == 1 and reply.cost_usd > 0
    assert top and len(top) >= 5 and all(isinstance(t, str) and lp <= 0 for t, lp in top)
    assert again.cost_usd > 0 and top2  # never replayed from the response cache: the logprobs would be lost
    calls = store.cloud_calls(db, sid)
    assert [(c["purpose"], c["output_tokens"], c["status"]) for c in calls] == [("judge", 1, "ok")] * 2
    assert all(c["cost_nusd"] > 0 and c["reserved_nusd"] >= c["cost_nusd"] for c in calls)


def test_judge_score_reads_the_digit_without_logprobs_and_falls_back_when_refused(smol, db, fault_server):
    server = fault_server("script", replies=["7"])
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1, 2), max_retries=0)
    agent = Agent(smol, db, "local-only", cloud=cloud)
    sid = agent.start(ROBE, Settings(max_steps=2, max_step_tokens=16))
    step = _step(min_top1=0.2, low_top1_share=0.5)
    events = []
    got = agent.judge_score(sid, ROBE, [], step, events)
    assert (got.scorer, got.value, got.detail["source"]) == ("cloud-judge", pytest.approx(7 / 9, abs=1e-6), "text")
    assert server.requests[-1]["body"]["max_tokens"] == 1 and server.requests[-1]["body"]["logprobs"] is True
    assert events == [] and [c["purpose"] for c in store.cloud_calls(db, sid)] == ["judge"]

    broke = Agent(smol, db, "local-only", cloud=cloud, caps=Caps(session_usd=0.0))
    got = broke.judge_score(sid, ROBE, [], step, events)
    assert got.scorer == "logprob" and got.value == logprob_score(step.signals)
    assert "budget_denied" in got.detail["fallback"]
    assert [(e.trigger, e.detail["purpose"]) for e, _ in events] == [("budget_denied", "judge")]
    assert len(store.cloud_calls(db, sid)) == 1  # nothing was sent

    down = make_cloud("openai:m", base_url=fault_server("500").url + "/v1", price=Price(1, 2), max_retries=0)
    events = []
    got = Agent(smol, db, "local-only", cloud=down).judge_score(sid, ROBE, [], step, events)
    assert got.scorer == "logprob" and [e.trigger for e, _ in events] == ["cloud_unavailable"]
    assert store.cloud_calls(db, sid)[-1]["status"] == "http_500"  # the failed call is in the ledger
