"""Opening the session database: path resolution, file mode 0600, WAL, migrations, clear errors."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path

from .errors import StoreError
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from .txn import new_id, now


migrations = Migrations("edge-agent")


@migrations()
def m001_initial(db: Database) -> None:
    db["sessions"].create(
        {
            "id": str,
            "created_at": str,
            "updated_at": str,
            "problem": str,
            "model": str,
            "model_path": str,
            "policy": str,
            "status": str,  # running | done | ended | max_steps | context_full | budget | error
            "answer": str,
            "settings": str,  # JSON: max_steps, max_step_tokens, n_ctx, temperature, ...
            "cloud_provider": str,
            "cloud_model": str,
            "wall_s": float,
        },
        pk="id",
        defaults={"wall_s": 0.0},
    )
    db["steps"].create(
        {
            "id": str,
            "session_id": str,
            "idx": int,
            "author": str,  # local | cloud
            "kind": str,  # plan | step | intervention
            "text": str,
            "raw": str,
            "token_ids": str,  # JSON list: the exact tokens, so a reload needs no re-tokenizing
            "tokens": int,
            "evaluated": int,
            "signals": str,  # JSON
            "trigger": str,
            "finish": str,
            "seconds": float,
            "created_at": str,
            "superseded_by": str,  # rollbacks.id; rows are never deleted
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
    )
    db["steps"].create_index(["session_id", "idx"])
    db["trigger_events"].create(
        {
            "id": str,
            "session_id": str,
            "step_idx": int,
            "trigger": str,
            "action": str,
            "score": float,
            "threshold": float,
            "detail": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
    )
    db["trigger_events"].create_index(["session_id"])
    db["cloud_calls"].create(
        {
            "id": str,
            "session_id": str,
            "step_idx": int,
            "purpose": str,
            "provider": str,
            "model": str,
            "input_tokens": int,
            "output_tokens": int,
            "cached_tokens": int,
            "cost_usd": float,
            "latency_s": float,
            "status": str,
            "error": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
    )
    db["cloud_calls"].create_index(["session_id"])
    db["cloud_calls"].create_index(["created_at"])
    db["rollbacks"].create(
        {
            "id": str,
            "session_id": str,
            "to_idx": int,
            "reason": str,
            "superseded": int,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("session_id", "sessions", "id")],
    )


@migrations()
def m002_budget(db: Database) -> None:
    db["budget_reservations"].create(
        {
            "id": str,
            "session_id": str,
            "purpose": str,
            "provider": str,
            "model": str,
            "amount_nusd": int,  # worst case, integer nano-USD
            "status": str,  # open | settled | released
            "pid": int,
            "created_at": str,
            "settled_at": str,
        },
        pk="id",
    )
    db["budget_reservations"].create_index(["status"])
    db["cloud_calls"].add_column("cost_nusd", int)
    db["cloud_calls"].add_column("reserved_nusd", int)
    db["cloud_calls"].add_column("reservation_id", str)
    db["cloud_calls"].add_column("cache_write_tokens", int)


@migrations()
def m003_response_cache(db: Database) -> None:
    db["response_cache"].create(
        {
            "key": str,  # sha256 of the exact request: provider, model, endpoint, messages, params
            "provider": str,
            "model": str,
            "text": str,
            "input_tokens": int,
            "output_tokens": int,
            "cached_tokens": int,
            "cache_write_tokens": int,
            "created_at": str,
        },
        pk="key",
    )
    # what a call would have cost without the cache; equal to cost_nusd for a real call
    db["cloud_calls"].add_column("would_be_nusd", int)


@migrations()
def m004_session_leases(db: Database) -> None:
    """One writer per session: a lease row per held session, and one active step per (session, index).

    A database written before this migration may hold duplicate active steps (two ``resume`` runs
    of one session at once). From a session's first duplicated index on, its active steps are not
    one chain, so they are superseded by a rollback with reason ``m004: duplicate active steps``
    (kept, never deleted) and the session is set back to ``running``: ``resume`` regenerates them.
    """
    db["session_leases"].create(
        {
            "session_id": str,
            "pid": int,  # the holder
            "pid_start": int,  # its start time in clock ticks (/proc), so a reused PID is not taken for it
            "token": str,  # this hold; a writer whose lease was taken over stops at its next commit
            "purpose": str,  # run | rollback
            "acquired_at": str,
        },
        pk="session_id",
        foreign_keys=[("session_id", "sessions", "id")],
    )
    duplicated = db.execute(
        "SELECT session_id, MIN(idx) FROM (SELECT session_id, idx FROM steps WHERE superseded_by IS NULL"
        " GROUP BY session_id, idx HAVING COUNT(*) > 1) GROUP BY session_id"
    ).fetchall()
    for session_id, first in duplicated:
        rid, ts = new_id(), now()
        later = [r[0] for r in db.execute(
            "SELECT id FROM steps WHERE session_id = ? AND superseded_by IS NULL AND idx >= ?", [session_id, first])]
        db["rollbacks"].insert({"id": rid, "session_id": session_id, "to_idx": first, "reason": "m004: duplicate active steps",
                                "superseded": len(later), "created_at": ts})
        db.execute(f"UPDATE steps SET superseded_by = ? WHERE id IN ({','.join('?' * len(later))})", [rid, *later])
        db.execute("UPDATE sessions SET status = 'running', answer = NULL, updated_at = ? WHERE id = ?", [ts, session_id])
    db.execute("CREATE UNIQUE INDEX steps_active_idx ON steps (session_id, idx) WHERE superseded_by IS NULL")


@migrations()
def m005_continuation_and_step_cache(db: Database) -> None:
    """How each cloud step was asked for (``mode``: continuation or the transcript prompt), replayed
    local steps (``replayed``, with the seconds the step first took), and the step cache."""
    db["cloud_calls"].add_column("mode", str)
    db["steps"].add_column("replayed", int, not_null_default=0)
    db["steps"].add_column("would_be_s", float)
    db["step_cache"].create(
        {
            "key": str,  # sha256 of (model identity, exact context token ids, decoding settings)
            "model": str,  # the model identity, for reading the table
            "context_tokens": int,
            "token_ids": str,  # JSON list: the step's tokens
            "text": str,
            "raw": str,
            "signals": str,  # JSON
            "finish": str,
            "seconds": float,  # what computing it took the first time
            "created_at": str,
        },
        pk="key",
    )


@migrations()
def m006_atlas(db: Database) -> None:
    """The routing atlas: per problem the edge's trace, and per step k what a cloud step there would do."""
    db["atlas_meta"].create({"key": str, "value": str}, pk="key")
    db["atlas_problems"].create(
        {"id": str, "problem": str, "answer": str, "trace_session": str, "status": str,  # pending | done
         "predicted": str, "correct": int, "steps": int},
        pk="id",
    )
    db["atlas_branches"].create(
        {"problem_id": str, "kind": str,  # step | handover | cloud_only
         "k": int, "session_id": str, "status": str, "predicted": str, "correct": int, "cloud_in": int,
         "cloud_out": int, "local_tokens": int, "seconds": float, "cloud_steps": int},
        pk=("problem_id", "kind", "k"),
    )


