"""Bad input: exit code 2, one line that says what to do, no traceback, the database intact."""

import hashlib
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
    """A database holding one finished session, so 'intact' means something."""
    proc = run_cli("solve", ROBE, "--max-steps", "1", "--max-step-tokens", "8", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path / "edge.db"


def _cases(tmp_path):
    (tmp_path / "notgguf.gguf").write_text("just text, no magic")
    (tmp_path / "truncated.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "corrupt.db").write_bytes(b"garbage" * 1000)
    long_problem = "How many apples does Sam have if " + "he buys three more apples and " * 60 + "eats one?"
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
    }


NAMES = [
    "empty problem", "whitespace problem", "non-utf8 stdin", "1 MB problem on stdin", "problem over the context",
    "missing model", "non-GGUF model", "truncated GGUF", "unknown preset", "unknown policy", "bad max steps",
    "db is a directory", "db is corrupt", "resume unknown id", "show unknown id", "rollback to a missing step",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input(name, tmp_path, existing_db):
    args, stdin, needle = _cases(tmp_path)[name]
    if "SESSION" in args:
        import sqlite3

        conn = sqlite3.connect(existing_db)
        sid = conn.execute("SELECT id FROM sessions").fetchone()[0]
        conn.close()
        args = [sid if a == "SESSION" else a for a in args]
    watched = [existing_db, tmp_path / "corrupt.db"]
    before = [_digest(p) for p in watched]
    proc = run_cli(*args, input=stdin if stdin is not None else b"")
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err, proc.stdout.decode()[-500:])
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and needle in lines[0], lines[0]
    assert [_digest(p) for p in watched] == before
