"""``tune --learn``: label the steps of local-only traces and fit the ``trim-learned`` trigger.

Two labelers (label 1 = the step is correct):

* ``judge`` (default): the cloud judge rates each local step (one call, one output token; the
  ``cloud-judge`` scorer), and a rating of at least 0.5 is "correct". One cheap call per step.
* ``outcome``: steps of a trace whose final answer is right are correct. For a wrong trace, each
  step in turn is rewritten by the cloud and the local model finishes the solution; a step whose
  rewrite turns the outcome right is labelled wrong. This is the label TRIM-Agg wants, but it costs
  a cloud rewrite and a whole local continuation per step of every wrong trace, roughly
  (steps per problem) times the trace itself, and it is noisy: the small model can still fail after
  a good rewrite.

The judge is the default because it labels every step directly at a fraction of the cost; use
``outcome`` when the cloud is too weak a judge. All calls go through the budget and the ledger of
the trace's session (purpose ``judge`` or ``rewrite_step``); a refused or failed call leaves the
step unlabelled (counted as skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import store
from triggers.learned import FEATURES, features

from .answer import extract_answer
from .bench import fallback_answer, grade
from .report import session_report
from .state import load_state
from .values import Step


@dataclass
class Labelled:
    rows: list[list[float]]
    labels: list[int]
    problems: int
    skipped: int


def label_traces(agent: Any, db: Any, traces: list[dict[str, Any]], label: str, settings: Any) -> Labelled:
    """Features and labels of every local step of ``traces`` (bench rows of local-only runs)."""
    out = Labelled([], [], 0, 0)
    for row in traces:
        state = load_state(db, row["session_id"])
        out.problems += 1
        for i, step in enumerate(state.steps):
            if step.author != "local" or step.kind != "step":
                continue
            y = _label(agent, db, state, i, step, row, label, settings)
            if y is None:
                out.skipped += 1
                continue
            out.rows.append(features(state.steps[:i], step))
            out.labels.append(y)
    return out


def _label(agent: Any, db: Any, state: Any, i: int, step: Step, row: dict[str, Any], label: str,
           settings: Any) -> int | None:
    if label == "judge":
        events: list = []
        score = agent.judge_score(state.id, state.problem, state.steps[:i], step, events)
        for event, action in events:  # refusals and faults stay on record with the trace
            store.record_event(db, state.id, step.index, event, action)
        return None if score.scorer != "cloud-judge" else int(score.value >= 0.5)
    if row["correct"]:
        return 1
    return None if (fixed := rewrite_fixes(agent, db, state, i, row["gold"], settings)) is None else int(not fixed)


def rewrite_fixes(agent: Any, db: Any, state: Any, i: int, gold: str, settings: Any) -> bool | None:
    """Replay the trace up to step ``i``, let the cloud write step ``i``, finish locally: is it right now?

    None if the cloud could not write the step.
    """
    sid = agent.start(state.problem, settings)
    for s in state.steps[:i]:
        store.commit_step(db, sid, replace(s, id=None))
    events: list = []
    written = agent.rewrite_step(sid, state.problem, state.steps[:i], i, "learn_outcome", events,
                                 settings.max_step_tokens)
    for event, action in events:
        store.record_event(db, sid, i, event, action)
    if written is None:
        store.set_status(db, sid, "ended")
        return None
    answer = extract_answer(written.text)
    store.commit_step(db, sid, written, status="done" if answer is not None else "running", answer=answer)
    if answer is None:
        agent.run(sid)
    rep = session_report(db, sid, verbose=False)
    predicted = rep["answer"] if rep["answer"] is not None else fallback_answer(rep["steps"])
    return grade(gold, predicted)


def training_info(dataset: str, data: Labelled, label: str, model: str, cloud: Any, settings: Any) -> dict[str, Any]:
    return {"dataset": Path(dataset).name, "problems": data.problems, "skipped_steps": data.skipped,
            "label": label, "local_model": model, "cloud": f"{cloud.provider}:{cloud.model}",
            "max_steps": settings.max_steps, "max_step_tokens": settings.max_step_tokens, "features": list(FEATURES)}
