"""The atlas's drafts: N local solutions per problem (greedy + N-1 sampled), their answers and agreement.

Each problem's drafts are one ``solve --samples N`` in the atlas's database (``edge_agent.samples``): a
parent session (the greedy draft) and N-1 sample sessions, committed step by step, so a killed build
resumes where it stopped and never makes a draft twice. The atlas remembers the parent as a branch row of
kind ``drafts@T`` (T the temperature) and ``k = N``, pending until every draft is finished. Drafts are
decoded by the plain model (not the step cache: a sampled step is never cached), together in one batch
when ``batch`` says so; the atlas's meta names the compute mode and the batch, since greedy tokens depend
on both. What a policy reads of them (``draft_rows``) comes from the database alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import store

from .agent import Callbacks, Settings
from .bench import fallback_answer, grade, require_grader
from .errors import InputError
from .report import session_report
from .samples import SampleSpec, read_samples, run_samples, vote


def kind_of(temperature: float) -> str:
    return f"drafts@{temperature:g}"


@dataclass(frozen=True)
class Drafts:
    """One problem's N drafts as a policy sees them (index 0 is greedy)."""

    id: str
    predicted: tuple[str | None, ...]
    correct: tuple[bool, ...]
    tokens: tuple[int, ...]
    min_top1: tuple[float, ...]
    winner: str | None
    winner_correct: bool
    agreement: float


def build_drafts(agent: Any, db: Any, problems: Sequence[dict[str, str]], settings: Settings, spec: SampleSpec,
                 progress: Callable[[str], None] | None = None) -> None:
    """Draft every problem not drafted yet at ``spec`` (resumable; a finished problem is never redone)."""
    require_grader()
    kind = kind_of(spec.temperature)
    for p in problems:
        row = store.atlas_branch(db, p["id"], kind, spec.n)
        if row and row["status"] == "done":
            continue
        base = {"problem_id": p["id"], "kind": kind, "k": spec.n, "status": "pending"}
        parent = row["session_id"] if row and row.get("session_id") else None
        if parent is None:
            parent = agent.start(p["problem"], settings, spec.extra())
            store.put_atlas_branch(db, {**base, "session_id": parent})
        run_samples(agent, parent, lambda index, n, sid: Callbacks())
        d = draft_of(db, p, parent)
        store.put_atlas_branch(db, {**base, "session_id": parent, "status": "done", "predicted": d.winner,
                                    "correct": int(d.winner_correct), "local_tokens": sum(d.tokens),
                                    "cloud_in": 0, "cloud_out": 0, "cloud_steps": 0,
                                    "seconds": store.sample_totals(db, parent)["wall_s"]})
        if progress:
            progress(p["id"])


def draft_of(db: Any, p: dict[str, str], parent: str) -> Drafts:
    """Grade parent ``parent``'s drafts against the problem's gold answer; the vote is over the graded answers."""
    s = read_samples(db, parent)
    if s is None or not s.complete:
        raise InputError(f"drafts of {p['id']} (session {parent}) are not finished: run 'edge-agent atlas drafts' again")
    predicted, tokens, low = [], [], []
    for sample in s.samples:
        assert sample.session_id is not None  # complete: every sample's session exists
        rep = session_report(db, sample.session_id, verbose=False)  # a parent's "answer" there is the vote's
        predicted.append(sample.answer if sample.answer is not None else fallback_answer(rep["steps"]))
        tokens.append(sum(x["tokens"] for x in rep["steps"]))
        low.append(min((x["signals"].get("min_top1", 1.0) for x in rep["steps"] if x.get("signals")), default=1.0))
    v = vote(predicted)  # a draft with no stated answer votes with its last number, as graded everywhere
    correct = tuple(grade(p["answer"], a) for a in predicted)
    return Drafts(p["id"], tuple(predicted), correct, tuple(tokens), tuple(low), v.winner,
                  grade(p["answer"], v.winner), v.agreement)


def draft_rows(db: Any, temperature: float, n: int) -> dict[str, Drafts]:
    """Every problem's finished drafts at ``temperature`` and ``n``, by problem id."""
    problems, branches = store.atlas_rows(db)
    gold = {p["id"]: p for p in problems}
    kind = kind_of(temperature)
    return {b["problem_id"]: draft_of(db, gold[b["problem_id"]], b["session_id"])
            for b in branches if b["kind"] == kind and b["k"] == n and b["status"] == "done" and b["problem_id"] in gold}