@migrations()
def m007_samples(db: Database) -> None:
    """Self-consistency: a sample session names the session it samples for (``parent_id``, the greedy
    one); that parent keeps the vote's winning answer and its agreement share (votes for it / N)."""
    db["sessions"].add_column("parent_id", str)
    db["sessions"].add_column("vote_answer", str)
    db["sessions"].add_column("agreement", float)
    db["sessions"].create_index(["parent_id"])


@migrations()
def m008_claimed_cost(db: Database) -> None:
    """What the provider's usage claimed each call cost, beside the booked cost (they differ for an overrun)."""
    db["cloud_calls"].add_column("claimed_nusd", int)


KNOWN_MIGRATIONS = {m.name for m in migrations._migrations}
# the tables each migration creates: with the migration recorded, a missing one is a damaged schema
TABLES = {
    "m001_initial": ("sessions", "steps", "trigger_events", "cloud_calls", "rollbacks"),
    "m002_budget": ("budget_reservations",),
    "m003_response_cache": ("response_cache",),
    "m004_session_leases": ("session_leases",),
    "m005_continuation_and_step_cache": ("step_cache",),
    "m006_atlas": ("atlas_meta", "atlas_problems", "atlas_branches"),
    "m007_samples": (),
    "m008_claimed_cost": (),
}
INDEXES = {"m004_session_leases": ("steps_active_idx",)}  # the one-writer rule: without it, refuse


def _check_file(path: Path) -> None:
    """Refuse a directory, an unreadable file, or a file that is not SQLite, without opening it ourselves.

    Why not read its header: POSIX advisory locks belong to the process, and closing *any* descriptor of the
    file drops every lock SQLite holds on it through this process's connections (a trace page in ``serve``
    opens the database while the worker's connection is open). Another process then believes it is the
    last user, checkpoints and deletes the ``-wal`` under the worker, and later commits are lost. So only
    SQLite opens the file (its own descriptors are shared per inode and never closed under a lock), and the
    header is checked by SQLite itself when the schema is read.
    """
    if path.is_dir():
        raise StoreError(f"database path {path} is a directory: pass a file path with --db or EDGE_AGENT_DB")
    if path.exists() and not os.access(path, os.R_OK):
        raise StoreError(f"cannot read database {path}: Permission denied: check its permissions")


def _not_sqlite(path: Path) -> StoreError:
    return StoreError(f"{path} is not an edge-agent database (not SQLite): move it aside or pass another --db")


