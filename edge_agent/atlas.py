"""The routing atlas: for each problem, the edge's trace and what one cloud step at each step k would do.

A branch at k keeps the edge's steps 0..k-1 (replayed from the step cache), lets the cloud write step k
by continuation of the edge's turn (``branch-at(k=K)``), and lets the edge finish greedily. Branches are
built on right traces too, since a cloud step can break a right answer. Every session is a real one in
the atlas's database, written as it goes, so a killed build resumes where it stopped: a branch whose
session was cut short is continued, never started again. The report reads only the database.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import store
from triggers.scorers import logprob_score

from .bench import fallback_answer, grade, require_grader
from .errors import InputError
from .report import session_report
from .values import Signals

ATLAS_DB = "bench.db"  # the bench's name: 'tune --atlas DIR' runs policies there, replaying both caches
REBUILD = ("delete that row with sqlite3 and run 'edge-agent atlas build' on the same --out again "
           "(it builds only what is missing)")
FEATURES = ("index", "tokens", "logprob", "mean_entropy", "max_entropy", "first_entropy", "min_top1", "mean_top1",
            "first_top1", "low_top1_share")


@dataclass(frozen=True)
class AtlasPlan:
    """What to build per problem: step branches for k < max_k, handover branches, the cloud alone."""

    max_k: int = 8
    handover: bool = True  # at k = 0 and at the first k whose step branch fixed the answer
    cloud_only: bool = True


def check_meta(db: Any, meta: dict[str, Any], where: str) -> None:
    """An atlas is never mixed: a DIR built with another edge model or cloud is refused."""
    old = store.atlas_meta(db)
    for key in ("edge", "cloud", "max_steps", "max_step_tokens"):
        if key in old and old[key] != meta[key]:
            raise InputError(f"{where} holds an atlas built with {key} {old[key]!r}, not {meta[key]!r}: "
                             "pass the same settings, or another --out")
    store.set_atlas_meta(db, meta)


def _session(agent: Any, db: Any, row: dict[str, Any] | None, problem: str, settings: Any,
             pending: Callable[[str], None]) -> dict[str, Any]:
    """Run (or finish) one session and read back its report; ``pending`` records its id before it runs."""
    sid = row["session_id"] if row and row.get("session_id") else None
    if sid is None:
        sid = agent.start(problem, settings)
        pending(sid)
    if store.load_state(db, sid).status == "running":
        agent.run(sid)
    return session_report(db, sid, verbose=False)


def _graded(report: dict[str, Any], gold: str) -> tuple[str | None, bool]:
    predicted = report["answer"] if report["answer"] is not None else fallback_answer(report["steps"])
    return predicted, grade(gold, predicted)


def build_trace(agent: Any, db: Any, p: dict[str, str], settings: Any) -> dict[str, Any]:
    row = store.atlas_problem(db, p["id"])
    if row and row["status"] == "done":
        return row
    base = {"id": p["id"], "problem": p["problem"], "answer": p["answer"], "status": "pending"}
    pending = lambda sid: store.put_atlas_problem(db, {**base, "trace_session": sid})  # noqa: E731
    rep = _session(agent, db, row and {"session_id": row["trace_session"]}, p["problem"], settings, pending)
    predicted, correct = _graded(rep, p["answer"])
    row = {**base, "trace_session": rep["session_id"], "status": "done", "predicted": predicted,
           "correct": int(correct), "steps": sum(1 for s in rep["steps"] if s["kind"] == "step")}
    store.put_atlas_problem(db, row)
    return row


def build_branch(agent: Any, db: Any, p: dict[str, str], kind: str, k: int, settings: Any) -> dict[str, Any]:
    row = store.atlas_branch(db, p["id"], kind, k)
    if row and row["status"] == "done":
        return row
    base = {"problem_id": p["id"], "kind": kind, "k": k, "status": "pending"}
    pending = lambda sid: store.put_atlas_branch(db, {**base, "session_id": sid})  # noqa: E731
    rep = _session(agent, db, row, p["problem"], settings, pending)
    predicted, correct = _graded(rep, p["answer"])
    u = rep["usage"]
    row = {**base, "session_id": rep["session_id"], "status": "done", "predicted": predicted,
           "correct": int(correct), "cloud_in": u["cloud_input_tokens"], "cloud_out": u["cloud_output_tokens"],
           "local_tokens": u["local_tokens"], "seconds": u["wall_s"], "cloud_steps": u["cloud_steps"]}
    store.put_atlas_branch(db, row)
    return row


def build(make_agent: Callable[[str], Any], db: Any, problems: Sequence[dict[str, str]], settings: Any,
          plan: AtlasPlan, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Build (or finish) the atlas of ``problems``; ``make_agent(policy)`` gives an agent on ``db``."""
    require_grader()
    for p in problems:
        trace = build_trace(make_agent("local-only"), db, p, settings)
        fixing = None
        for k in range(min(trace["steps"], plan.max_k)):
            b = build_branch(make_agent(f"branch-at(k={k})"), db, p, "step", k, settings)
            if fixing is None and b["correct"] and not trace["correct"]:
                fixing = k
        if plan.handover:
            for k in sorted({0} | ({fixing} if fixing is not None else set())):
                build_branch(make_agent(f"branch-at(handover=true,k={k})"), db, p, "handover", k, settings)
        if plan.cloud_only:
            build_branch(make_agent("cloud-only"), db, p, "cloud_only", 0, settings)
        if progress:
            progress(trace)


