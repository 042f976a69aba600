"""Self-consistency samples: the sessions that sample for a parent session, and the parent's stored vote."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from .txn import now, write_txn


def sample_sessions(db: Database, parent_id: str) -> list[dict[str, Any]]:
    """The sessions sampling for ``parent_id``, oldest first (id, status, answer, settings JSON)."""
    cur = db.execute("SELECT id, status, answer, settings FROM sessions WHERE parent_id = ? ORDER BY id", [parent_id])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def set_vote(db: Database, session_id: str, answer: str | None, agreement: float) -> None:
    """Store the vote's winning answer and agreement share on the parent session."""
    with write_txn(db):
        db.execute("UPDATE sessions SET vote_answer = ?, agreement = ?, updated_at = ? WHERE id = ?",
                   [answer, agreement, now(), session_id])


def sample_links(db: Database, session_id: str) -> dict[str, Any]:
    """A session's ``parent_id`` (set on a sample) and stored vote (set on a parent once it voted)."""
    row = db.execute("SELECT parent_id, vote_answer, agreement FROM sessions WHERE id = ?", [session_id]).fetchone()
    return dict(zip(("parent_id", "vote_answer", "agreement"), row or (None, None, None)))


def sample_totals(db: Database, parent_id: str) -> dict[str, Any]:
    """Local tokens, local seconds and wall seconds of a parent and all its samples together."""
    ids = [parent_id, *(r["id"] for r in sample_sessions(db, parent_id))]
    marks = ",".join("?" * len(ids))
    tokens, local_s = db.execute(
        f"SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(seconds), 0) FROM steps WHERE session_id IN ({marks})"
        " AND author = 'local' AND superseded_by IS NULL", ids).fetchone()
    wall_s = db.execute(f"SELECT COALESCE(SUM(wall_s), 0) FROM sessions WHERE id IN ({marks})", ids).fetchone()[0]
    return {"local_tokens": tokens, "local_s": round(local_s, 3), "wall_s": round(wall_s, 3)}
