"""Repository functions: the only place that writes SQL for sessions, steps, events and rollbacks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlite_utils import Database

from .errors import SessionError, StoreError
from .lease import check_writer, session_lease
from .txn import new_id, now, write_txn

FINISHED = ("done", "ended", "max_steps", "context_full")
REPAIR = "restore the database from a backup, or fix or delete that row with sqlite3 (other sessions are unaffected)"
NUMBER = (int, float)  # bool is an int: a signal such as has_answer is one


class DamagedRow(StoreError):
    """A row is not what edge-agent wrote (edited by hand, bit-rotted): the message names it and what to do."""

    def __init__(self, table: str, key: str, column: str, what: str, fix: str = REPAIR) -> None:
        super().__init__(f"damaged database row: {table} {key}, column {column} {what}: {fix}")
        self.table, self.key, self.column = table, key, column


def json_column(table: str, key: str, column: str, raw: Any, shape: type, default: Any, fix: str = REPAIR) -> Any:
    """A JSON column's value, of ``shape`` (list or dict); empty gives ``default``; anything else is a DamagedRow."""
    if raw is None or raw == "":
        return default
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):  # a number or garbage where JSON was written; UnicodeDecodeError included
        raise DamagedRow(table, key, column, f"is not JSON ({repr(raw)[:40]})", fix) from None
    if not isinstance(value, shape):
        raise DamagedRow(table, key, column, f"is not a JSON {'list' if shape is list else 'object'}", fix)
    return value


def token_ids(table: str, key: str, raw: Any, fix: str = REPAIR) -> tuple[int, ...]:
    """A stored ``token_ids`` column: a JSON list of whole numbers."""
    ids = json_column(table, key, "token_ids", raw, list, [], fix)
    if not all(type(t) is int for t in ids):
        raise DamagedRow(table, key, "token_ids", "holds something other than token ids (whole numbers)", fix)
    return tuple(ids)


def signals(table: str, key: str, raw: Any, fix: str = REPAIR) -> dict[str, Any]:
    """A stored ``signals`` column: a JSON object of numbers (and flags)."""
    value = json_column(table, key, "signals", raw, dict, {}, fix)
    bad = sorted(k for k, v in value.items() if not isinstance(v, NUMBER))
    if bad:
        raise DamagedRow(table, key, "signals", f"holds a non-number {bad[0][:40]!r}", fix)
    return value


def event_detail(row: dict[str, Any]) -> dict[str, Any]:
    """A trigger event's ``detail`` (a JSON object)."""
    return json_column("trigger_events", f"id {row['id']!r}", "detail", row["detail"], dict, {})


def step_cache_get(db: Database, key: str) -> dict[str, Any] | None:
    """``store.cache``'s entry for ``key``, every column checked first: a damaged entry is a DamagedRow naming
    its column (it is only a cache: the caller computes the step again and replaces the entry)."""
    from .cache import step_cache_get as get

    hit = get(db, key)
    if hit is not None:
        fix = "it is only a cache: the step is computed again and the entry replaced"
        where = f"key {key[:16]}…"
        for column in ("token_ids", "signals"):
            if hit[column] is None:
                raise DamagedRow("step_cache", where, column, "is empty", fix)
        token_ids("step_cache", where, hit["token_ids"], fix)
        signals("step_cache", where, hit["signals"], fix)
        for column in ("text", "raw", "finish"):
            if not isinstance(hit[column], str):
                raise DamagedRow("step_cache", where, column, "is not text", fix)
        if hit["seconds"] is not None and (isinstance(hit["seconds"], bool) or not isinstance(hit["seconds"], NUMBER)):
            raise DamagedRow("step_cache", where, "seconds", "is not a number", fix)
    return hit


def check_session(db: Database, session_id: str) -> None:
    """Raise DamagedRow for the first row of the session that cannot be read: its settings, every step
    (superseded ones too) and every event. A page or ``show`` calls it before rendering anything."""
    load_state(db, session_id)
    for row in load_steps(db, session_id, include_superseded=True):
        step_row(row)
    for row in events(db, session_id):
        event_detail(row)



