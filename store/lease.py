"""One writer per session: a lease row naming the writer's process, taken over only from a dead one."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading

from sqlite_utils import Database

from .errors import SessionError
from .txn import new_id, now, write_txn

# A process that continues a session (run, resume, rollback) holds its row in ``session_leases``,
# keyed by session, with its PID and the PID's start time. Another process is refused while the
# holder lives; a holder that died (kill -9, power loss) is detected by its PID and its lease taken
# over, as the ledger reclaims reservations. Within one process the holding thread may re-enter
# (``rollback`` holds the session, then runs it); other threads are refused. Steps are also
# protected by a unique index on (session, index) for active steps (migration m004).

_leases_lock = threading.Lock()
_held: dict[str, list[int]] = {}  # token -> [holding thread ident, depth], for leases this process holds


@contextlib.contextmanager
def session_lease(db: Database, session_id: str, purpose: str = "run"):
    """Hold ``session_id`` as its only writer for the block; SessionError if a live process holds it."""
    token = _acquire(db, session_id, purpose)
    try:
        yield token
    finally:
        _release(db, session_id, token)


def _busy(session_id: str, pid: int) -> SessionError:
    return SessionError(
        f"session {session_id} is being continued by process {pid}: wait for it to finish, or stop it and try again"
    )


def _acquire(db: Database, session_id: str, purpose: str) -> str:
    me, thread = os.getpid(), threading.get_ident()
    with write_txn(db):
        if db.execute("SELECT 1 FROM sessions WHERE id = ?", [session_id]).fetchone() is None:
            raise SessionError(f"no session {session_id!r} in this database: see 'edge-agent sessions' for ids")
        row = db.execute("SELECT pid, pid_start, token FROM session_leases WHERE session_id = ?", [session_id]).fetchone()
        if row is not None:
            pid, started, held_token = row
            with _leases_lock:
                mine = _held.get(held_token) if pid == me else None
                if mine is not None:
                    if mine[0] != thread:
                        raise _busy(session_id, pid)
                    mine[1] += 1
                    return held_token
            # our own PID with a token we never took: an earlier process that had this PID
            if pid != me and alive(pid, started):
                raise _busy(session_id, pid)
        token = new_id()
        with _leases_lock:  # known before it commits: a thread of ours must never see it as stale
            _held[token] = [thread, 1]
        try:
            db.execute(
                "INSERT OR REPLACE INTO session_leases (session_id, pid, pid_start, token, purpose, acquired_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [session_id, me, proc_start(me), token, purpose, now()],
            )
        except BaseException:
            with _leases_lock:
                _held.pop(token, None)
            raise
    return token


def _release(db: Database, session_id: str, token: str) -> None:
    with _leases_lock:
        entry = _held.get(token)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[token]
    try:
        with write_txn(db):
            db.execute("DELETE FROM session_leases WHERE session_id = ? AND token = ?", [session_id, token])
    except sqlite3.Error:
        pass  # left behind, the row names this process: others take it over once it exits


def check_writer(db: Database, session_id: str) -> None:
    """Inside a write transaction: refuse if another holder has the session (its lease was taken over)."""
    row = db.execute("SELECT pid, token FROM session_leases WHERE session_id = ?", [session_id]).fetchone()
    if row is None:
        return  # nobody holds it: a direct store call (tests, tools)
    with _leases_lock:
        mine = _held.get(row[1])
    if mine is None or mine[0] != threading.get_ident():
        raise _busy(session_id, row[0])


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc, or None where there is no /proc or no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2:].split()  # the name may hold spaces and parentheses
        return fields[0].decode(), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def proc_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def alive(pid: int | None, started: int | None = None) -> bool:
    """Whether a process still runs: its PID exists, is no zombie, and (given its start time) was not reused."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust the PID
    state, start = stat
    if state in ("Z", "X"):
        return False
    return started is None or start == started