def _create_private(path: Path) -> None:
    """Create the file with mode 0600 before SQLite touches it, so no other user can read it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create database {path}: {e.strerror}: pass a writable --db path") from None


@contextlib.contextmanager
def _setup_lock(path: Path):
    """An advisory lock on a sidecar file, held only while the schema is checked and migrated."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield  # read-only directory: fall back to SQLite's own locking
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _look(path: Path) -> tuple[set[str], set[str], set[str], bool]:
    """Read (tables, indexes, our applied migrations, other apps' migrations recorded), changing nothing.

    With no ``-wal`` file the main file holds every committed page, so it is read as immutable: no
    lock, no ``-wal``/``-shm`` created. With one, a plain read-only connection sees the WAL too.
    """
    wal = path.with_name(path.name + "-wal")
    try:
        return _read_schema(path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?immutable=1"))
    except sqlite3.DatabaseError:
        if not wal.exists():
            raise
        # a writer started while the file was read as immutable: read it again, WAL included
        return _read_schema(path.resolve().as_uri() + "?mode=ro")


def _read_schema(uri: str) -> tuple[set[str], set[str], set[str], bool]:
    conn = sqlite3.connect(uri, uri=True, timeout=10.0)
    try:
        objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
        tables = {name for kind, name in objects if kind == "table"}
        indexes = {name for kind, name in objects if kind == "index"}
        ours: set[str] = set()
        others = False
        if Migrations.migrations_table in tables:
            for set_name, name in conn.execute(f"SELECT migration_set, name FROM {Migrations.migrations_table}"):
                if set_name == migrations.name:
                    ours.add(name)
                else:
                    others = True
        return tables, indexes, ours, others
    finally:
        conn.close()


def _check_schema(path: Path, tables: set[str], indexes: set[str], applied: set[str], others: bool) -> None:
    """Refuse another app's file, a newer schema or a damaged one (one line each), before any change."""
    if not applied:
        foreign = sorted(t for t in tables if t != Migrations.migrations_table and not t.startswith("sqlite_"))
        if foreign or others:
            shown = ", ".join(foreign[:4]) + (", …" if len(foreign) > 4 else "")
            raise StoreError(
                f"{path} is not an edge-agent database (it holds "
                + (f"other tables: {shown}" if foreign else "another app's migrations")
                + "): it was left untouched; pass another --db or EDGE_AGENT_DB"
            )
        return
    unknown = applied - KNOWN_MIGRATIONS
    if unknown:
        raise StoreError(
            f"database {path} was written by a newer edge-agent (schema {sorted(unknown)[-1]}): upgrade edge-agent"
        )
    missing = [f"table {t}" for m in applied for t in TABLES[m] if t not in tables]
    if not missing:  # a dropped table takes its indexes with it: name the table alone
        missing = [f"index {i}" for m in applied for i in INDEXES.get(m, ()) if i not in indexes]
    if missing:
        raise StoreError(
            f"database {path} is damaged: {', '.join(missing)} missing though its schema is recorded; "
            "it was left untouched: restore it from a backup or pass another --db"
        )


def _db_error(path: Path, e: sqlite3.DatabaseError) -> StoreError:
    msg = str(e)
    if "locked" in msg or "busy" in msg:
        return StoreError(f"database {path} is locked by another process: wait for it or pass another --db")
    if "readonly" in msg or "read-only" in msg:
        return StoreError(f"database {path} is read-only: fix its permissions or pass another --db")
    return StoreError(f"database {path} is unreadable ({msg}): move it aside or pass another --db")


def open_db(path: str | os.PathLike | None = None, *, create: bool = True) -> Database:
    """Open (creating if needed) the database, apply pending migrations and return it.

    An existing file is first looked at read-only: another app's SQLite file or a damaged schema is
    refused before anything (mode, journal, tables, a ``.lock`` file) is changed.
    """
    if not path:
        raise StoreError("no database path given: pass --db or set EDGE_AGENT_DB")
    path = Path(path).expanduser()
    _check_file(path)
    if path.exists():
        try:
            _check_schema(path, *_look(path))
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e):
                raise _not_sqlite(path) from None
            raise _db_error(path, e) from None
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            try:
                os.chmod(path, 0o600)
            except OSError:
                pass
    elif not create:
        raise StoreError(f"no database at {path}: run 'edge-agent solve' first or pass --db")
    else:
        _create_private(path)
    try:
        conn = sqlite3.connect(str(path), timeout=10.0)
        db = Database(conn, execute_plugins=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        with _setup_lock(path):  # two processes opening a new DB at once must not race the migrations
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")
            applied = {m.name for m in migrations.applied(db)}
            unknown = applied - KNOWN_MIGRATIONS
            if unknown:
                raise StoreError(
                    f"database {path} was written by a newer edge-agent (schema {sorted(unknown)[-1]}): upgrade edge-agent"
                )
            if migrations.pending(db):
                migrations.apply(db)
        from .ledger import reclaim_stale

        reclaim_stale(db)
    except sqlite3.DatabaseError as e:
        raise _db_error(path, e) from None
    return db


def db_file(db: Database) -> str:
    """The file of ``db``, for another thread to open its own connection (one stays in its thread)."""
    path = db.execute("PRAGMA database_list").fetchone()[2]
    if not path:
        raise StoreError("an in-memory database cannot be shared between threads")
    return path
