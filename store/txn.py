"""Transactions and ids: the write lock taken up front, savepoints when nested, sortable ids, timestamps."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from datetime import datetime, timezone

from sqlite_utils import Database

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last = [0, 0]  # ms, random part: keeps ids monotonic within a process
_savepoints = itertools.count(1)


@contextlib.contextmanager
def write_txn(db: Database):
    """A write transaction that takes the write lock up front (``BEGIN IMMEDIATE``); nested, a SAVEPOINT.

    sqlite-utils' ``atomic()`` opens a deferred transaction; in WAL mode a deferred transaction that
    reads first and writes later fails at once with "database is locked" when another process wrote
    in between. Taking the lock first makes concurrent writers wait (busy_timeout) instead. Inside
    another transaction it opens a savepoint, as ``atomic()`` does: an inner failure undoes only the
    inner block, and nothing commits before the outermost block does.
    """
    conn = db.conn
    if conn.in_transaction:
        name = f"edge_agent_{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield db
        except BaseException:
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def new_id() -> str:
    """A ULID-style id: 48-bit ms timestamp + 80 random bits, Crockford base32, sortable."""
    with _lock:
        ms = int(time.time() * 1000)
        if ms <= _last[0]:
            ms, rand = _last[0], _last[1] + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last[0], _last[1] = ms, rand
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    out = []
    for _ in range(26):
        out.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
