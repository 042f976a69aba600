"""SQLite session store: schema, migrations and repository functions. Knows nothing about models.

The public names load on first use (PEP 562), so ``store.errors`` can be imported without pulling
in sqlite-utils: the CLI's error funnel needs the error classes long before any database.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import SessionError, StoreError

if TYPE_CHECKING:  # pragma: no cover - what the type checker sees of the lazy names below
    from sqlite_utils import Database as Database  # the session database every store function takes

_HOMES = {
    "ledger": None, "shard": None,
    "open_db": "db", "Database": "db", "db_file": "db",
    "new_id": "txn", "now": "txn", "write_txn": "txn", "session_lease": "lease",
    "sample_sessions": "samples", "set_vote": "samples", "sample_links": "samples", "sample_totals": "samples",
    "step_cache_get": "repo",  # store.cache's, with the entry's JSON checked where the other row checks are
    "step_cache_put": "cache", "step_cache_stats": "cache",
    **{name: "atlas" for name in ("atlas_meta", "set_atlas_meta", "atlas_problem", "put_atlas_problem",
                                  "atlas_branch", "put_atlas_branch", "atlas_rows")},
    **{name: "repo" for name in ("FINISHED",
        "add_wall_time", "SessionState", "check_rollback", "cloud_calls", "commit_step",
        "ensure_resumable", "events", "list_sessions", "load_state", "load_steps", "new_session",
        "log_event", "record_event", "resolve_id", "rollback_to", "rollbacks", "set_status", "update_settings",
        "StepRow", "StepLike", "EventLike", "DamagedRow", "check_session", "event_detail", "step_row",
        "session_settings")},
}

__all__ = ["SessionError", "StoreError", *_HOMES]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'store' has no attribute {name!r}")
    home = _HOMES[name]
    value = importlib.import_module(f".{home or name}", __name__)
    if home is not None:
        value = getattr(value, name)
    globals()[name] = value
    return value
