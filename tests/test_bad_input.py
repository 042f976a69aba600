"""Bad input: exit code 2, one line that says what to do, no traceback, the database intact."""

import hashlib
import os

import pytest

from tests.conftest import ROBE, run_cli


def _digest(path):
    if not path.exists():
        return None
    h = hashlib.sha256()
    for p in sorted(path.parent.glob(path.name + "*")):  # include -wal / -shm
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def existing_db(tmp_path):
    """A database holding one finished session, so 'intact' means something (written by a scripted model)."""
    script = tmp_path / "one.json"
    script.write_text('["Half of 2 is 1, so 2 + 1 = 3."]')
    proc = run_cli("solve", ROBE, "--model", f"script:{script}", "--max-steps", "1", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path / "edge.db"


def _cases(tmp_path):
    (tmp_path / "notgguf.gguf").write_text("just text, no magic")
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "corrupt.db").write_bytes(b"garbage" * 1000)
    long_problem = "How many apples does Sam have if " + "he buys three more apples and " * 60 + "eats one?"
    (tmp_path / "bad.toml").write_text("[cloud\nprovider = ")
    (tmp_path / "unknown.toml").write_text("[budget]\nmax_cost_week = 1.0\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"id": "1", "problem": "caf\u00e9 2+2", "answer": "4"}\n'.encode("latin-1"))
    (tmp_path / "array.jsonl").write_text('["1", "2+2", "4"]\n')
    os.mkfifo(tmp_path / "model.fifo")
    bad = os.fsdecode(b"caf\xe9 \xff")  # bytes that are not UTF-8, as the shell passes them
    return {
        "empty problem": (["solve", ""], None, "empty"),
        "whitespace problem": (["solve", "   \n\t "], None, "empty"),
        "non-utf8 stdin": (["solve", "-"], b"\xff\xfe\xfa bad", "UTF-8"),
        "1 MB problem on stdin": (["solve", "-"], b"x" * 1_000_000, "shorten"),
        "problem over the context": (["solve", long_problem, "--n-ctx", "256"], None, "context"),
        "missing model": (["solve", ROBE, "--model", str(tmp_path / "missing.gguf")], None, "not found"),
        "non-GGUF model": (["solve", ROBE, "--model", str(tmp_path / "notgguf.gguf")], None, "not a GGUF"),
        "truncated GGUF": (["solve", ROBE, "--model", str(tmp_path / "truncated.gguf")], None, "cannot load model"),
        "unknown preset": (["solve", ROBE, "--model", "llama-99b"], None, "unknown model preset"),
        "unknown policy": (["solve", ROBE, "--policy", "yolo"], None, "unknown policy"),
        "bad max steps": (["solve", ROBE, "--max-steps", "0"], None, "--max-steps"),
        "db is a directory": (["solve", ROBE, "--db", str(tmp_path / "dir.db")], None, "directory"),
        "db is corrupt": (["solve", ROBE, "--db", str(tmp_path / "corrupt.db")], None, "not SQLite"),
        "resume unknown id": (["resume", "01ZZZZZZZZ"], None, "no session"),
        "show unknown id": (["show", "nope"], None, "no session"),
        "rollback to a missing step": (["rollback", "SESSION", "--to", "99"], None, "cannot roll back"),
        "resume a finished session": (["resume", "SESSION"], None, "already finished"),
        "bad TOML config": (["solve", ROBE], None, "not valid TOML", {"EDGE_AGENT_CONFIG": str(tmp_path / "bad.toml")}),
        "unknown config key": (["solve", ROBE], None, "unknown key budget.max_cost_week",
                               {"EDGE_AGENT_CONFIG": str(tmp_path / "unknown.toml")}),
        "negative max cost": (["solve", ROBE, "--max-cost", "-1"], None, "--max-cost must be >= 0"),
        "unknown provider": (["solve", ROBE, "--cloud", "acme:big"], None, "PROVIDER:MODEL"),
        "missing API key": (["solve", ROBE, "--cloud", "openai:gpt-4o-mini", "--policy", "every-k"], None,
                            "OPENAI_API_KEY", {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}),
        "bad policy parameter": (["solve", ROBE, "--policy", "trim-thr(tau=2)"], None, "tau must be between 0 and 1"),
        "db from a newer version": (["solve", ROBE], None, "newer", "NEWER"),
        "db locked by another writer": (["solve", ROBE], None, "locked", "LOCKED"),
        "db is read-only": (["solve", ROBE], None, "read-only", "READONLY"),
        # the adversarial probe's cases (issue 16)
        "max cost nan": (["solve", ROBE, "--max-cost", "nan"], None, "--max-cost must be >= 0 and finite"),
        "max cost inf": (["solve", ROBE, "--max-cost", "inf"], None, "--max-cost must be >= 0 and finite"),
        "max cost 1e309": (["solve", ROBE, "--max-cost", "1e309"], None, "--max-cost must be >= 0 and finite"),
        "max cost not a number": (["solve", ROBE, "--max-cost", "abc"], None, "'--max-cost': 'abc' is not a valid float"),
        "max steps not a number": (["solve", ROBE, "--max-steps", "many"], None, "'--max-steps'"),
        "unknown option": (["solve", ROBE, "--bogus"], None, "No such option '--bogus'"),
        "missing problem": (["solve"], None, "Missing argument"),
        "unknown command": (["solev", ROBE], None, "No such command"),
        "negative seed": (["solve", ROBE, "--seed", "-1"], None, "--seed must be between 0 and"),
        "price nan": (["solve", ROBE, "--cloud", "openai:m", "--price-in", "nan", "--price-out", "1"], None,
                      "--price-in and --price-out"),
        "policy parameter nan": (["solve", ROBE, "--policy", "hybrid(max_cloud=nan)"], None,
                                 "parameter max_cloud takes a whole number"),
        "policy int given true": (["solve", ROBE, "--policy", "every-k(k=true)"], None, "parameter k takes a whole number"),
        "policy int given 1.5": (["solve", ROBE, "--policy", "every-k(k=1.5)"], None, "parameter k takes a whole number"),
        "router without a model": (["solve", ROBE, "--policy", "router", "--cloud", "openai:m", "--cloud-base-url",
                                    "http://127.0.0.1:9/v1", "--price-in", "1", "--price-out", "1"], None,
                                   "no router model in"),
        "router tau out of range": (["solve", ROBE, "--policy", "router(tau=5)"], None, "tau must be between -1 and 1"),
        "atlas fit on no atlas": (["atlas", "fit", str(tmp_path)], None, "no atlas in"),
        "policy parameter twice": (["solve", ROBE, "--policy", "trim-thr(tau=0.5,tau=0.9)"], None, "given twice"),
        "policy float given a word": (["solve", ROBE, "--policy", "trim-thr(tau=abc)"], None,
                                      "parameter tau takes a number"),
        "huge thread count": (["solve", ROBE], None, "EDGE_AGENT_THREADS must be a whole number from 1 to",
                              {"EDGE_AGENT_THREADS": "99999"}),
        "huge context": (["solve", ROBE, "--n-ctx", "1000000000000"], None, "--n-ctx must be between 256 and"),
        "FIFO as model": (["solve", ROBE, "--model", str(tmp_path / "model.fifo")], None, "not a regular file"),
        "non-utf8 problem argument": (["solve", bad], None, "not valid UTF-8"),
        "non-utf8 session id": (["show", bad], None, "not valid UTF-8"),
        "non-utf8 rollback id": (["rollback", bad, "--to", "0"], None, "not valid UTF-8"),
        "wildcard session id": (["rollback", "%", "--to", "0"], None, "no session"),
        "wildcard show id": (["show", "_"], None, "no session"),
        "non-utf8 dataset": (["bench", "--dataset", str(tmp_path / "latin1.jsonl")], None, "not UTF-8"),
        "dataset line is an array": (["bench", "--dataset", str(tmp_path / "array.jsonl")], None, "array.jsonl:1"),
    }


NAMES = [
    "empty problem", "whitespace problem", "non-utf8 stdin", "1 MB problem on stdin", "problem over the context",
    "missing model", "non-GGUF model", "truncated GGUF", "unknown preset", "unknown policy", "bad max steps",
    "db is a directory", "db is corrupt", "resume unknown id", "show unknown id", "rollback to a missing step",
    "resume a finished session", "bad TOML config", "unknown config key", "negative max cost", "unknown provider",
    "missing API key", "bad policy parameter", "db from a newer version", "db locked by another writer",
    "db is read-only",
    "max cost nan", "max cost inf", "max cost 1e309", "max cost not a number", "max steps not a number",
    "unknown option", "missing problem", "unknown command", "negative seed", "price nan", "policy parameter nan",
    "policy int given true", "policy int given 1.5", "policy parameter twice", "policy float given a word",
    "huge thread count", "huge context", "FIFO as model", "non-utf8 problem argument", "non-utf8 session id",
    "non-utf8 rollback id", "wildcard session id", "wildcard show id", "non-utf8 dataset", "dataset line is an array",
    "router without a model", "router tau out of range", "atlas fit on no atlas",
]


def _make_read_only(path):
    """chmod is enough for a normal user; root ignores it, so as root the file is made immutable."""
    import os
    import subprocess

    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        return lambda: os.chmod(path, 0o644)
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("root without CAP_LINUX_IMMUTABLE cannot make a file read-only")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name, tmp_path, existing_db):
    import sqlite3
    import subprocess
    import sys

    args, stdin, needle, *extra = _cases(tmp_path)[name]
    env = extra[0] if extra and isinstance(extra[0], dict) else None
    if "SESSION" in args:
        conn = sqlite3.connect(existing_db)
        sid = conn.execute("SELECT id FROM sessions").fetchone()[0]
        conn.close()
        args = [sid if a == "SESSION" else a for a in args]
    if extra == ["NEWER"]:
        conn = sqlite3.connect(existing_db)
        conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('edge-agent', 'm999_future', 'x')")
        conn.commit()
        conn.close()
    holder = None
    if extra == ["LOCKED"]:  # another process holds the write lock for longer than the busy timeout
        holder = subprocess.Popen([sys.executable, "-c", (
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); c.execute('INSERT INTO rollbacks (id) VALUES (1)'); print('held', flush=True); time.sleep(60)"),
            str(existing_db)], stdout=subprocess.PIPE)
        assert holder.stdout.readline().strip() == b"held"
    watched = [existing_db, tmp_path / "corrupt.db"]
    undo = _make_read_only(existing_db) if extra == ["READONLY"] else None
    before = [_digest(p) for p in watched]
    try:
        proc = run_cli(*args, input=stdin if stdin is not None else b"", env=env)
    finally:
        if holder:
            holder.kill()
            holder.wait()
        if undo:
            undo()
            for p in existing_db.parent.glob(existing_db.name + "-*"):  # SQLite's empty WAL index of the attempt
                if p.stat().st_size in (0, 32768):
                    p.unlink()
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err, proc.stdout.decode()[-500:])
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and needle in lines[0], lines[0]
    assert [_digest(p) for p in watched] == before
