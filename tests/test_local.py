"""The local model on the real llama.cpp runtime with the embedded SmolLM2."""

import math

import numpy as np
import pytest

from edge_agent.errors import ContextError
from edge_agent.prompts import messages
from tests.conftest import ROBE


def test_render_opens_the_assistant_turn(smol):
    text = smol.render(messages("What is 2+2?"))
    assert "What is 2+2?" in text
    assert text.rstrip("\n").endswith("assistant")


def test_step_has_text_tokens_and_signals(smol):
    prompt = smol.prompt_tokens(messages(ROBE))
    d = smol.next_step(prompt, max_tokens=64)
    assert d.token_ids and len(d.token_ids) <= 64
    assert d.text and d.text == d.text.strip() and "\n\n" not in d.text
    assert smol.detokenize(d.token_ids) == d.raw
    s = d.signals
    assert s.n_tokens == len(d.token_ids)
    assert 0 < s.min_top1 <= s.mean_top1 <= 1
    assert 0 <= s.mean_entropy <= s.max_entropy
    assert 0 <= s.low_top1_share <= 1
    assert d.finish in {"separator", "answer", "eos", "length"}


def test_entropy_top1_and_logprob_match_a_direct_softmax(smol):
    prompt = smol.prompt_tokens(messages(ROBE))
    smol.sync(prompt)
    logits = smol._logits().astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    want_ent = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    tok, ent, top1, logprob = smol._pick(0.0)
    assert tok == int(np.argmax(logits))
    assert math.isclose(top1, float(p.max()), rel_tol=1e-4)
    assert math.isclose(ent, want_ent, rel_tol=1e-3, abs_tol=1e-4)
    assert math.isclose(logprob, math.log(float(p[tok])), rel_tol=1e-4, abs_tol=1e-5)


def test_a_step_carries_the_sum_mean_and_min_of_its_tokens_logprobs(smol):
    prompt = smol.prompt_tokens(messages(ROBE))
    d = smol.next_step(prompt, max_tokens=12)
    # the same tokens' log-probs, one by one from the logits the context gives
    lps, context = [], list(prompt)
    for tok in d.token_ids:
        smol.sync(context)
        logits = smol._logits().astype(np.float64)
        top = logits.max()
        lps.append(float(logits[tok] - top - math.log(np.exp(logits - top).sum())))
        context.append(tok)
    s = d.signals
    assert s.n_tokens == len(lps) > 0
    assert math.isclose(s.sum_logprob, sum(lps), abs_tol=1e-3)
    assert math.isclose(s.mean_logprob, sum(lps) / len(lps), abs_tol=1e-4)
    assert math.isclose(s.min_logprob, min(lps), abs_tol=1e-4)


def test_next_step_evaluates_only_new_tokens(smol):
    prompt = smol.prompt_tokens(messages(ROBE))
    first = smol.next_step(prompt, max_tokens=40)
    context = prompt + list(first.token_ids)
    second = smol.next_step(context, max_tokens=40)
    # KV reuse: the prefix is not re-run; each generated token is evaluated once.
    assert second.evaluated <= len(second.token_ids) + 1
    assert first.evaluated <= len(prompt) + len(first.token_ids) + 1


def test_sync_after_a_rollback_reuses_the_common_prefix(smol):
    prompt = smol.prompt_tokens(messages(ROBE))
    smol.next_step(prompt, max_tokens=30)
    # Back to the bare prompt: nothing to re-run but the last prompt token, for fresh logits.
    assert smol.sync(prompt) <= 1
    other = smol.prompt_tokens(messages("What is 7 times 8?"))
    common = next(i for i, (a, b) in enumerate(zip(prompt, other)) if a != b)
    assert smol.sync(other) == len(other) - common


def test_greedy_steps_are_deterministic_from_any_kv_state(smol):
    prompt = smol.prompt_tokens(messages(ROBE))
    a = smol.next_step(prompt, max_tokens=30)
    smol.sync(smol.prompt_tokens(messages("Unrelated text to dirty the cache.")))
    b = smol.next_step(prompt, max_tokens=30)
    assert a.token_ids == b.token_ids


def test_prompt_over_the_context_is_refused(smol):
    with pytest.raises(ContextError, match="context holds 2048"):
        smol.prompt_tokens(messages("seven " * 3000))
