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


def _fold_ids(per_fold=4):
    """Problem ids, ``per_fold`` in each of read_eval's folds."""
    from edge_agent.read_eval import FOLDS, _fold

    ids, i = {f: [] for f in range(FOLDS)}, 0
    while min(len(v) for v in ids.values()) < per_fold:
        pid = f"q{i}"
        if len(ids[_fold(pid)]) < per_fold:
            ids[_fold(pid)].append(pid)
        i += 1
    return ids


def test_each_parameter_is_set_on_the_other_folds_only():
    from edge_agent.read_eval import _fold, cross_fit

    problems = [Problem(pid, 0, _read([1.0]), {}) for ids in _fold_ids().values() for pid in ids]
    seen = []
    out = cross_fit(problems, lambda train: [p.id for p in train], lambda train_ids, p: seen.append((p.id, train_ids)) or p.id)
    assert out == [p.id for p in problems]  # every problem applied once, in order
    for pid, train_ids in seen:
        assert pid not in train_ids and all(_fold(t) != _fold(pid) for t in train_ids)
        assert len(train_ids) == len(problems) - 4


def test_tau_chosen_on_the_held_out_fold_would_show():
    """Fold 0's repairs are cheap, every other fold's too dear for the share. Set on the other folds, tau reads
    nothing anywhere (accuracy 0); set on the held-out fold it would repair fold 0's four problems."""
    ids = _fold_ids()
    problems = [Problem(pid, 0, _read([0.0, 5.0], cost=0.0), {1: (1, 1 if f == 0 else 1000, 0.0, None)})
                for f, fold in ids.items() for pid in fold]
    out = evaluate(problems, {"tokens": 100.0, "usd": 1.0}, local=0.0, cloud=1.0, max_k=4)
    row = next(r for r in out["rows"] if r["measure"] == "tokens" and r["share"] == 0.10)
    assert row["verify-repair"] == {"acc": 0.0, "pgr": 0.0, "spent": 0.0}


def test_k_chosen_on_the_held_out_fold_would_show():
    """The step k = 0 fixes fold 0's problems only, k = 1 every other fold's. Set on the other folds, k = 1 is the
    best fixed step for every fold, so fold 0 stays wrong: accuracy 16/20, not 20/20."""
    ids = _fold_ids()
    problems = [Problem(pid, 0, _read([0.0, 0.0]), {0: (int(f == 0), 1, 0.0, None), 1: (int(f != 0), 1, 0.0, None)})
                for f, fold in ids.items() for pid in fold]
    out = evaluate(problems, {"tokens": 100.0, "usd": 1.0}, local=0.0, cloud=1.0, max_k=4)
    row = next(r for r in out["rows"] if r["measure"] == "tokens" and r["share"] == 0.10)
    assert row["best fixed k"]["acc"] == 0.8


def test_no_row_spends_above_its_share_when_one_read_costs_more_than_it():
    """One read costs 31% of cloud-only's USD (the bench pair's case): the USD rows at 10-25% read nothing."""
    problems = []
    for i in range(40):
        wrong = i % 2 == 0
        problems.append(Problem(f"p{i}", int(not wrong), _read([0.0, 9.0 if wrong else 0.1], cost=0.031),
                                {1: (1, 10, 0.001, None)}))
    out = evaluate(problems, {"tokens": 100.0, "usd": 0.1}, local=0.5, cloud=1.0, max_k=4)
    assert out["read_usd_share"] == 0.31
    for row in out["rows"]:
        for label, cell in row.items():
            if isinstance(cell, dict):
                assert cell["spent"] <= row["share"] + 1e-9, (row["measure"], row["share"], label)
        if row["measure"] == "usd":
            assert row["verify-repair"]["spent"] == 0.0 and row["verify-repair"]["acc"] == 0.5
        else:  # a read costs no output tokens: the reads pay off there
            assert row["verify-repair"]["acc"] > 0.5