# -- the report --------------------------------------------------------------------------------------------


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """P(score of a positive > score of a negative), ties counting half; None without both classes."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def step_features(db: Any, session_id: str) -> list[dict[str, float]]:
    """Per reasoning step of a trace, the free run-time features (signals, free score, index, length)."""
    out = []
    for row in store.load_steps(db, session_id):
        if row["kind"] != "step":
            continue
        sig = Signals.from_dict(store.step_row(row).signals)
        out.append({"index": float(row["idx"]), "tokens": float(row["tokens"] or 0), "logprob": logprob_score(sig),
                    **{f: float(getattr(sig, f)) for f in FEATURES[3:]}})
    return out


def _row(name: str, correct: Sequence[float], out_tokens: Sequence[float], base: dict[str, Any]) -> dict[str, Any]:
    acc = statistics.mean(correct) if correct else 0.0
    out = statistics.mean(out_tokens) if out_tokens else 0.0
    s, cloud = base["local"], base["cloud_only"]
    pgr = (acc - s) / (cloud - s) if cloud is not None and cloud != s else None
    share = out / base["cloud_out"] if base.get("cloud_out") else None
    return {"policy": name, "accuracy": acc, "cloud_out_per_problem": out, "share": share, "pgr": pgr}


def _whole(row: dict[str, Any], table: str, key: str, column: str, flag: bool = False) -> None:
    """A column the report counts with: a whole number >= 0 (``flag``: 0 or 1), else the row is named."""
    value = row[column]
    if type(value) is not int or value < 0 or (flag and value > 1):
        shown = "empty (NULL)" if value is None else repr(value)[:40]
        raise store.DamagedRow(table, key, column, f"is {shown}, not {'0 or 1' if flag else 'a whole number'}", REBUILD)


def checked_rows(db: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``store.atlas_rows``, each value the report reads checked: a hand-edited or bit-rotted row is named."""
    problems, branches = store.atlas_rows(db)
    for p in problems:
        for column in ("correct", "steps"):
            _whole(p, "atlas_problems", f"id {p['id']!r}", column, flag=column == "correct")
    for b in branches:
        key = f"problem_id {b['problem_id']!r} kind {b['kind']!r} k {b['k']!r}"
        for column in ("k", "correct", "cloud_out"):
            _whole(b, "atlas_branches", key, column, flag=column == "correct")
    return problems, branches


