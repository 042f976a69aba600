"""The cloud read: one prefill of the edge's tokens through the loopback cloud, nothing generated, paid like a call."""

from __future__ import annotations

import math

import numpy as np
import pytest

import store
from cloud.budget import Budget, Caps
from cloud.client import make_cloud
from cloud.errors import BudgetDenied
from cloud.pricing import Price
from cloud.reads import read, read_mode
from edge_agent.prompts import messages
from triggers.reading import TraceRead, by_ids, by_text
from tests.conftest import ROBE

PRICE = Price(input=0.55, output=2.19)


def _session(db):
    return store.new_session(db, problem="p", model="m", model_path="x", policy="p", settings={})


def _llama_logprobs(path, ids):
    """llama.cpp's own log-probs of ``ids``: a logits_all context, each position's softmax at the next id."""
    from llama_cpp import Llama

    from edge_agent import runtime

    runtime.apply()
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    s = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    llm.close()
    out = []
    for i in range(1, len(ids)):
        row = s[i - 1]
        top = row.max()
        out.append(float(row[ids[i]] - top - math.log(np.exp(row - top).sum())))
    return out


def test_a_read_gives_llama_cpps_own_logprobs_for_the_same_ids_and_is_booked_as_input_only(
        llama_server, smol, smol_path, db):
    prompt = smol.prompt_tokens(messages(ROBE))
    step = smol.next_step(prompt, max_tokens=16)
    ids = prompt + list(step.token_ids)
    cloud = make_cloud("openai:local", base_url=llama_server, price=PRICE, timeout_s=120, max_retries=0)
    sid = _session(db)
    reply = read(cloud, ids, budget=Budget(db, Caps(), sid))
    assert len(reply.token_logprobs) == len(ids) and reply.token_logprobs[0] is None
    want = _llama_logprobs(smol_path, ids)
    got = reply.token_logprobs[1:]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-3
    # the edge's own decode saw the same distribution for its chosen tokens (one token at a time: looser)
    assert math.isclose(sum(got[len(prompt) - 1:]), step.signals.sum_logprob, abs_tol=0.05 * len(step.token_ids))
    calls = list(db["cloud_calls"].rows_where("session_id = ?", [sid]))
    assert len(calls) == 1
    c = calls[0]
    assert (c["purpose"], c["status"], c["input_tokens"], c["output_tokens"]) == ("read", "ok", len(ids), 0)
    assert c["cost_nusd"] == round(len(ids) * PRICE.input * 1000) and reply.cost_usd == c["cost_nusd"] / 1e9
    # a second read of a longer context reuses the prefix and still agrees
    again = read(cloud, ids + [ids[-1]], budget=Budget(db, Caps(), sid))
    assert again.token_logprobs[: len(ids)] == reply.token_logprobs


def test_a_read_the_cap_cannot_pay_is_refused_before_anything_is_sent(db):
    # nothing listens at this address: a read that got past the budget would fail with a connection error
    cloud = make_cloud("openai:local", base_url="http://127.0.0.1:9/v1", price=PRICE, max_retries=0)
    sid = _session(db)
    ids = list(range(1000, 1400))  # 400 tokens at $0.55/1M = $0.00022
    with pytest.raises(BudgetDenied):
        read(cloud, ids, budget=Budget(db, Caps(session_usd=0.0002), sid))
    assert db["cloud_calls"].count == 0
    rows = list(db["budget_reservations"].rows)
    assert all(r.get("status") != "open" for r in rows)


def test_steps_line_up_with_a_same_vocabulary_read():
    prompt = [1, 2, 3]
    steps = [(0, (10, 11), -0.5), (1, (12, 13, 14), -0.1)]
    lps = [None, -0.1, -0.2, -1.0, -3.0, -0.01, -0.02, -4.0]
    reads = by_ids(prompt, steps, lps)
    assert [(r.index, r.n, r.sum_c, r.low, r.sum_e) for r in reads] == [
        (0, 2, -4.0, 1, -0.5), (1, 3, -4.03, 1, -0.1)]
    trace = TraceRead(reads)
    assert math.isclose(trace.suspicion, (-0.5 + 4.0) + (-0.1 + 4.03))
    assert trace.flagged(4) == 1 and trace.flagged(1) == 0
    with pytest.raises(ValueError):
        by_ids(prompt, steps, lps[:-1])


def test_a_cloud_with_its_own_tokenizer_is_mapped_back_to_the_steps_by_offset():
    prompt_text = "<s>Q: 2+3?\n"
    steps = [(0, "2 plus 3\n\n", -1.0), (1, "is 5.", -0.2)]
    # the cloud splits the text its own way: one token per word, one straddling nothing
    text = prompt_text + "".join(r for _, r, _ in steps)
    pieces, offsets, at = [], [], 0
    for piece in ["<s>", "Q:", " 2+3?\n", "2", " plus", " 3", "\n\n", "is", " 5", "."]:
        pieces.append(piece)
        offsets.append(at)
        at += len(piece)
    assert "".join(pieces) == text
    lps = [None, -1.0, -2.0, -0.5, -3.0, -0.1, -0.2, -0.3, -2.5, -0.05]
    reads = by_text(prompt_text, steps, pieces, lps, offsets)
    assert [(r.index, r.n) for r in reads] == [(0, 4), (1, 3)]
    assert math.isclose(reads[0].sum_c, -0.5 - 3.0 - 0.1 - 0.2) and math.isclose(reads[1].sum_c, -0.3 - 2.5 - 0.05)
    assert reads[0].low == 1 and reads[1].low == 1


def test_which_clouds_read_by_prefill_and_which_need_the_judge():
    loop = make_cloud("openai:local", base_url="http://127.0.0.1:8766/v1", price=PRICE)
    assert read_mode(loop) == "echo"
    assert read_mode(loop, "judge") == "judge"
    hosted = make_cloud("openai:gpt-4o-mini", base_url="https://api.openai.com/v1", api_key="sk-test")
    assert read_mode(hosted) == "judge"  # OpenAI's API no longer echoes prompt log-probs
    anthropic = make_cloud("anthropic:claude-haiku-4-5", api_key="sk-ant-test")
    assert read_mode(anthropic) == "judge"
