"""Read-driven policies replayed on an atlas with its reads, cross-validated by problem.

``verify-repair`` (one round): read the edge's trace; if its suspicion (sum of e - c) is at least tau, let the
cloud write the step the read flags most (k < max_k) and the edge finish (the atlas's step branch at k); read
that finish and keep whichever of the two the read trusts more (higher mean c - e). ``no second read`` keeps
the repair. Costs are counted two ways, as shares of cloud-only's: output tokens (the cloud steps), and USD
(the steps' input and output tokens and every read, at the atlas cloud's price). tau is set on the training
folds so that the policy spends the target share there, then applied to the held-out fold; the references
at the same share are a random single step and the best fixed step (chosen on the training folds). The
``length-gated read`` variant reads only traces at least as long as a gate (the edge's token count, a free
signal of a wrong trace: BASELINES.md), gate and tau chosen together on the training folds.
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .atlas import auroc
from triggers.reading import TraceRead

SHARES = (0.10, 0.15, 0.25)
FOLDS = 5


@dataclass(frozen=True)
class Problem:
    id: str
    correct: int
    trace: TraceRead
    branches: dict[int, tuple[int, int, float, TraceRead | None]]  # k -> (correct, cloud_out, step USD, read)


def load(db: Any, reads: dict[str, dict], price: Any) -> tuple[list[Problem], dict[str, float]]:
    """The problems whose trace was read, with their step branches; and cloud-only's mean tokens and USD."""
    import store

    problems, branches = store.atlas_rows(db)
    by_sid = {r["session_id"]: TraceRead.from_dict(r["read"]) for r in reads.values()}
    out, c_out, c_usd = [], [], []
    for p in problems:
        trace = by_sid.get(p.get("trace_session"))
        cloud = next((b for b in branches if b["problem_id"] == p["id"] and b["kind"] == "cloud_only"), None)
        if trace is None or cloud is None:
            continue
        bs = {b["k"]: (int(b["correct"]), int(b["cloud_out"] or 0), _usd(price, b), by_sid.get(b["session_id"]))
              for b in branches if b["problem_id"] == p["id"] and b["kind"] == "step"}
        out.append(Problem(p["id"], int(p["correct"]), trace, bs))
        c_out.append(int(cloud["cloud_out"] or 0))
        c_usd.append(_usd(price, cloud))
    return out, {"tokens": statistics.mean(c_out) if c_out else 0.0, "usd": statistics.mean(c_usd) if c_usd else 0.0}


def _usd(price: Any, b: dict[str, Any]) -> float:
    return ((b["cloud_in"] or 0) * price.input + (b["cloud_out"] or 0) * price.output) / 1e6


def verify_repair(p: Problem, tau: float, max_k: int, second_read: bool = True,
                  gate: float = 0.0) -> tuple[int, float, float]:
    """(correct, cloud output tokens, USD) of one problem under the policy. The trace is read (and paid for) only
    when its length in tokens, a free local signal of a wrong trace, is at least ``gate``; ``tau`` infinite reads
    nothing (no threshold fits the share: the first read alone would spend above it). A tie in trust keeps the
    repair, as the live policy does (``triggers/verify_repair.py`` restores the draft only on a lower trust)."""
    if p.trace.n < gate or tau == float("inf"):
        return p.correct, 0.0, 0.0
    usd = p.trace.cost_usd
    if p.trace.suspicion < tau:
        return p.correct, 0.0, usd
    k = p.trace.flagged(max_k)
    if k is None or k not in p.branches:
        return p.correct, 0.0, usd
    correct, out, step_usd, read = p.branches[k]
    usd += step_usd
    if second_read and read is not None:
        usd += read.cost_usd
        if read.trust < p.trace.trust:
            correct = p.correct  # the read trusts the edge's own finish more: restore it
    return correct, float(out), usd


def _fold(pid: str) -> int:
    return zlib.crc32(pid.encode()) % FOLDS


