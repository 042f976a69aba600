"""The step cache: a greedy step is a function of (model, context tokens, decoding settings), so it is kept."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from .txn import now, write_txn


def step_cache_get(db: Database, key: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM step_cache WHERE key = ?", [key]))
    return rows[0] if rows else None


def step_cache_put(db: Database, key: str, *, replace: bool = False, **entry: Any) -> None:
    """Keep a computed step; a step another process stored first is left as it is (they are the same), unless
    ``replace`` (the stored entry was damaged)."""
    with write_txn(db):
        db.execute(
            f"INSERT OR {'REPLACE' if replace else 'IGNORE'} INTO step_cache (key, model, context_tokens, token_ids, text, raw, signals, finish,"
            " seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [key, entry["model"], entry["context_tokens"], entry["token_ids"], entry["text"], entry["raw"],
             entry["signals"], entry["finish"], entry["seconds"], now()],
        )


def step_cache_stats(db: Database, session_ids: list[str] | None = None) -> dict[str, Any]:
    """Replayed and computed local steps, with real and would-be seconds (all sessions, or these)."""
    where, args = "author = 'local' AND superseded_by IS NULL", []
    if session_ids is not None:
        where += f" AND session_id IN ({','.join('?' * len(session_ids))})"
        args = list(session_ids)
    replayed, computed, real_s, would_s = db.execute(
        f"SELECT COALESCE(SUM(replayed), 0), COALESCE(SUM(1 - replayed), 0), COALESCE(SUM(seconds), 0),"
        f" COALESCE(SUM(COALESCE(would_be_s, seconds)), 0) FROM steps WHERE {where}", args).fetchone()
    return {"replayed": int(replayed), "computed": int(computed), "local_s": round(real_s, 3),
            "would_be_local_s": round(would_s, 3)}