class StepLike(Protocol):
    """What ``commit_step`` reads of a step (the agent's ``Step`` has these)."""

    index: int
    author: str
    kind: str
    text: str
    raw: str
    token_ids: tuple[int, ...]
    trigger: str | None
    finish: str
    seconds: float
    id: str | None

    @property
    def tokens(self) -> int: ...

    @property
    def signals(self) -> Any: ...  # has ``to_dict()``


class EventLike(Protocol):
    """What ``record_event`` reads of a trigger event."""

    trigger: str
    score: float | None
    threshold: float | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class StepRow:
    """A stored step as the store knows it: the exact text and tokens, and the signals as stored (a dict)."""

    index: int
    author: str
    kind: str
    text: str
    raw: str
    token_ids: tuple[int, ...]
    signals: dict[str, Any] = field(default_factory=dict)
    trigger: str | None = None
    finish: str = "separator"
    seconds: float = 0.0
    id: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class SessionState:
    """Everything needed to continue a session exactly where it stopped."""

    id: str
    problem: str
    model: str
    model_path: str
    policy: str
    status: str
    answer: str | None
    settings: dict[str, Any]
    created_at: str
    steps: list[Any] = field(default_factory=list)  # active (not superseded), in order: StepRow here
    cloud_provider: str | None = None
    cloud_model: str | None = None
    wall_s: float = 0.0


def new_session(
    db: Database,
    *,
    problem: str,
    model: str,
    model_path: str,
    policy: str,
    settings: dict[str, Any],
    cloud_provider: str | None = None,
    cloud_model: str | None = None,
    parent_id: str | None = None,  # a self-consistency sample: the session it samples for
) -> str:
    sid = new_id()
    ts = now()
    with write_txn(db):
        db["sessions"].insert(
            {
                "id": sid,
                "created_at": ts,
                "updated_at": ts,
                "problem": problem,
                "model": model,
                "model_path": model_path,
                "policy": policy,
                "status": "running",
                "answer": None,
                "settings": json.dumps(settings, sort_keys=True),
                "cloud_provider": cloud_provider,
                "cloud_model": cloud_model,
                **({"parent_id": parent_id} if parent_id is not None else {}),  # m007's column, for a sample only
            }
        )
    return sid


def commit_step(
    db: Database,
    session_id: str,
    step: StepLike,
    *,
    evaluated: int = 0,
    events: list[tuple[EventLike, str]] = (),  # (event, action taken)
    status: str = "running",
    answer: str | None = None,
    rollback_reason: str | None = None,
    would_be_s: float | None = None,
    settings: dict[str, Any] | None = None,
) -> str:
    """Write one accepted step with its events and the session's new status in one transaction.

    The step is the checkpoint: a crash after this returns loses nothing before it. With
    ``rollback_reason``, active steps at or after ``step.index`` are superseded in the same
    transaction (an intervention that replaces a wrong step), so no crash can leave half a rollback.
    ``would_be_s``: the step was replayed from the step cache, and computing it took that long.
    ``settings``: changes to the session's settings that hold from this step on (a review's state).
    """
    step_id = step.id or new_id()
    ts = now()
    with write_txn(db):
        check_writer(db, session_id)
        if rollback_reason is not None:
            _supersede(db, session_id, step.index, rollback_reason)
        db["steps"].insert(
            {
                "id": step_id,
                "session_id": session_id,
                "idx": step.index,
                "author": step.author,
                "kind": step.kind,
                "text": step.text,
                "raw": step.raw,
                "token_ids": json.dumps(list(step.token_ids)),
                "tokens": step.tokens,
                "evaluated": evaluated,
                "signals": json.dumps(step.signals.to_dict()),
                "trigger": step.trigger,
                "finish": step.finish,
                "seconds": round(step.seconds, 4),
                "created_at": ts,
                "superseded_by": None,
                "replayed": int(would_be_s is not None),
                "would_be_s": None if would_be_s is None else round(would_be_s, 4),
            }
        )
        for event, action in events:
            record_event(db, session_id, step.index, event, action)
        db["sessions"].update(session_id, {"status": status, "answer": answer, "updated_at": ts})
        if settings:
            update_settings(db, session_id, settings)
    return step_id