def cross_fit(problems: Sequence[Problem], choose: Any, apply: Any) -> list[Any]:
    """``apply(param, p)`` for every problem, ``param = choose(train)`` set on the other folds only: no parameter
    (tau, gate, k) ever sees the problem it is applied to. The results in the problems' order."""
    out: dict[int, Any] = {}
    for fold in range(FOLDS):
        test = [i for i, p in enumerate(problems) if _fold(p.id) == fold]
        if not test:
            continue
        param = choose([p for p in problems if _fold(p.id) != fold])
        out.update({i: apply(param, problems[i]) for i in test})
    return [out[i] for i in range(len(problems))]


def within(problems: Sequence[Problem], runs: Sequence[tuple[int, float, float]], measure: int,
           per_problem: float) -> list[tuple[int, float, float]]:
    """The runs under a budget of ``per_problem`` times each held-out fold's size, spent in the problems' order
    as a live cap would: a problem whose run would pass what is left is not read (the edge's answer, nothing
    spent). A tau set on the other folds may spend more on this one; the budget keeps each row within its share."""
    out = list(runs)
    for fold in range(FOLDS):
        idx = [i for i, p in enumerate(problems) if _fold(p.id) == fold]
        left = per_problem * len(idx)
        for i in idx:
            if runs[i][measure] > left + 1e-12:
                out[i] = (problems[i].correct, 0.0, 0.0)
            else:
                left -= runs[i][measure]
    return out


def _tau_for(train: Sequence[Problem], share: float, base: float, measure: int, max_k: int, second: bool,
             gate: float = 0.0) -> float:
    """The lowest tau whose spend on ``train`` stays within ``share`` of cloud-only's (measure 1 tokens, 2 USD)."""
    best = float("inf")
    for tau in sorted({p.trace.suspicion for p in train}, reverse=True):
        spent = statistics.mean(verify_repair(p, tau, max_k, second, gate)[measure] for p in train)
        if spent > share * base:
            break
        best = tau
    return best