def summarize(db: Any) -> dict[str, Any]:
    """Every reference row (local, cloud, oracle, always-k, random) and the AUROC of each free signal."""
    problems, branches = checked_rows(db)
    if not problems:
        raise InputError("the atlas holds no finished problem yet: run 'edge-agent atlas build' first")
    by = {(b["problem_id"], b["kind"], b["k"]): b for b in branches}
    if any(b["kind"] == "cloud_only" for b in branches):  # a problem still being built has no cloud branch yet
        problems = [p for p in problems if (p["id"], "cloud_only", 0) in by]
    steps = {p["id"]: [by[(p["id"], "step", k)] for k in range(p["steps"]) if (p["id"], "step", k) in by]
             for p in problems}
    clouds = [by.get((p["id"], "cloud_only", 0)) for p in problems]
    have_cloud = all(clouds)
    base = {"local": statistics.mean(p["correct"] for p in problems),
            "cloud_only": statistics.mean(c["correct"] for c in clouds) if have_cloud else None,
            "cloud_out": statistics.mean(c["cloud_out"] for c in clouds) if have_cloud else None}
    rows = [_row("local-only", [p["correct"] for p in problems], [0] * len(problems), base)]
    if have_cloud:
        rows.append(_row("cloud-only", [c["correct"] for c in clouds], [c["cloud_out"] for c in clouds], base))
    rows.append(_oracle(problems, steps, base))
    for k in (0, 1, 2):
        picks = [by.get((p["id"], "step", k)) for p in problems]
        rows.append(_row(f"always step {k}", [b["correct"] if b else p["correct"] for b, p in zip(picks, problems)],
                         [b["cloud_out"] if b else 0 for b in picks], base))
    rows.append(_random(problems, steps, base))
    handovers = [by.get((p["id"], "handover", 0)) for p in problems]
    if all(handovers):
        rows.append(_row("handover at 0", [b["correct"] for b in handovers], [b["cloud_out"] for b in handovers], base))
    return {"n": len(problems), "rows": rows, "auroc": _aurocs(db, problems, steps),
            "branches": sum(len(v) for v in steps.values())}


def _oracle(problems: list[dict], steps: dict[str, list[dict]], base: dict[str, Any]) -> dict[str, Any]:
    """Escalate one step, only where a branch fixes a wrong answer, at the cheapest such step."""
    correct, tokens = [], []
    for p in problems:
        fixes = [b for b in steps[p["id"]] if b["correct"]] if not p["correct"] else []
        correct.append(1 if p["correct"] or fixes else 0)
        tokens.append(min(b["cloud_out"] for b in fixes) if fixes else 0)
    return _row("oracle (one step)", correct, tokens, base)


def _random(problems: list[dict], steps: dict[str, list[dict]], base: dict[str, Any]) -> dict[str, Any]:
    """A uniformly random single step per problem: its expectation, exactly (not one draw)."""
    correct, tokens = [], []
    for p in problems:
        bs = steps[p["id"]]
        correct.append(statistics.mean(b["correct"] for b in bs) if bs else p["correct"])
        tokens.append(statistics.mean(b["cloud_out"] for b in bs) if bs else 0)
    return _row("random step (expected)", correct, tokens, base)


def _aurocs(db: Any, problems: list[dict], steps: dict[str, list[dict]]) -> dict[str, dict[str, float | None]]:
    """AUROC of each feature for "a cloud step here fixes the answer" (steps of wrong traces) and
    "breaks it" (steps of right traces); a lower feature value ranks higher for the score-like ones."""
    fix: dict[str, list] = {f: [] for f in FEATURES}
    brk: dict[str, list] = {f: [] for f in FEATURES}
    fix_y, brk_y = [], []
    for p in problems:
        feats = step_features(db, p["trace_session"])
        for b in steps[p["id"]]:
            if b["k"] >= len(feats):
                continue
            target, labels = (brk, brk_y) if p["correct"] else (fix, fix_y)
            labels.append(int(not b["correct"]) if p["correct"] else b["correct"])  # broke a right / fixed a wrong
            for f in FEATURES:
                target[f].append(feats[b["k"]][f])
    return {f: {"fix": auroc(fix[f], fix_y), "break": auroc(brk[f], brk_y)} for f in FEATURES}


def plot(result: dict[str, Any], path: Any) -> Any:
    """Accuracy against cloud output tokens per problem, one point per reference row (PNG); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in result["rows"]:
        ax.scatter(r["cloud_out_per_problem"], r["accuracy"])
        ax.annotate(r["policy"], (r["cloud_out_per_problem"], r["accuracy"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xlabel("cloud output tokens per problem")
    ax.set_ylabel("accuracy")
    ax.set_title(f"routing atlas: {result['n']} problems")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
