"""Policies and scorers are pure functions of steps and signals: tested on crafted inputs."""

import pytest

from edge_agent.values import Signals, Step
from triggers import get_policy
from triggers.scorers import logprob_score


def _step(i=0, **sig):
    return Step(index=i, author="local", kind="step", text="t", raw="t\n\n", token_ids=(1,), signals=Signals(n_tokens=5, **sig))


def test_logprob_score_orders_sure_above_unsure():
    sure = logprob_score(Signals(n_tokens=10, min_top1=0.9, low_top1_share=0.0))
    shaky = logprob_score(Signals(n_tokens=10, min_top1=0.3, low_top1_share=0.2))
    lost = logprob_score(Signals(n_tokens=10, min_top1=0.01, low_top1_share=0.6))
    assert 1 >= sure > shaky > lost >= 0
    assert sure == pytest.approx(0.9 ** 0.25)
    assert logprob_score(Signals()) == 1.0


def test_trim_thr_rewrites_only_below_tau():
    policy = get_policy("trim-thr")
    policy.tau = 0.5
    low, high = _step(min_top1=0.01, low_top1_share=0.5), _step(min_top1=0.95)
    [e_low] = policy.check([], low)
    [e_high] = policy.check([], high)
    assert e_low.fired and e_low.threshold == 0.5 and e_low.score < 0.5
    assert not e_high.fired and e_high.score > 0.5
    action = policy.decide([], low, [e_low])
    assert (action.kind, action.trigger, action.score, action.threshold) == ("rewrite", "step_score", e_low.score, 0.5)
    assert policy.decide([], high, [e_high]).kind == "accept"


def test_every_k_and_cloud_only():
    every = get_policy("every-k")
    assert [every.check([], _step(i))[0].fired for i in range(4)] == [False, True, False, True]
    assert get_policy("cloud-only").before_step([]).kind == "solve"  # the large model alone: one call
    assert get_policy("cloud-only").before_step([_step(0)]).kind == "rewrite"  # then step by step if short
    assert get_policy("local-only").before_step([]).kind == "accept"
    assert get_policy("local-only").uses_cloud is False
