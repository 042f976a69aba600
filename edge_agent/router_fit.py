"""Fitting the router on an atlas, and judging it honestly: problem-level cross-validation.

Rows are (problem, step k) pairs with a step branch in the atlas; labels are *gain* (the branch fixes a
wrong trace) and *harm* (it breaks a right one). Folds split problems, never one problem's steps.
Out-of-fold, every problem gets the router's best step and its predicted net gain; ranking problems by
that net gives accuracy at any share of cloud-only's output tokens, read off the atlas's own outcomes.
The references at the same shares: a random single step, the best free-score threshold (TRIM-thr with
one escalation at the first step under the threshold, its threshold picked with hindsight), the oracle.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import store
from triggers.router import FEATURES, GROUPS, Head, RouterModel, candidates

from .atlas import auroc
from .errors import InputError
from .state import load_state

SHARES = (0.10, 0.15, 0.25)


@dataclass
class Problem:
    """One atlas problem: its trace's outcome, the cloud's, and per candidate step k the branch's."""

    id: str
    correct: int
    cloud_correct: int | None
    cloud_out: float | None
    rows: list[tuple[int, list[float], int, int]] = field(default_factory=list)  # (k, x, branch correct, out)


def dataset(db: Any, max_k: int | None = None) -> list[Problem]:
    """The atlas's problems with the run-time feature vectors of their candidate steps."""
    problems, branches = store.atlas_rows(db)
    if not problems:
        raise InputError("the atlas holds no finished problem yet: run 'edge-agent atlas build' first")
    by = {(b["problem_id"], b["kind"], b["k"]): b for b in branches}
    limit = max_k or 1 + max((b["k"] for b in branches if b["kind"] == "step"), default=0)
    if any(b["kind"] == "cloud_only" for b in branches):  # a problem still being built has no cloud branch yet
        problems = [p for p in problems if (p["id"], "cloud_only", 0) in by]
    out = []
    for p in problems:
        state = load_state(db, p["trace_session"])
        cloud = by.get((p["id"], "cloud_only", 0))
        item = Problem(p["id"], int(p["correct"]), cloud and int(cloud["correct"]), cloud and cloud["cloud_out"])
        for k, x in candidates(state.problem, state.steps, state.status, limit):
            b = by.get((p["id"], "step", k))
            if b is not None:
                item.rows.append((k, x, int(b["correct"]), b["cloud_out"]))
        out.append(item)
    return out


def labels(p: Problem) -> tuple[list[int], list[int]]:
    gain = [int(not p.correct and c) for _, _, c, _ in p.rows]
    harm = [int(p.correct and not c) for _, _, c, _ in p.rows]
    return gain, harm


