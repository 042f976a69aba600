"""Rows that move between databases: a worker's share of a run, read out of its scratch database and
written into the run's own database in one transaction (``edge_agent.scale`` ships them over Ray).

A session travels with its steps, events, cloud calls and rollbacks; an atlas problem with its
branches and their sessions; the two caches with the rows added since a mark. Rows are written by
primary key (a row already there is updated, never deleted and inserted again), so writing the same
rows twice changes nothing, and a cache entry already there is kept (it is the same entry).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from .txn import write_txn

Rows = dict[str, list[dict[str, Any]]]

SESSION_TABLES = ("steps", "trigger_events", "cloud_calls", "rollbacks")  # each row has a session_id
CACHES = ("step_cache", "response_cache")
# parents first: a child row's foreign key must find its session
ORDER = ("sessions", *SESSION_TABLES, "atlas_problems", "atlas_branches", *CACHES)
KEYS = {"atlas_branches": ("problem_id", "kind", "k"), "step_cache": ("key",), "response_cache": ("key",)}


def _select(db: Database, table: str, column: str, values: list[Any]) -> list[dict[str, Any]]:
    if not values:
        return []
    marks = ",".join("?" * len(values))
    return list(db.query(f"SELECT * FROM [{table}] WHERE [{column}] IN ({marks}) ORDER BY rowid", values))


def session_rows(db: Database, session_ids: Iterable[str]) -> Rows:
    """These sessions and every row that hangs off them."""
    ids = sorted(set(session_ids))
    out: Rows = {"sessions": _select(db, "sessions", "id", ids)}
    for table in SESSION_TABLES:
        out[table] = _select(db, table, "session_id", ids)
    return out


def session_row(db: Database, session_id: str) -> dict[str, Any] | None:
    rows = _select(db, "sessions", "id", [session_id])
    return rows[0] if rows else None


def problem_rows(db: Database, problem_id: str) -> Rows:
    """An atlas problem (finished or not), its branches and all their sessions; empty if it has none."""
    problems = _select(db, "atlas_problems", "id", [problem_id])
    branches = _select(db, "atlas_branches", "problem_id", [problem_id])
    sids = [r["trace_session"] for r in problems] + [r["session_id"] for r in branches]
    return {**session_rows(db, [s for s in sids if s]), "atlas_problems": problems, "atlas_branches": branches}


def cache_marks(db: Database) -> dict[str, int]:
    """Where each cache ends now: ``cache_rows(db, marks)`` later returns only what was added since."""
    return {t: db.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM [{t}]").fetchone()[0] for t in CACHES}


def cache_rows(db: Database, since: dict[str, int] | None = None) -> Rows:
    """The step and response cache entries (all, or those added after ``since``)."""
    since = since or {}
    return {t: list(db.query(f"SELECT * FROM [{t}] WHERE rowid > ? ORDER BY rowid", [since.get(t, 0)])) for t in CACHES}


def cloud_call(db: Database, call_id: str) -> dict[str, Any]:
    return _select(db, "cloud_calls", "id", [call_id])[0]


def ensure_session(db: Database, row: dict[str, Any]) -> None:
    """Write a session row unless the session is already there (its calls need it for their foreign key)."""
    with write_txn(db):
        _put(db, "sessions", [row], update=False)


def put_rows(db: Database, rows: Rows) -> None:
    """Write ``rows`` (table -> rows) in one transaction, parents first; existing rows are updated."""
    with write_txn(db):
        for table in ORDER:
            batch = rows.get(table) or []
            if table == "steps":  # a superseded step gives up its index before the step that replaced it lands
                batch = sorted(batch, key=lambda r: r.get("superseded_by") is None)
            _put(db, table, batch, update=table not in CACHES)


def _put(db: Database, table: str, batch: list[dict[str, Any]], *, update: bool) -> None:
    for row in batch:
        cols = list(row)
        keys = KEYS.get(table, ("id",))
        names = ", ".join(f"[{c}]" for c in cols)
        sql = f"INSERT INTO [{table}] ({names}) VALUES ({', '.join('?' * len(cols))})"
        sets = ", ".join(f"[{c}] = excluded.[{c}]" for c in cols if c not in keys)
        if update and sets:
            sql += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
        else:
            sql += " ON CONFLICT DO NOTHING"
        db.execute(sql, [row[c] for c in cols])