def log_event(db: Database, session_id: str, step_idx: int, event: EventLike, action: str) -> None:
    """Record a decision that wrote no step (a review that accepted the draft), in its own transaction."""
    with write_txn(db):
        check_writer(db, session_id)
        record_event(db, session_id, step_idx, event, action)


def record_event(db: Database, session_id: str, step_idx: int, event: EventLike, action: str) -> None:
    db["trigger_events"].insert(
        {
            "id": new_id(),
            "session_id": session_id,
            "step_idx": step_idx,
            "trigger": event.trigger,
            "action": action,
            "score": event.score,
            "threshold": event.threshold,
            "detail": json.dumps(event.detail, sort_keys=True),
            "created_at": now(),
        }
    )


def set_status(db: Database, session_id: str, status: str, answer: str | None = None,
               settings: dict[str, Any] | None = None) -> None:
    """The session's status (and ``settings`` changes, such as a review's state) in one transaction."""
    with write_txn(db):
        check_writer(db, session_id)
        db["sessions"].update(session_id, {"status": status, "answer": answer, "updated_at": now()})
        if settings:
            update_settings(db, session_id, settings)


def update_settings(db: Database, session_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    with write_txn(db):
        row = db.execute("SELECT settings FROM sessions WHERE id = ?", [session_id]).fetchone()
        settings = {**session_settings(session_id, row[0]), **changes}
        db["sessions"].update(session_id, {"settings": json.dumps(settings, sort_keys=True), "updated_at": now()})
    return settings


def add_wall_time(db: Database, session_id: str, seconds: float) -> None:
    with write_txn(db):
        db.execute(
            "UPDATE sessions SET wall_s = COALESCE(wall_s, 0) + ?, updated_at = ? WHERE id = ?",
            [round(seconds, 4), now(), session_id],
        )


def resolve_id(db: Database, prefix: str) -> str:
    """Full session id from an id or a unique prefix of one (case-insensitive)."""
    prefix = prefix.strip().upper()
    if not prefix:
        raise SessionError("empty session id: see 'edge-agent sessions' for ids")
    # a plain prefix comparison: LIKE would read % and _ in a user's prefix as wildcards
    rows = [r[0] for r in db.execute("SELECT id FROM sessions WHERE substr(id, 1, ?) = ? LIMIT 2",
                                     [len(prefix), prefix]).fetchall()]
    if not rows:
        raise SessionError(f"no session {prefix!r} in this database: see 'edge-agent sessions' for ids")
    if len(rows) > 1:
        raise SessionError(f"session prefix {prefix!r} is ambiguous: give more characters")
    return rows[0]


def session_settings(session_id: str, raw: Any) -> dict[str, Any]:
    return json_column("sessions", f"id {session_id!r}", "settings", raw, dict, {})


def step_row(row: dict[str, Any]) -> StepRow:
    """A stored step as a ``StepRow``; DamagedRow if its tokens or signals are not what was written."""
    key = f"id {row['id']!r} (session {row['session_id']})"
    return StepRow(
        index=row["idx"],
        author=row["author"],
        kind=row["kind"],
        text=row["text"],
        raw=row["raw"],
        token_ids=token_ids("steps", key, row["token_ids"]),
        signals=signals("steps", key, row["signals"]),
        trigger=row["trigger"],
        finish=row["finish"] or "separator",
        seconds=row["seconds"] or 0.0,
        id=row["id"],
    )


def ensure_resumable(state: SessionState) -> None:
    """Refuse to continue a finished session (one place for the rule and its message)."""
    if state.status in FINISHED:
        raise SessionError(
            f"session {state.id} is already finished ({state.status}): "
            "use 'edge-agent rollback' to redo steps, or start a new solve"
        )


def load_steps(db: Database, session_id: str, *, include_superseded: bool = False) -> list[dict[str, Any]]:
    where = "session_id = ?" + ("" if include_superseded else " AND superseded_by IS NULL")
    return list(db["steps"].rows_where(where, [session_id], order_by="id"))


def load_state(db: Database, session_id: str) -> SessionState:
    """Rebuild the exact reasoning state of a session from the database."""
    found = list(db["sessions"].rows_where("id = ?", [session_id]))
    if not found:
        raise SessionError(f"no session {session_id!r} in this database: see 'edge-agent sessions' for ids")
    s = found[0]
    settings = session_settings(s["id"], s["settings"])
    steps = [step_row(r) for r in load_steps(db, session_id)]
    return SessionState(
        id=s["id"],
        problem=s["problem"],
        model=s["model"],
        model_path=s["model_path"],
        policy=s["policy"],
        status=s["status"],
        answer=s["answer"],
        settings=settings,
        created_at=s["created_at"],
        steps=steps,
        cloud_provider=s["cloud_provider"],
        cloud_model=s["cloud_model"],
        wall_s=s["wall_s"] or 0.0,
    )


def events(db: Database, session_id: str) -> list[dict[str, Any]]:
    return list(db["trigger_events"].rows_where("session_id = ?", [session_id], order_by="id"))


def cloud_calls(db: Database, session_id: str) -> list[dict[str, Any]]:
    return list(db["cloud_calls"].rows_where("session_id = ?", [session_id], order_by="id"))


def rollbacks(db: Database, session_id: str) -> list[dict[str, Any]]:
    """The session's rollbacks, oldest first; each step they superseded names one in ``superseded_by``."""
    return list(db["rollbacks"].rows_where("session_id = ?", [session_id], order_by="id"))


def rollback_to(db: Database, session_id: str, to_idx: int, reason: str = "user") -> str:
    """Mark active steps with index >= ``to_idx`` superseded (never deleted); return the rollback id.

    Refused while another process continues the session (it would go on writing on the old steps).
    """
    check_rollback(load_state(db, session_id), to_idx)  # before the lease: a refusal writes nothing
    with session_lease(db, session_id, purpose="rollback"):
        check_rollback(load_state(db, session_id), to_idx)  # the steps may have changed meanwhile
        with write_txn(db):
            rid = _supersede(db, session_id, to_idx, reason)
            db["sessions"].update(session_id, {"status": "running", "answer": None, "updated_at": now()})
            row = db.execute("SELECT settings FROM sessions WHERE id = ?", [session_id]).fetchone()
            if session_settings(session_id, row[0]).get("review"):  # a review in progress read the superseded steps
                update_settings(db, session_id, {"review": None})
    return rid


def check_rollback(state: SessionState, to_idx: int) -> None:
    """Refuse a rollback to a step the session does not have (one place for the rule and its message)."""
    if not 0 <= to_idx < len(state.steps):
        raise SessionError(
            f"session {state.id} has steps 0..{len(state.steps) - 1}; cannot roll back to step {to_idx}: "
            "pick an index shown by 'edge-agent show'"
            if state.steps
            else f"session {state.id} has no steps to roll back"
        )


def _supersede(db: Database, session_id: str, to_idx: int, reason: str) -> str:
    """Inside a write transaction: mark active steps with index >= ``to_idx`` superseded, log the rollback."""
    rid = new_id()
    later = [row[0] for row in db.execute(
        "SELECT id FROM steps WHERE session_id = ? AND superseded_by IS NULL AND idx >= ?", [session_id, to_idx])]
    db["rollbacks"].insert(
        {"id": rid, "session_id": session_id, "to_idx": to_idx, "reason": reason, "superseded": len(later), "created_at": now()}
    )
    if later:
        db.execute(f"UPDATE steps SET superseded_by = ? WHERE id IN ({','.join('?' * len(later))})", [rid, *later])
    return rid


def list_sessions(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    sql = """
        SELECT s.id, s.created_at, s.status, s.answer, s.model, s.policy, s.problem,
               (SELECT COUNT(*) FROM steps t WHERE t.session_id = s.id AND t.superseded_by IS NULL) AS steps
        FROM sessions s ORDER BY s.id DESC LIMIT ?
    """
    cur = db.execute(sql, [limit])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


# -- one writer per session -----------------------------------------------------------------------------
#
