"""verify-repair replayed on atlas rows: the trusted finish is kept, a gate skips reads, tau respects the share."""

from __future__ import annotations

from edge_agent.read_eval import Problem, evaluate, verify_repair
from triggers.reading import StepRead, TraceRead


def _read(gaps, n=10, cost=0.01):
    return TraceRead(tuple(StepRead(i, n, -g - 1.0, -1.0, 0, -1.0) for i, g in enumerate(gaps)), 40, cost)


def test_a_repair_is_kept_only_when_the_read_trusts_it_more():
    trace = _read([0.0, 5.0, 0.0])  # flags step 1, suspicion 5
    fixed = Problem("a", 0, trace, {1: (1, 30, 0.02, _read([0.0, 1.0, 0.0]))})
    assert verify_repair(fixed, 4.0, 4) == (1, 30.0, 0.01 + 0.02 + 0.01)
    broke = Problem("b", 1, trace, {1: (0, 30, 0.02, _read([0.0, 9.0, 0.0]))})
    assert verify_repair(broke, 4.0, 4)[0] == 1  # the read trusts the draft more: the draft stands
    assert verify_repair(broke, 4.0, 4, second_read=False)[0] == 0
    assert verify_repair(fixed, 6.0, 4) == (0, 0.0, 0.01)  # below tau: only the read is paid
    assert verify_repair(fixed, 4.0, 4, gate=1000) == (0, 0.0, 0.0)  # gated out: not even read


def test_cross_validated_spend_stays_near_the_share_and_the_references_are_there():
    problems = []
    for i in range(40):
        wrong = i % 3 != 0
        trace = _read([0.0, 6.0 if wrong else 1.0, 0.0], cost=0.001)
        problems.append(Problem(f"p{i}", int(not wrong), trace,
                                {k: (int(wrong and k == 1) or int(not wrong), 20, 0.002, _read([0.0, 0.5, 0.0]))
                                 for k in range(3)}))
    out = evaluate(problems, {"tokens": 100.0, "usd": 0.01}, local=1 / 3, cloud=1.0, max_k=4)
    rows = {(r["measure"], r["share"]): r for r in out["rows"]}
    for (measure, share), r in rows.items():
        assert set(r) >= {"verify-repair", "random step", "best fixed k", "verify-repair, length-gated read"}
        assert r["random step"]["spent"] <= share + 1e-9
    assert rows[("tokens", 0.25)]["verify-repair"]["spent"] <= 0.25 + 0.1  # tau set on the other folds
    assert rows[("tokens", 0.25)]["verify-repair"]["pgr"] > rows[("tokens", 0.25)]["random step"]["pgr"]
    assert out["auroc"]["whether: sum(e - c)"] == 1.0
