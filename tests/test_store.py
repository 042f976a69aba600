import hashlib
import os
import sqlite3
import stat

import pytest

import store
from edge_agent.errors import SessionError, StoreError
from edge_agent.values import Signals, Step, TriggerEvent


def _step(i, text="step", toks=(1, 2, 3)):
    return Step(
        index=i,
        author="local",
        kind="step",
        text=f"{text} {i}",
        raw=f"{text} {i}\n\n",
        token_ids=tuple(toks),
        signals=Signals(n_tokens=len(toks), mean_entropy=0.5, min_top1=0.25),
        finish="separator",
        seconds=0.1,
    )


def test_new_db_is_private_wal_and_migrated(tmp_path):
    path = tmp_path / "sub" / "a.db"
    db = store.open_db(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"sessions", "steps", "trigger_events", "cloud_calls", "rollbacks"} <= set(db.table_names())
    applied = [r["name"] for r in db["_sqlite_migrations"].rows]
    db.close()
    db2 = store.open_db(path)  # reopening applies nothing twice
    assert [r["name"] for r in db2["_sqlite_migrations"].rows] == applied
    db2.close()


def test_ids_sort_by_creation():
    ids = [store.new_id() for _ in range(500)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 500
    assert all(len(i) == 26 for i in ids)


def test_commit_and_load_state_round_trip(db):
    sid = store.new_session(db, problem="p", model="m", model_path="/m.gguf", policy="local-only", settings={"max_steps": 4})
    ev = TriggerEvent("loop", True, score=0.97, threshold=0.92, detail={"with": 1})
    for i in range(3):
        store.commit_step(db, sid, _step(i, toks=(i, i + 1)), evaluated=2, events=[(ev, "accept")] if i == 2 else [])
    store.set_status(db, sid, "done", "3")
    state = store.load_state(db, sid)
    assert [s.text for s in state.steps] == ["step 0", "step 1", "step 2"]
    assert [s.token_ids for s in state.steps] == [(0, 1), (1, 2), (2, 3)]
    assert state.steps[0].signals == Signals(n_tokens=2, mean_entropy=0.5, min_top1=0.25).to_dict()  # stored as data
    assert state.steps[0].raw == "step 0\n\n"
    assert (state.status, state.answer, state.settings) == ("done", "3", {"max_steps": 4})
    [e] = store.events(db, sid)
    assert (e["trigger"], e["action"], e["score"], e["threshold"], e["step_idx"]) == ("loop", "accept", 0.97, 0.92, 2)


def test_failed_step_transaction_leaves_nothing(db):
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="local-only", settings={})
    store.commit_step(db, sid, _step(0))
    bad = TriggerEvent("loop", True, detail={"x": object()})  # not JSON-serializable: fails mid-transaction
    with pytest.raises(TypeError):
        store.commit_step(db, sid, _step(1), events=[(bad, "accept")])
    assert [s.index for s in store.load_state(db, sid).steps] == [0]


def test_rollback_supersedes_but_never_deletes(db):
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="local-only", settings={})
    for i in range(4):
        store.commit_step(db, sid, _step(i))
    store.set_status(db, sid, "done", "1")
    rid = store.rollback_to(db, sid, 2)
    state = store.load_state(db, sid)
    assert [s.index for s in state.steps] == [0, 1]
    assert state.status == "running" and state.answer is None
    every = store.load_steps(db, sid, include_superseded=True)
    assert len(every) == 4
    assert [r["superseded_by"] for r in every] == [None, None, rid, rid]
    assert db["rollbacks"].get(rid)["superseded"] == 2
    with pytest.raises(SessionError, match="cannot roll back to step 5"):
        store.rollback_to(db, sid, 5)


def test_resolve_id_prefix(db):
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="local-only", settings={})
    assert store.resolve_id(db, sid[:20].lower()) == sid
    with pytest.raises(SessionError, match="no session"):
        store.resolve_id(db, "ZZZZ")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_file_is_refused_untouched(tmp_path):
    path = tmp_path / "bad.db"
    path.write_bytes(b"this is not a database" * 100)
    before = _digest(path)
    with pytest.raises(StoreError, match="not SQLite"):
        store.open_db(path)
    assert _digest(path) == before


def test_directory_is_refused(tmp_path):
    with pytest.raises(StoreError, match="is a directory"):
        store.open_db(tmp_path)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    store.open_db(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('edge-agent', 'm999_future', 'x')"
    )
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer edge-agent"):
        store.open_db(path)


def test_open_without_create_does_not_create(tmp_path):
    with pytest.raises(StoreError, match="no database"):
        store.open_db(tmp_path / "none.db", create=False)
    assert not (tmp_path / "none.db").exists()


def test_a_nested_write_transaction_joins_the_outer_one(db):
    from store.repo import write_txn

    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="local-only", settings={})
    with pytest.raises(RuntimeError):
        with write_txn(db):
            db["sessions"].update(sid, {"status": "ended"})
            with write_txn(db):
                db["sessions"].update(sid, {"answer": "4"})
            raise RuntimeError("the outer transaction fails after the inner one")
    assert (store.load_state(db, sid).status, store.load_state(db, sid).answer) == ("running", None)
    with write_txn(db):
        with write_txn(db):
            db["sessions"].update(sid, {"answer": "5"})
    assert store.load_state(db, sid).answer == "5" and not db.conn.in_transaction


def test_a_failed_inner_write_transaction_undoes_only_itself(db):
    """Nested ``write_txn`` is a SAVEPOINT: the outer block goes on and commits its own writes."""
    from store.repo import write_txn

    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="local-only", settings={})
    with write_txn(db):
        db["sessions"].update(sid, {"status": "ended"})
        with pytest.raises(RuntimeError):
            with write_txn(db):
                db["sessions"].update(sid, {"answer": "4"})
                raise RuntimeError("the inner block fails")
        assert db.conn.in_transaction  # the outer transaction is still open
        with write_txn(db):
            with write_txn(db):
                db["sessions"].update(sid, {"updated_at": "later"})
    state = store.load_state(db, sid)
    assert (state.status, state.answer) == ("ended", None) and not db.conn.in_transaction
    assert db.execute("SELECT updated_at FROM sessions WHERE id = ?", [sid]).fetchone()[0] == "later"


def test_opening_the_database_again_in_one_process_keeps_sqlites_locks(tmp_path):
    """A second open_db in a process (serve's trace pages) must not drop the locks of its open connections:
    else another process's close checkpoints and deletes the -wal under them, and later commits vanish."""
    import subprocess
    import sys

    import store
    from store import open_db

    path = tmp_path / "shared.db"
    writer = open_db(path)
    store.new_session(writer, problem="a", model="m", model_path="x", policy="p", settings={})
    reader = open_db(path)  # what a trace page does while the worker's connection is open
    reader.close()
    other = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('select count(*) from sessions'); c.close()"
    subprocess.run([sys.executable, "-c", other, str(path)], check=True, timeout=60)
    store.new_session(writer, problem="b", model="m", model_path="x", policy="p", settings={})
    count = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from sessions').fetchone()[0])"
    seen = subprocess.run([sys.executable, "-c", count, str(path)], capture_output=True, check=True, timeout=60)
    assert seen.stdout.decode().strip() == "2"
    writer.close()