def fit_head(x: Sequence[Sequence[float]], y: Sequence[int], columns: Sequence[int], c: float) -> Head:
    """A logistic regression on the chosen columns (the others get weight 0), standardized. Imports scikit-learn."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    a = np.asarray(x, dtype=float)
    mean, scale = a.mean(axis=0), a.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    coef = np.zeros(a.shape[1])
    intercept = -20.0 if not any(y) else 20.0 if all(y) else None
    if intercept is None:
        z = (a - mean) / scale
        clf = LogisticRegression(C=c, max_iter=2000).fit(z[:, list(columns)], np.asarray(y))
        coef[list(columns)] = clf.coef_[0]
        intercept = float(clf.intercept_[0])
    return Head(tuple(float(v) for v in mean), tuple(float(v) for v in scale), tuple(float(v) for v in coef),
                float(intercept))


def fit(problems: Sequence[Problem], columns: Sequence[int], c: float, max_k: int) -> RouterModel:
    x = [r[1] for p in problems for r in p.rows]
    if not x:
        raise InputError("the atlas has no step branches to learn from: build it with --max-k 1 or more")
    gain = [g for p in problems for g in labels(p)[0]]
    harm = [h for p in problems for h in labels(p)[1]]
    return RouterModel(FEATURES, fit_head(x, gain, columns, c), fit_head(x, harm, columns, c), max_k)


def folds(problems: Sequence[Problem], n: int, seed: int = 0) -> list[list[int]]:
    """Problem indices split into ``n`` folds (a problem's steps never straddle two)."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [order[i::n] for i in range(n)]


def out_of_fold(problems: Sequence[Problem], columns: Sequence[int], c: float, n_folds: int,
                max_k: int) -> list[dict[str, Any]]:
    """Per problem, the router's held-out choice: best step, its net, and the per-row head outputs."""
    result: list[dict[str, Any]] = [{} for _ in problems]
    for held in folds(problems, min(n_folds, len(problems))):
        train = [p for i, p in enumerate(problems) if i not in set(held)]
        model = fit(train, columns, c, max_k)
        for i in held:
            rows = problems[i].rows
            best = model.best([(k, x) for k, x, _, _ in rows])
            result[i] = {"best": best, "p_gain": [model.gain.predict(x) for _, x, _, _ in rows],
                         "p_harm": [model.harm.predict(x) for _, x, _, _ in rows]}
    return result


@dataclass(frozen=True)
class Base:
    local: float
    cloud: float
    cloud_out: float

    def pgr(self, acc: float) -> float | None:
        return (acc - self.local) / (self.cloud - self.local) if self.cloud != self.local else None


def base_of(problems: Sequence[Problem]) -> Base:
    if any(p.cloud_correct is None for p in problems):
        raise InputError("the atlas lacks cloud-only branches (built with --no-cloud-only): PGR needs them")
    return Base(statistics.mean(p.correct for p in problems), statistics.mean(p.cloud_correct for p in problems),
                statistics.mean(p.cloud_out for p in problems))


def curve(problems: Sequence[Problem], picks: Sequence[tuple[float, int] | None], base: Base,
          share: float) -> dict[str, Any]:
    """Escalate problems in order of their pick's score (highest first) while within ``share``.

    ``picks[i]``: (score, k) for problem i, or None (never escalated). Returns accuracy, share, PGR,
    and the lowest score escalated (the threshold that reproduces it)."""
    outcome = {i: {k: (c, out) for k, _, c, out in p.rows} for i, p in enumerate(problems)}
    correct = [p.correct for p in problems]
    budget, spent, tau = share * base.cloud_out * len(problems), 0.0, None
    order = sorted((pk[0], i) for i, pk in enumerate(picks) if pk is not None)[::-1]
    for score, i in order:
        c, out = outcome[i][picks[i][1]]
        if spent + out > budget:
            break
        spent += out
        correct[i] = c
        tau = score
    acc = statistics.mean(correct)
    return {"accuracy": acc, "share": spent / len(problems) / base.cloud_out, "pgr": base.pgr(acc), "tau": tau}


def random_at(problems: Sequence[Problem], base: Base, share: float) -> dict[str, Any]:
    """A random single step on a random share of problems, in expectation (not one draw)."""
    with_rows = [p for p in problems if p.rows]
    step_acc = statistics.mean(statistics.mean(c for _, _, c, _ in p.rows) for p in with_rows)
    step_out = statistics.mean(statistics.mean(o for _, _, _, o in p.rows) for p in with_rows)
    local_there = statistics.mean(p.correct for p in with_rows)
    q = min(1.0, share * base.cloud_out / step_out) * len(with_rows) / len(problems)
    acc = base.local + q * (step_acc - local_there)
    return {"accuracy": acc, "share": q * step_out / base.cloud_out, "pgr": base.pgr(acc)}


def oracle_at(problems: Sequence[Problem], base: Base, share: float) -> dict[str, Any]:
    """Only where a step fixes a wrong trace, at its cheapest fixing step, cheapest problems first."""
    picks = []
    for p in problems:
        fixes = [(out, k) for k, _, c, out in p.rows if c and not p.correct]
        picks.append((-min(fixes)[0], min(fixes)[1]) if fixes else None)
    return curve(problems, picks, base, share)


def threshold_at(problems: Sequence[Problem], base: Base, share: float) -> dict[str, Any]:
    """The best free-score policy within ``share``: one escalation at the first step whose score is under t."""
    score_col = FEATURES.index("score")
    best: dict[str, Any] | None = None
    for t in sorted({r[1][score_col] for p in problems for r in p.rows} | {1.01}):
        picks = []
        for p in problems:
            k = next((k for k, x, _, _ in p.rows if x[score_col] < t), None)
            picks.append((1.0, k) if k is not None else None)
        row = curve(problems, picks, base, 1e9)
        if row["share"] <= share + 1e-9 and (best is None or row["accuracy"] > best["accuracy"]):
            best = {**row, "tau": t}
    return best or {"accuracy": base.local, "share": 0.0, "pgr": 0.0, "tau": None}


def columns_without(group: str | None) -> list[int]:
    drop = set(GROUPS[group]) if group else set()
    return [i for i, name in enumerate(FEATURES) if name not in drop]


def columns_only(group: str) -> list[int]:
    return [i for i, name in enumerate(FEATURES) if name in GROUPS[group]]


def judge(problems: Sequence[Problem], columns: Sequence[int], c: float, n_folds: int, max_k: int,
          base: Base) -> dict[str, Any]:
    """Cross-validated: PGR at each share, AUROC of the gain and harm heads, and of the problem's net."""
    oof = out_of_fold(problems, columns, c, n_folds, max_k)
    picks = [(o["best"][1], o["best"][0]) if o["best"] else None for o in oof]
    gain_y = [g for p in problems for g in labels(p)[0]]
    harm_y = [h for p in problems for h in labels(p)[1]]
    fixable = [int(any(not p.correct and cc for _, _, cc, _ in p.rows)) for p in problems]
    nets = [pk[0] if pk else -1.0 for pk in picks]
    return {"at": {f"{s:.2f}": curve(problems, picks, base, s) for s in SHARES},
            "auroc_gain": auroc([v for o in oof for v in o["p_gain"]], gain_y),
            "auroc_harm": auroc([v for o in oof for v in o["p_harm"]], harm_y),
            "auroc_fixable": auroc(nets, fixable), "picks": picks}


def evaluate(problems: Sequence[Problem], c: float = 0.1, n_folds: int = 5, max_k: int = 4,
             ablation: bool = True) -> dict[str, Any]:
    """The router's cross-validated report beside the references, and an ablation over feature groups."""
    base = base_of(problems)
    router = judge(problems, columns_without(None), c, n_folds, max_k, base)
    refs = {"random step": {f"{s:.2f}": random_at(problems, base, s) for s in SHARES},
            "best score threshold (hindsight)": {f"{s:.2f}": threshold_at(problems, base, s) for s in SHARES},
            "oracle": {f"{s:.2f}": oracle_at(problems, base, s) for s in SHARES}}
    out = {"n": len(problems), "rows": sum(len(p.rows) for p in problems), "base": base.__dict__,
           "c": c, "folds": n_folds, "router": {k: v for k, v in router.items() if k != "picks"}, "references": refs}
    if ablation:
        table = {"all": _brief(router)}
        for group in GROUPS:
            table[f"without {group}"] = _brief(judge(problems, columns_without(group), c, n_folds, max_k, base))
            table[f"only {group}"] = _brief(judge(problems, columns_only(group), c, n_folds, max_k, base))
        out["ablation"] = table
    out["picks"] = router["picks"]
    return out


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {"pgr_at": {s: v["pgr"] for s, v in r["at"].items()}, "auroc_gain": r["auroc_gain"],
            "auroc_harm": r["auroc_harm"]}


def final_model(problems: Sequence[Problem], report: dict[str, Any], share: float, c: float,
                max_k: int, meta: dict[str, Any]) -> RouterModel:
    """The router fit on every problem, its threshold the net at which it spends ``share`` on the atlas.

    The threshold is read off this model's own nets, not the held-out ones: the nets of a model fit on
    every problem sit on another scale than the folds' (router v1 took the held-out threshold and
    escalated 94 of 100 new problems, 19% of cloud-only's tokens, for a 15% target)."""
    from dataclasses import replace

    base = base_of(problems)
    model = fit(problems, columns_without(None), c, max_k)
    own = [model.best([(k, x) for k, x, _, _ in p.rows]) for p in problems]
    tau = curve(problems, [(b[1], b[0]) if b else None for b in own], base, share)["tau"]
    training = {"atlas": meta, "n_problems": len(problems), "n_rows": report["rows"], "C": c, "share": share,
                "cv": {"folds": report["folds"], "router": report["router"]}}
    return replace(model, tau=1.0 if tau is None else float(tau), training=training)


def bootstrap(problems: Sequence[Problem], picks: Sequence[tuple[float, int] | None], share: float,
              rounds: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Router minus random-step accuracy at ``share``, with a 95% interval from resampling problems.

    The router's choices are the held-out ones; each resample re-ranks them within its own budget."""
    rng = random.Random(seed)
    n = len(problems)
    diffs = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        sample = [problems[i] for i in idx]
        if len({p.correct for p in sample} | {p.cloud_correct for p in sample}) < 2 or not any(p.rows for p in sample):
            continue
        base = base_of(sample)
        diffs.append(curve(sample, [picks[i] for i in idx], base, share)["accuracy"]
                     - random_at(sample, base, share)["accuracy"])
    diffs.sort()
    if not diffs:
        return {"share": share, "mean": 0.0, "low": 0.0, "high": 0.0, "rounds": 0}
    return {"share": share, "mean": statistics.mean(diffs), "low": diffs[int(0.025 * len(diffs))],
            "high": diffs[int(0.975 * len(diffs)) - 1], "rounds": len(diffs)}
