"""A policy's review of the finished draft, as the session stores it, so that ``resume`` finishes it.

The review is part of the session: the session stays ``running`` until the review ends, and what the
review has paid for is stored before it is used. The state lives in the session's settings under
``review`` and changes in the same transaction as the step or status it goes with:

- ``stage`` ``read``: the draft is finished (``status`` and ``answer`` are the draft's own) and is read next;
- ``stage`` ``act``: the read is paid for and stored (``read``): the policy decides from it, after a crash too;
- ``stage`` ``draft``: a repair is committed and the edge is finishing the repaired draft;
- ``kept``: the draft before the repair, as the policy keeps it for its keep-or-restore decision (its read's
  trust, the step repaired, its status, and the ids of its own steps from there, superseded by the repair).

A reply is stored as soon as it is settled (a read in this state, a repair as its step), and a stored reply
is never asked for again. A call killed in flight left no reply: the ledger books it at its reservation
(``reclaimed``) and the resumed review asks it again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import store
from store import DamagedRow

from .state import to_step
from .values import Action, TriggerEvent

STAGES = ("read", "act", "draft")


def read_to_json(read: Any) -> dict[str, Any] | None:
    """A cloud read (``triggers.reading.TraceRead`` or ``JudgeRead``) as stored in the review's state."""
    from triggers.reading import JudgeRead

    if read is None:
        return None
    if isinstance(read, JudgeRead):
        return {"judge": {"first_wrong": read.first_wrong, "n_steps": read.n_steps,
                          "input_tokens": read.input_tokens, "cost_usd": read.cost_usd}}
    return {"trace": read.to_dict()}


def read_from_json(data: dict[str, Any] | None) -> Any:
    from triggers.reading import JudgeRead, TraceRead

    if data is None:
        return None
    if "judge" in data:
        return JudgeRead(**data["judge"])
    return TraceRead.from_dict(data["trace"])


def kept_to_json(kept: dict[str, Any] | None) -> dict[str, Any] | None:
    """A policy's ``kept_draft()`` as stored: its steps by id (they stay in the store, superseded)."""
    if kept is None:
        return None
    return {"trust": kept["trust"], "at": kept["at"], "status": kept["status"],
            "step_ids": [s.id for s in kept["steps"]]}


