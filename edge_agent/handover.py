"""``solve --samples N --handover-below A``: local votes first, the cloud where the vote is weakest.

After the vote of N local solutions (``samples``), a problem whose agreement is below ``A`` is handed to the
cloud alone: one more session linked to the parent (``sessions.parent_id``, ``"handover": true`` in its
settings) runs the ``cloud-only`` policy, and its answer, if it gives one, replaces the vote's. Agreement at
or above ``A`` keeps the vote and spends nothing; the atlas replays the same rule with the same ``<``
(``vote_eval.handover_below``). The handover is a session like any other: its call is reserved under the
caps before it is sent, a refused or failed call leaves the vote standing, and a kill at any point is
finished by ``resume PARENT`` (the handover session is created once, and its committed steps are kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import store

from .agent import Agent, Callbacks, RunResult, Settings
from .errors import InputError

POLICY = "cloud-only"


def check_threshold(value: Any) -> float | None:
    """``--handover-below`` / ``[solve] handover_below``: None, or an agreement share in (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= 1:
        raise InputError(f"--handover-below must be an agreement share > 0 and <= 1, e.g. 0.6 (got {value!r:.40})")
    return float(value)


def hands_over(agreement: float, below: float | None) -> bool:
    """The rule, live and in replay: strictly below the threshold."""
    return below is not None and agreement < below


def threshold(parent_settings: dict[str, Any]) -> float | None:
    """The parent's stored threshold; a damaged one is refused in one line naming the session."""
    samples = parent_settings.get("samples")
    value = samples.get("handover_below") if isinstance(samples, dict) else None
    try:
        return check_threshold(value)
    except InputError:
        raise store.SessionError(
            f"session settings are damaged: samples.handover_below is {value!r:.40}, not a share in (0, 1]: "
            "start a new solve") from None


def handover_row(db: Any, parent_id: str) -> dict[str, Any] | None:
    """The parent's handover session (id, status, answer, settings), if it has one."""
    for row in store.sample_sessions(db, parent_id):
        if store.session_settings(row["id"], row["settings"]).get("handover") is True:  # DamagedRow: not an object
            return row
    return None


def pending(db: Any, parent_id: str, agreement: float | None) -> bool:
    """Whether a voted parent still has a handover to run or finish."""
    if agreement is None or not hands_over(agreement, threshold(store.load_state(db, parent_id).settings)):
        return False
    row = handover_row(db, parent_id)
    return row is None or row["status"] not in store.FINISHED


def run_handover(agent: Agent, parent_id: str, agreement: float, cb: Callbacks,
                 announce: Callable[[float, bool], None] | None = None) -> RunResult | None:
    """Hand the parent's problem to the cloud alone when the vote's ``agreement`` is below the threshold.

    ``announce(agreement, cloud)`` hears first that it is due (``cloud`` False: offline, the vote stands).
    None when the vote stands (agreement high enough, no threshold, no cloud or offline) or the handover is
    already finished. The session is created once; a resumed one continues from its committed steps."""
    db = agent.db
    parent = store.load_state(db, parent_id)
    if not hands_over(agreement, threshold(parent.settings)):
        return None
    if announce:
        announce(agreement, agent.cloud is not None and not agent.offline)
    if agent.cloud is None or agent.offline:
        return None
    row = handover_row(db, parent_id)
    if row is not None and row["status"] in store.FINISHED:
        return None
    cloud = Agent(agent.model, db, POLICY, cloud=agent.cloud, caps=agent.caps, offline=False,
                  continuation=agent.continuation)
    if row is None:
        settings = Settings.from_dict({**parent.settings, "temperature": 0.0})
        keep = {k: v for k, v in parent.settings.items()
                if k not in Settings.__dataclass_fields__ and k not in ("samples", "sample", "offline")}
        sid = cloud.start(parent.problem, settings, {**keep, "handover": True}, parent_id=parent_id)
    else:
        sid = row["id"]
    return cloud.run(sid, cb)


def block(db: Any, parent_id: str, vote_answer: str | None, agreement: float | None) -> dict[str, Any]:
    """What a parent's report adds: the handover (threshold, session, status) and the answer that stands."""
    below = threshold(store.load_state(db, parent_id).settings)
    if below is None:
        return {}
    row = handover_row(db, parent_id)
    answered = row is not None and _cloud_answered(db, row)
    return {"answer": row["answer"] if answered and row else vote_answer,
            "handover": {"below": below, "handed": agreement is not None and hands_over(agreement, below),
                         "session_id": row["id"] if row else None, "status": row["status"] if row else None,
                         "answer": row["answer"] if row else None, "cloud_answered": answered,
                         "cost_usd": _spent(db, row["id"]) if row else 0.0}}


def _spent(db: Any, session_id: str) -> float:
    return round(sum(c["cost_nusd"] or 0 for c in store.cloud_calls(db, session_id)) / 1e9, 9)


def _cloud_answered(db: Any, row: dict[str, Any]) -> bool:
    """The handover finished with an answer the cloud wrote (a refused cloud leaves the edge's, which does not
    replace the vote)."""
    if row["status"] != "done" or row["answer"] is None:
        return False
    last = db.execute("SELECT author FROM steps WHERE session_id = ? AND superseded_by IS NULL ORDER BY idx DESC"
                      " LIMIT 1", [row["id"]]).fetchone()
    return last is not None and last[0] == "cloud"