def test_the_length_gate_is_applied_where_it_was_chosen():
    """Reading every trace costs 30% of cloud-only's USD; the long ones (the wrong ones) only 12%. Within 15% only
    the gated read can read at all, and it fixes them."""
    problems = []
    for i in range(50):
        wrong = i % 5 < 2
        trace = TraceRead(tuple(StepRead(j, 30 if wrong else 5, -(9.0 if wrong and j == 1 else 0.0) - 1.0, -1.0, 0, -1.0)
                                for j in range(2)), 40, 0.03)
        problems.append(Problem(f"p{i}", int(not wrong), trace, {1: (1, 10, 0.0, None)}))
    out = evaluate(problems, {"tokens": 100.0, "usd": 0.1}, local=0.6, cloud=1.0, max_k=4)
    row = next(r for r in out["rows"] if r["measure"] == "usd" and r["share"] == 0.15)
    assert row["verify-repair"]["spent"] == 0.0
    gated = row["verify-repair, length-gated read"]
    assert gated["acc"] >= 0.9 and 0.11 <= gated["spent"] <= 0.15  # a fold with more long traces than 40% stops early


def test_a_tie_in_trust_keeps_the_repair_live_and_in_replay():
    from triggers.types import Step
    from triggers.verify_repair import VerifyRepair, VerifyRepairParams

    draft = _read([0.0, 5.0, 0.0])
    tie = TraceRead(draft.steps, 40, 0.01)  # the repaired finish read exactly as believable as the draft
    assert tie.trust == draft.trust
    assert verify_repair(Problem("t", 0, draft, {1: (1, 30, 0.02, tie)}), 4.0, 4)[0] == 1  # replay: the repair stands
    policy = VerifyRepair(VerifyRepairParams(tau=4.0))
    steps = [Step(i, "edge", "step", f"s{i}", f"s{i}", (i,)) for i in range(3)]
    policy.reset("p")
    assert policy.review(steps, "done", 0, draft).kind == "rewrite"
    assert policy.review(steps, "done", 1, tie).kind == "accept"  # live: the repair stands too
    lower = _read([0.0, 6.0, 0.0])
    policy.reset("p")
    policy.review(steps, "done", 0, draft)
    assert policy.review(steps, "done", 1, lower).kind == "restore"
    assert verify_repair(Problem("t", 0, draft, {1: (1, 30, 0.02, lower)}), 4.0, 4)[0] == 0


def test_a_held_out_fold_spends_at_most_its_budget_in_order():
    from edge_agent.read_eval import within

    ids = _fold_ids(per_fold=3)
    problems = [Problem(pid, 0, _read([1.0]), {}) for fold in ids.values() for pid in fold]
    runs = [(1, 10.0, 0.5) for _ in problems]  # every run spends 10 tokens; the budget is 25 per problem... of 3
    got = within(problems, runs, 1, 25.0 / 3)
    for fold in ids.values():
        mine = [g for p, g in zip(problems, got) if p.id in fold]
        assert mine == [(1, 10.0, 0.5), (1, 10.0, 0.5), (0, 0.0, 0.0)]  # the third would pass 25: the edge's answer


def test_a_tau_that_overspends_on_the_held_out_fold_is_held_to_the_share():
    """Fold 0's repairs are dear, every other fold's cheap: tau set on the cheap folds would repair all of fold 0
    at 10x the share. The row stays within its share; the held-out fold gets the edge's answers."""
    ids = _fold_ids()
    problems = [Problem(pid, 0, _read([0.0, 5.0], cost=0.0), {1: (1, 1000 if f == 0 else 1, 0.0, None)})
                for f, fold in ids.items() for pid in fold]
    out = evaluate(problems, {"tokens": 100.0, "usd": 1.0}, local=0.0, cloud=1.0, max_k=4)
    for row in out["rows"]:
        for label in ("verify-repair", "verify-repair, no second read", "verify-repair, length-gated read"):
            assert row[label]["spent"] <= row["share"], (row["measure"], row["share"], label)
