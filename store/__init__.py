"""SQLite session store: schema, migrations and repository functions. Knows nothing about models."""

from . import ledger
from .db import default_path, open_db
from .repo import (
    FINISHED,
    add_wall_time,
    SessionState,
    cloud_calls,
    commit_step,
    ensure_resumable,
    events,
    list_sessions,
    load_state,
    load_steps,
    new_id,
    new_session,
    record_event,
    resolve_id,
    rollback_to,
    set_status,
    update_settings,
)

__all__ = [
    "ledger",
    "FINISHED",
    "add_wall_time",
    "SessionState",
    "cloud_calls",
    "commit_step",
    "ensure_resumable",
    "default_path",
    "events",
    "list_sessions",
    "load_state",
    "load_steps",
    "new_id",
    "new_session",
    "open_db",
    "record_event",
    "resolve_id",
    "rollback_to",
    "set_status",
    "update_settings",
]