def _gated(train: Sequence[Problem], share: float, base: float, measure: int, max_k: int) -> tuple[float, float]:
    """(gate, tau) with the best training accuracy within the share: the gate on trace length from its quantiles."""
    lengths = sorted(p.trace.n for p in train)
    best = (-1.0, float("inf"), float("inf"))  # read nothing: always within the share
    for q in (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        gate = lengths[min(int(q * len(lengths)), len(lengths) - 1)] if q else 0.0
        tau = _tau_for(train, share, base, measure, max_k, True, gate)
        runs = [verify_repair(p, tau, max_k, True, gate) for p in train]
        if statistics.mean(r[measure] for r in runs) > share * base:
            continue  # even the reads alone cost more than the share
        acc = statistics.mean(r[0] for r in runs)
        if acc > best[0]:
            best = (acc, gate, tau)
    return best[1], best[2]


def _fixed_k(train: Sequence[Problem], max_k: int) -> int:
    gain = {k: sum(p.branches[k][0] - p.correct for p in train if k in p.branches) for k in range(max_k)}
    return max(gain, key=lambda k: (gain[k], -k))


def _mix(problems: Sequence[Problem], pick: Any, share: float, base: float, measure: int) -> tuple[float, float]:
    """(accuracy, spend) of escalating a random fraction of problems at the step ``pick(p)`` names, the fraction
    set so that the expected spend is ``share`` of cloud-only's (capped at escalating every problem)."""
    full = [(statistics.mean(b[0] for b in bs), statistics.mean(b[measure] for b in bs)) if bs else (p.correct, 0.0)
            for p in problems for bs in [pick(p)]]
    spend_all = statistics.mean(s for _, s in full) or 1e-12
    f = min(1.0, share * base / spend_all)
    acc = statistics.mean((1 - f) * p.correct + f * c for p, (c, _) in zip(problems, full))
    return acc, f * spend_all


def evaluate(problems: list[Problem], base: dict[str, float], local: float, cloud: float,
             max_k: int = 4) -> dict[str, Any]:
    """PGR at each share of cloud-only's tokens and USD, cross-validated by problem, with the AUROCs."""
    gap = (cloud - local) or 1e-12
    rows = []
    for measure, name in ((1, "tokens"), (2, "usd")):
        unit = base["tokens"] if measure == 1 else base["usd"]
        for share in SHARES:
            row: dict[str, Any] = {"measure": name, "share": share}
            def cell(got: Sequence[tuple[float, float]]) -> dict[str, float]:
                acc = statistics.mean(g[0] for g in got)
                return {"acc": round(acc, 4), "pgr": round((acc - local) / gap, 3),
                        "spent": round(statistics.mean(g[1] for g in got) / unit, 3)}

            for label, second in (("verify-repair", True), ("verify-repair, no second read", False)):
                got = cross_fit(problems, lambda train: _tau_for(train, share, unit, measure, max_k, second),
                                lambda tau, p: verify_repair(p, tau, max_k, second))
                row[label] = cell([(g[0], g[measure]) for g in within(problems, got, measure, share * unit)])
            got = cross_fit(problems, lambda train: _gated(train, share, unit, measure, max_k),
                            lambda gt, p: verify_repair(p, gt[1], max_k, True, gt[0]))
            row["verify-repair, length-gated read"] = cell(
                [(g[0], g[measure]) for g in within(problems, got, measure, share * unit)])
            acc, spent = _mix(problems, lambda p: [b[:3] for b in p.branches.values()], share, unit, measure)
            row["random step"] = {"acc": round(acc, 4), "pgr": round((acc - local) / gap, 3), "spent": round(spent / unit, 3)}
            # the best fixed k: set on the other folds, escalated at random within the share on the held-out fold
            by_fold = {f: [p for p in problems if _fold(p.id) == f] for f in range(FOLDS)}
            fold_mix: dict[int, tuple[float, float]] = {}  # one random mix per held-out fold, shared by its problems

            def at_k(k: int, p: Problem) -> tuple[float, float]:
                f = _fold(p.id)
                if f not in fold_mix:
                    fold_mix[f] = _mix(by_fold[f], lambda q: [q.branches[k][:3]] if k in q.branches else [],
                                       share, unit, measure)
                return fold_mix[f]

            mixed = cross_fit(problems, lambda train: _fixed_k(train, max_k), at_k)
            row["best fixed k"] = cell(mixed)
            rows.append(row)
    return {"n": len(problems), "local": local, "cloud": cloud, "rows": rows, "auroc": aurocs(problems, max_k),
            "read_usd_share": round(statistics.mean(p.trace.cost_usd for p in problems) / (base["usd"] or 1e-12), 3)}


def aurocs(problems: Sequence[Problem], max_k: int) -> dict[str, float | None]:
    """Whether (trace wrong) and where (the branch at k fixes a wrong trace, k < max_k) for the read's scores."""
    wrong = [1 - p.correct for p in problems]
    out = {"whether: sum(e - c)": auroc([p.trace.suspicion for p in problems], wrong),
           "whether: tokens with cloud p < 0.1": auroc([p.trace.low for p in problems], wrong),
           "whether: lowest cloud log-prob": auroc([-min((s.min_c for s in p.trace.steps if s.n), default=0.0)
                                                    for p in problems], wrong)}
    gaps, lows, mins, ys = [], [], [], []
    for p in problems:
        if p.correct:
            continue
        for k, (c, _, _, _) in p.branches.items():
            if k < max_k and k < len(p.trace.steps):
                s = p.trace.steps[k]
                gaps.append(s.gap)
                lows.append(s.low)
                mins.append(-s.min_c)
                ys.append(c)
    out.update({"where: step sum(e - c)": auroc(gaps, ys), "where: step tokens with cloud p < 0.1": auroc(lows, ys),
                "where: step lowest cloud log-prob": auroc(mins, ys)})
    flagged = [p for p in problems if not p.correct]
    out["flagged step fixes (wrong traces)"] = sum(
        p.branches.get(p.trace.flagged(max_k), (0,))[0] for p in flagged if p.trace.flagged(max_k) is not None)
    out["wrong traces"] = len(flagged)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
