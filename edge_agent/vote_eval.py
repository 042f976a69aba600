"""Local votes first, the cloud where the votes are weakest: the vote policies evaluated on an atlas.

Per problem the atlas holds N drafts (``atlas_drafts``) and the cloud alone (``cloud_only``). The policies:
  - ``greedy``: the first draft alone (local-only, S in PGR);
  - ``vote``: the majority of the N drafts, ties to greedy; no cloud money;
  - ``vote-handover(share)``: the vote, then the problems with the lowest agreement (ties: the longer greedy
    draft first) go to the cloud alone, as many as fit in ``share`` of cloud-only's output tokens *and* of
    its USD (a share is never above the one it is labelled with);
  - ``random-handover(share)``: the same number of problems, picked at random (its exact expectation);
  - ``pass@N``: any draft right (an oracle, for reference).
PGR = (H - S) / (L - S), L the cloud alone. Every difference gets a 90% bootstrap interval over problems.
PGR is also given against the vote, (H - V) / (L - V): what the cloud adds beyond free local votes. The
problems are split by their position in the dataset: designs are chosen on 1-100 (``design``) and claimed on
101-200 (``claim``), as issue 36 fixes it; ``all`` is every drafted problem, in-sample.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .atlas_drafts import Drafts

SHARES = (0.10, 0.15, 0.25, 0.50)
PARTS = {"design": (0, 100), "claim": (100, 200)}  # positions in the dataset: 1-100 and 101-200


@dataclass(frozen=True)
class Problem:
    id: str
    drafts: Drafts
    cloud_correct: bool
    cloud_out: int
    cloud_usd: float
    position: int = 0  # 0-based, in the dataset the atlas was built from
    local_s: float = 0.0  # wall time of the N drafts


def problems_of(order: list[str], drafts: dict[str, Drafts], clouds: dict[str, dict[str, Any]], price: Any,
                seconds: dict[str, float] | None = None) -> list[Problem]:
    """The problems that have both drafts and a cloud-only branch, in ``order`` (the dataset's)."""
    out = []
    for pos, pid in enumerate(order):
        c = clouds.get(pid)
        if c is None or pid not in drafts:
            continue
        usd = (c["cloud_in"] * price.input + c["cloud_out"] * price.output) / 1e6 if price else 0.0
        out.append(Problem(pid, drafts[pid], bool(c["correct"]), int(c["cloud_out"]), usd, pos,
                           (seconds or {}).get(pid, 0.0)))
    return out


def _handed(ps: Sequence[Problem], share: float) -> set[int]:
    """Indices handed to the cloud: lowest agreement first (then the longer greedy draft), within ``share``."""
    total_out = sum(p.cloud_out for p in ps) or 1
    total_usd = sum(p.cloud_usd for p in ps) or 1.0
    order = sorted(range(len(ps)), key=lambda i: (ps[i].drafts.agreement, -ps[i].drafts.tokens[0], ps[i].id))
    out, usd, picked = 0, 0.0, set()
    for i in order:
        if (out + ps[i].cloud_out) / total_out > share or (usd + ps[i].cloud_usd) / total_usd > share:
            break  # stop at the first that does not fit: handing over later ones would skip the gate's order
        out, usd = out + ps[i].cloud_out, usd + ps[i].cloud_usd
        picked.add(i)
    return picked


def accuracies(ps: Sequence[Problem], share: float) -> dict[str, float]:
    """Accuracy of each policy on ``ps`` (random handover as its expectation over which problems)."""
    n = len(ps)
    vote = [float(p.drafts.winner_correct) for p in ps]
    handed = _handed(ps, share)
    gated = [float(ps[i].cloud_correct) if i in handed else vote[i] for i in range(n)]
    gain = statistics.mean(float(p.cloud_correct) - v for p, v in zip(ps, vote))  # per handed problem, at random
    return {"greedy": statistics.mean(float(p.drafts.correct[0]) for p in ps), "vote": statistics.mean(vote),
            "vote_handover": statistics.mean(gated), "random_handover": statistics.mean(vote) + len(handed) / n * gain,
            "pass_at_n": statistics.mean(float(any(p.drafts.correct)) for p in ps),
            "cloud": statistics.mean(float(p.cloud_correct) for p in ps), "handed": len(handed) / n,
            "local_s": statistics.mean(p.local_s for p in ps),
            "share_tokens": sum(ps[i].cloud_out for i in handed) / (sum(p.cloud_out for p in ps) or 1),
            "share_usd": sum(ps[i].cloud_usd for i in handed) / (sum(p.cloud_usd for p in ps) or 1.0)}


def handover_below(ps: Sequence[Problem], below: float) -> dict[str, Any]:
    """``solve --samples N --handover-below A`` replayed: the vote, and the cloud alone wherever the agreement is
    strictly below ``below`` (the live rule, ``handover.hands_over``); its accuracy and shares of cloud-only."""
    from .handover import hands_over

    handed = [hands_over(p.drafts.agreement, below) for p in ps]
    acc = [float(p.cloud_correct) if h else float(p.drafts.winner_correct) for p, h in zip(ps, handed)]
    return {"handed": handed, "accuracy": statistics.mean(acc) if acc else 0.0,
            "share_tokens": sum(p.cloud_out for p, h in zip(ps, handed) if h) / (sum(p.cloud_out for p in ps) or 1),
            "share_usd": sum(p.cloud_usd for p, h in zip(ps, handed) if h) / (sum(p.cloud_usd for p in ps) or 1.0)}


def thresholds(ps: Sequence[Problem]) -> list[dict[str, Any]]:
    """``--handover-below A`` replayed at each agreement level the drafts take: what it hands over and spends."""
    if not ps:
        return []
    greedy = statistics.mean(float(p.drafts.correct[0]) for p in ps)
    cloud = statistics.mean(float(p.cloud_correct) for p in ps)
    levels = sorted({round(p.drafts.agreement, 6) for p in ps} | {1.0})
    out = []
    for below in levels[1:] if len(levels) > 1 else levels:
        h = handover_below(ps, below)
        out.append({"below": below, "handed": round(sum(h["handed"]) / len(ps), 4), "accuracy": round(h["accuracy"], 4),
                    "pgr": _r(pgr(h["accuracy"], greedy, cloud)), "share_tokens": round(h["share_tokens"], 4),
                    "share_usd": round(h["share_usd"], 4)})
    return out


def pgr(acc: float, s: float, l: float) -> float | None:
    return None if l == s else (acc - s) / (l - s)


def _interval(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values.sort()
    return {"low": round(values[int(0.05 * len(values))], 3), "high": round(values[int(0.95 * len(values)) - 1], 3)}


def bootstrap(ps: Sequence[Problem], share: float, rounds: int = 2000, seed: int = 0) -> dict[str, Any]:
    """90% intervals, resampling problems: each policy's PGR and the differences that matter."""
    rng = random.Random(seed)
    keys = ("vote", "vote_handover", "random_handover")
    pgrs: dict[str, list[float]] = {k: [] for k in keys}
    diffs: dict[str, list[float]] = {"gate_minus_random": [], "handover_minus_vote": []}
    for _ in range(rounds):
        sample = [ps[rng.randrange(len(ps))] for _ in ps]
        a = accuracies(sample, share)
        if a["cloud"] == a["greedy"]:
            continue
        for k in keys:
            pgrs[k].append((a[k] - a["greedy"]) / (a["cloud"] - a["greedy"]))
        diffs["gate_minus_random"].append((a["vote_handover"] - a["random_handover"]) / (a["cloud"] - a["greedy"]))
        diffs["handover_minus_vote"].append((a["vote_handover"] - a["vote"]) / (a["cloud"] - a["greedy"]))
    return {**{f"pgr_{k}": _interval(v) for k, v in pgrs.items()}, **{k: _interval(v) for k, v in diffs.items()}}


def auroc_agreement(ps: Sequence[Problem]) -> float | None:
    """How well low agreement predicts a wrong majority (0.5 is chance)."""
    from .atlas import auroc

    return auroc([-p.drafts.agreement - p.drafts.tokens[0] * 1e-6 for p in ps],
                 [int(not p.drafts.winner_correct) for p in ps])


def report(ps: Sequence[Problem], shares: Sequence[float] = SHARES) -> dict[str, Any]:
    """The table for every drafted problem, and for the design (1-100) and claim (101-200) parts."""
    parts = {"all": list(ps), **{name: [p for p in ps if lo <= p.position < hi] for name, (lo, hi) in PARTS.items()}}
    out: dict[str, Any] = {"n": len(ps), "parts": {}}
    for name, part in parts.items():
        if not part:
            out["parts"][name] = {"n": 0}
            continue
        rows = []
        for share in shares:
            a = accuracies(part, share)
            row = {"share": share, **{k: round(v, 4) for k, v in a.items()},
                   **{f"pgr_{k}": _r(pgr(a[k], a["greedy"], a["cloud"]))
                      for k in ("vote", "vote_handover", "random_handover", "pass_at_n")},
                   **{f"pgr_over_vote_{k}": _r(pgr(a[k], a["vote"], a["cloud"]))
                      for k in ("vote_handover", "random_handover")},
                   "intervals": bootstrap(part, share)}
            rows.append(row)
        out["parts"][name] = {"n": len(part), "auroc_agreement": _r(auroc_agreement(part)), "rows": rows,
                              "thresholds": thresholds(part),
                              "all_differ": sum(1 for p in part if len(set(p.drafts.predicted)) == len(p.drafts.predicted))}
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