def stored_review(session_id: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The review a run left unfinished (None if there is none); a DamagedRow if it is not what was written."""
    state = settings.get("review")
    if state is None:
        return None
    key = f"id {session_id!r}"
    if not isinstance(state, dict) or state.get("stage") not in STAGES:
        raise DamagedRow("sessions", key, "settings", "holds a review state that is not what edge-agent wrote")
    if state["stage"] != "draft" and (state.get("status") in (None, "running") or
                                      not isinstance(state.get("answer"), (str, type(None)))):
        raise DamagedRow("sessions", key, "settings", "holds a review without the draft's status")
    try:
        read_from_json(state.get("read"))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise DamagedRow("sessions", key, "settings", "holds a review whose read is not what edge-agent wrote") from None
    kept = state.get("kept")
    if kept is not None and not (isinstance(kept, dict) and isinstance(kept.get("trust"), (int, float))
                                 and isinstance(kept.get("at"), int) and isinstance(kept.get("status"), str)
                                 and isinstance(kept.get("step_ids"), list)):
        raise DamagedRow("sessions", key, "settings", "holds a review whose kept draft is not what edge-agent wrote")
    return state


class Reviews:
    """The review of ``Agent`` (it provides ``db``, ``policy``, ``read_draft``, ``_cloud_step``, ``_commit``, ``_finish``)."""

    db: Any
    policy: Any
    read_draft: Any
    _cloud_step: Any
    _commit: Any
    _finish: Any

    def _resume_review(self, r: Any, settings: dict[str, Any]) -> None:
        """Take up a review the last run left unfinished: the draft it reviews, and what the policy kept of it."""
        r.review = stored_review(r.sid, settings)
        if r.review is None:
            return
        if r.review["stage"] != "draft":  # the draft was finished: its review goes on
            r.status, r.answer = r.review["status"], r.review["answer"]
        kept, recall = r.review.get("kept"), getattr(self.policy, "recall", None)
        if kept is not None and recall is not None:
            rows = {row["id"]: row for row in store.load_steps(self.db, r.sid, include_superseded=True)}
            if not all(i in rows for i in kept["step_ids"]):
                raise DamagedRow("sessions", f"id {r.sid!r}", "settings", "holds a review whose kept steps are gone")
            steps = [to_step(store.step_row(rows[i])) for i in kept["step_ids"]]
            recall({"trust": kept["trust"], "at": kept["at"], "status": kept["status"], "steps": steps})

    def _review(self, r: Any) -> bool:
        """Offer the finished draft to a policy's ``review``; True if it rolled back to a step the cloud wrote."""
        review = getattr(self.policy, "review", None)
        if review is None or r.status == "running":
            return False
        # the rewrites earlier reviews made: their cloud steps may be superseded since, but they were paid for
        sent_back = sum(1 for e in store.events(self.db, r.sid) if e["action"] == "rewrite"
                        and '"review"' in (e.get("detail") or ""))
        last = r.steps[-1].index if r.steps else 0
        state = r.review or {}
        if getattr(self.policy, "wants_read", False):
            if state.get("stage") == "act":  # read before a crash: decide from the stored read, never pay it again
                read = read_from_json(state.get("read"))
            else:
                events_read: list = []
                read = self.read_draft(r.sid, r.problem, r.prompt, r.steps, events_read)
                with store.write_txn(self.db):  # the read's events and the read itself, at once
                    for ev, what in events_read:
                        store.log_event(self.db, r.sid, last, ev, what)
                    self._save_review(r, {**state, "stage": "act", "read": read_to_json(read)})
            action = review(r.steps, r.status, sent_back, read)
        else:
            action = review(r.steps, r.status, sent_back)
        if action.trigger is None:
            self._end_review(r)
            return False
        if action.kind == "restore":
            self._restore(r, action)
            return False
        event = TriggerEvent(action.trigger, action.kind != "accept", action.score, action.threshold,
                             detail={"review": r.status, "reason": action.reason, "step": action.at,
                                     **(action.detail or {})})
        if action.kind != "rewrite" or action.at is None:
            self._end_review(r, (last, event, "accept"))
            return False
        pos = next(i for i, s in enumerate(r.steps) if s.index == action.at)
        events: list = [(event, "rewrite")]
        kept, r.steps = r.steps, r.steps[:pos]
        written = self._cloud_step(r, action.at, action.trigger, events)
        r.steps = kept
        if written is None:  # the cloud could not (budget, error): the draft stands, and why is stored with it
            self._end_review(r, (last, event, "cloud_failed"), *((last, e, what) for e, what in events[1:]))
            return False
        kept_draft = getattr(self.policy, "kept_draft", None)
        self._commit(r, written, events, rollback=action.at, rollback_reason=action.trigger,
                     review={"stage": "draft", "kept": kept_to_json(kept_draft() if kept_draft else None)})
        return True

    def _save_review(self, r: Any, state: dict[str, Any] | None) -> None:
        store.update_settings(self.db, r.sid, {"review": state})
        r.review = state

    def _end_review(self, r: Any, *logged: tuple[int, TriggerEvent, str]) -> None:
        """The review is over: its last decisions, and the draft's status as the session's, in one transaction."""
        with store.write_txn(self.db):
            for index, event, what in logged:
                store.log_event(self.db, r.sid, index, event, what)
            self._finish(r, r.status, final=True)

    def _restore(self, r: Any, action: Action) -> None:
        """Put the draft's own steps back from ``action.at`` on (the read trusted them more than the repair)."""
        kept = list(getattr(self.policy, "restore_steps", []))
        event = TriggerEvent(action.trigger or "policy", True, action.score, action.threshold,
                             detail={"review": r.status, "reason": action.reason, "step": action.at})
        if not kept:
            self._end_review(r)
            return
        pos = next(i for i, s in enumerate(r.steps) if s.index == action.at)
        r.steps = r.steps[:pos]
        with store.write_txn(self.db):  # the whole draft is back, with the review's end, or none of it
            for n, old in enumerate(kept):
                step = replace(old, id=None, trigger=action.trigger if n == 0 else old.trigger)
                self._commit(r, step, [(event, "restore")] if n == 0 else [], final=True, notify=False,
                             rollback=action.at if n == 0 else None,
                             rollback_reason=action.trigger if n == 0 else None)
            if r.status == "running":  # the draft had ended without an answer (its status is the policy's to tell)
                self._finish(r, getattr(self.policy, "restore_status", "ended"), final=True)
        for step in r.steps[pos:]:
            if r.cb.step_end:
                r.cb.step_end(step)

    def _stored(self, r: Any, status: str, answer: str | None, review: dict[str, Any] | None,
                final: bool) -> tuple[str, str | None, dict[str, Any] | None]:
        """What the session row says (status, answer) and the settings that change with it.

        A policy that reviews the finished draft keeps the session ``running`` until the review ends
        (``final``): the draft's own status and answer wait in the review's state (``edge_agent.review``)."""
        if final:
            return status, answer, {"review": None} if r.review is not None else None
        if status != "running" and getattr(self.policy, "review", None) is not None:
            return "running", None, {"review": {**(review or r.review or {}), "stage": "read", "status": status,
                                                "answer": answer}}
        return status, answer, None if review is None else {"review": review}
