"""Issue 26, the smaller ones: a missing optional package, a damaged database row, a 100 kB --policy and a hub
that names no commit hash. Each is one line that says what is wrong and what to do, exit 2, no traceback,
and the database (or the models dir) as it was."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.test_bad_input import _digest
from tests.conftest import ROBE, run_cli
from tests.hub_server import HubFile
from tests.test_models_pull import BLOB, cache, hub, nothing_installed, one_line_refusal  # noqa: F401 (fixtures)


def one_line(proc, *needles: str) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == 2, (proc.returncode, err, proc.stdout.decode()[-500:])
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- a. bench without matplotlib (or math-verify) ------------------------------------------------------------


def _unimportable(tmp_path, *names: str) -> dict[str, str]:
    """An environment in which importing each of ``names`` raises ImportError (a package that refuses to load)."""
    shadow = tmp_path / "shadow"
    for name in names:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('no {name} here (test)')\n")
    import os

    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}


def _bench_args(tmp_path, *extra: str) -> list[str]:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} plus {i}?", "answer": str(2 * i)})
                            + "\n" for i in (2, 3)))
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(["2 plus 2 is 4. The answer is \\boxed{4}."]))
    return ["bench", "--dataset", str(data), "--policies", "local-only", "--model", f"script:{script}",
            "--out", str(tmp_path / "out"), "--max-steps", "2", *extra]


def test_bench_without_matplotlib_prints_the_table_and_skips_the_plot(tmp_path):
    env = _unimportable(tmp_path, "matplotlib")
    proc = run_cli(*_bench_args(tmp_path), env=env)
    err, out = proc.stderr.decode(), proc.stdout.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "matplotlib" in line] == [
        "note: no plot: matplotlib is not installed (pip install matplotlib, or edge-agent[bench])"]
    assert "local-only" in out and "results.json" in out and ".png" not in out  # the table, the files written
    assert (tmp_path / "out" / "results.csv").stat().st_size > 0
    assert not (tmp_path / "out" / "accuracy_vs_cloud_tokens.png").exists()
    again = run_cli(*_bench_args(tmp_path, "--resume", "--json"), env=env)
    assert again.returncode == 0, again.stderr.decode()
    report = json.loads(again.stdout)  # stdout is the JSON alone
    assert report["summary"][0]["n"] == 2 and "png" not in report["files"]


def test_bench_without_math_verify_stops_before_solving_anything(tmp_path):
    proc = run_cli(*_bench_args(tmp_path), env=_unimportable(tmp_path, "math_verify"))
    one_line(proc, "math-verify", "pip install")
    assert not (tmp_path / "out" / "results.jsonl").exists()
    db = tmp_path / "out" / "bench.db"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


# -- c. a 100 kB --policy is not echoed back ----------------------------------------------------------------


BIG = "x" * 100_000


@pytest.mark.parametrize("policy, needle", [
    (BIG, "is not a policy name"),
    ("trim-thr(tau=0.5" + BIG, "write parameters as NAME(key=value,...)"),
    ("trim-thr(tau=" + "9" * 100_000 + ")", "parameter tau takes a finite number"),
    ("trim-thr(tau=abc" + BIG + ")", "parameter tau takes a number"),
    ("trim-thr(" + BIG + ")", "must be key=value"),
    ("trim-thr(" + BIG + "=1)", "is not a parameter name"),
    ("trim-learned(model=" + BIG + ")", "at most 1024 characters"),
])
def test_a_huge_policy_is_echoed_as_a_short_prefix(tmp_path, policy, needle):
    script = tmp_path / "one.json"
    script.write_text('["1 + 1 = 2."]')
    line = one_line(run_cli("solve", ROBE, "--model", f"script:{script}", "--policy", policy), needle)
    assert len(line) < 400 and "characters)" in line, line  # a prefix, and how long the whole was


# -- d. a hub commit that is not a commit hash -------------------------------------------------------------


@pytest.mark.parametrize("commit", ["main", "../../../../etc", "0123456789abcdef0123456789abcdef0123456g", "a" * 41])
def test_a_hub_commit_that_is_not_40_hex_installs_nothing(cache, hub, commit):  # noqa: F811
    server = hub({"org/repo/tiny.gguf": HubFile(BLOB, commit=commit)})
    one_line_refusal(run_cli("models", "pull", "org/repo/tiny.gguf"), "not a 40-hex commit hash",
                     "nothing was installed")
    assert not server.gets("/cdn/")  # refused at the HEAD, nothing downloaded
    nothing_installed(cache, "tiny")


# -- b. a damaged database row ------------------------------------------------------------------------------


@pytest.fixture
def two_sessions(tmp_path):
    """A database with two finished sessions (scripted model), each with a trigger event: (db path, good id, bad id)."""
    script = tmp_path / "two.json"
    script.write_text(json.dumps(["Half of 2 is 1.", "So 2 + 1 = 3, and the answer is \\boxed{3}."]))
    ids = []
    for _ in range(2):
        proc = run_cli("solve", ROBE, "--model", f"script:{script}", "--max-steps", "2", "--json")
        assert proc.returncode == 0, proc.stderr.decode()
        ids.append(json.loads(proc.stdout)["session_id"])
    db = tmp_path / "edge.db"
    conn = sqlite3.connect(db)
    for n, sid in enumerate(ids):  # a recorded decision on step 0 of each, as a policy writes it
        conn.execute("INSERT INTO trigger_events (id, session_id, step_idx, trigger, action, score, threshold, detail,"
                     " created_at) VALUES (?, ?, 0, 'step_score', 'accept', 0.5, 0.4, '{\"why\": 1}', 'now')",
                     [f"EV{n}", sid])
    conn.commit()
    conn.close()
    return db, ids[0], ids[1]


def _damage(db, sql: str, *args) -> str:
    conn = sqlite3.connect(db)
    cur = conn.execute(sql, args)
    assert cur.rowcount == 1
    conn.commit()
    conn.close()
    return _digest(db)


DAMAGE = {  # name -> (UPDATE ... WHERE (the damaged session), the table and column the line must name)
    "steps.token_ids not JSON": ("UPDATE steps SET token_ids = '[1, 2' WHERE session_id = ? AND idx = 0",
                                 "steps", "token_ids"),
    "steps.token_ids not ids": ("UPDATE steps SET token_ids = '[1, \"a\"]' WHERE session_id = ? AND idx = 1",
                                "steps", "token_ids"),
    "steps.signals bit-rotted": ("UPDATE steps SET signals = x'ff00fe' WHERE session_id = ? AND idx = 0",
                                 "steps", "signals"),
    "steps.signals a list": ("UPDATE steps SET signals = '[0.5]' WHERE session_id = ? AND idx = 0", "steps", "signals"),
    "trigger_events.detail not JSON": ("UPDATE trigger_events SET detail = 'why: 1' WHERE session_id = ?",
                                       "trigger_events", "detail"),
    "sessions.settings not JSON": ("UPDATE sessions SET settings = '{max_steps: 2' WHERE id = ?", "sessions",
                                   "settings"),
    "sessions.settings a number": ("UPDATE sessions SET settings = 7 WHERE id = ?", "sessions", "settings"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_row_is_named_by_show_resume_and_rollback(two_sessions, name):
    db, good, bad = two_sessions
    sql, table, column = DAMAGE[name]
    before = _damage(db, sql, bad)
    commands = [["show", bad], ["show", bad, "--json", "--all", "-v"]]
    if table != "trigger_events":  # an event's detail is only shown: continuing a session does not read it
        commands += [["resume", bad], ["rollback", bad, "--to", "0"]]
    for args in commands:
        line = one_line(run_cli(*args), f"damaged database row: {table} ", f"column {column}", "sqlite3")
        assert bad in line or table == "trigger_events", line  # named by its id (a step's by its session too)
    assert _digest(db) == before  # nothing was written
    assert run_cli("show", good).returncode == 0  # the other session is untouched
    listed = run_cli("sessions", "--json")
    assert listed.returncode == 0 and {r["id"] for r in json.loads(listed.stdout)} == {good, bad}


def test_a_damaged_superseded_step_is_named_by_show(two_sessions):
    db, _, bad = two_sessions
    assert run_cli("rollback", bad, "--to", "1", "--no-continue").returncode == 0
    _damage(db, "UPDATE steps SET signals = 'nan nan' WHERE session_id = ? AND superseded_by IS NOT NULL", bad)
    one_line(run_cli("show", bad, "--all", "-v"), "damaged database row: steps", "column signals")


def test_serve_lists_the_other_sessions_and_marks_the_damaged_one(two_sessions):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import store
    from edge_agent import trace_page

    db, good, bad = two_sessions
    _damage(db, DAMAGE["steps.signals bit-rotted"][0], bad)
    app = FastAPI()
    trace_page.register(app, None, lambda: store.open_db(str(db), create=False))
    client = TestClient(app)
    index = client.get("/")
    assert index.status_code == 200, index.text
    assert f'data-session="{good}"' in index.text and f'<tr class="session damaged" data-session="{bad}">' in index.text
    assert "column signals" in index.text
    page = client.get(f"/sessions/{bad}")
    assert page.status_code == 500 and "damaged database row: steps" in page.text and "column signals" in page.text
    assert client.get(f"/sessions/{good}").status_code == 200


@pytest.mark.parametrize("column, value", [("token_ids", "rot"), ("signals", "[0.5]"), ("text", None),
                                           ("seconds", "slow")])
def test_a_damaged_step_cache_entry_is_a_miss_computed_again(tmp_path, column, value):
    """Issue 32, item 15: the cache is only a cache: a damaged entry is recomputed and replaced, in one line."""
    script = tmp_path / "two.json"
    script.write_text(json.dumps(["Half of 2 is 1.", "So 2 + 1 = 3, and the answer is \\boxed{3}."]))
    args = ["solve", ROBE, "--model", f"script:{script}", "--max-steps", "2", "--step-cache", "--json"]
    assert run_cli(*args).returncode == 0
    db = tmp_path / "edge.db"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM step_cache").fetchone()[0] == 2
    conn.execute(f"UPDATE step_cache SET {column} = ?", [value])  # both entries
    conn.commit()
    proc = run_cli(*args)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert json.loads(proc.stdout)["answer"] == "3"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "step_cache" in lines[0] and f"column {column}" in lines[0], err
    assert "computed again" in lines[0] and "DELETE" not in lines[0] and "sqlite3" not in lines[0]
    rows = conn.execute("SELECT token_ids, signals, text, seconds FROM step_cache").fetchall()
    assert len(rows) == 2 and all(json.loads(t) and json.loads(s) and isinstance(x, str) and isinstance(sec, float)
                                  for t, s, x, sec in rows)  # replaced by the recomputed steps
    conn.close()
    again = run_cli(*args)
    assert again.returncode == 0 and again.stderr.decode().strip() == ""  # now a clean hit


def _atlas(tmp_path):
    """A hand-made atlas of two problems (what 'atlas build' writes, without building one)."""
    import store

    out = tmp_path / "atlas"
    out.mkdir()
    db = store.open_db(str(out / "bench.db"))
    for n, correct in (("p1", 0), ("p2", 1)):
        store.put_atlas_problem(db, {"id": n, "problem": "1+1?", "answer": "2", "trace_session": None,
                                     "status": "done", "predicted": "2", "correct": correct, "steps": 1})
        for kind in ("step", "cloud_only"):
            store.put_atlas_branch(db, {"problem_id": n, "kind": kind, "k": 0, "session_id": None, "status": "done",
                                        "predicted": "2", "correct": 1, "cloud_in": 10, "cloud_out": 20,
                                        "local_tokens": 5, "seconds": 1.0, "cloud_steps": 1})
    db.close()
    return out


@pytest.mark.parametrize("sql, table, column", [
    ("UPDATE atlas_branches SET correct = 'yes' WHERE problem_id = 'p2' AND kind = 'step'", "atlas_branches",
     "correct"),
    ("UPDATE atlas_problems SET steps = NULL WHERE id = 'p1'", "atlas_problems", "steps"),
    ("UPDATE atlas_problems SET correct = 2 WHERE id = 'p2'", "atlas_problems", "correct"),
])
def test_a_damaged_atlas_row_is_named_by_the_report(tmp_path, sql, table, column):
    out = _atlas(tmp_path)
    ok = run_cli("atlas", "report", str(out), "--json")
    assert ok.returncode == 0, ok.stderr.decode()
    assert json.loads(ok.stdout)["n"] == 2
    before = _damage(out / "bench.db", sql)
    one_line(run_cli("atlas", "report", str(out)), f"damaged database row: {table} ", f"column {column}",
             "atlas build")
    assert _digest(out / "bench.db") == before


# -- issue 32, item 11: damaged sample rows (solve --samples) -----------------------------------------------


@pytest.fixture
def sampled(tmp_path):
    """A finished parent with two samples (scripted model), and a plain session beside them:
    (db path, parent id, sample 1's id, the plain session's id)."""
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"steps": ["Blue takes 2 bolts.", "In all \\boxed{3}."],
                                  "when": [{"seed": 1, "steps": ["So \\boxed{4}."]},
                                           {"seed": 2, "steps": ["It is \\boxed{3}."]}]}))
    proc = run_cli("solve", ROBE, "--model", f"script:{script}", "--samples", "3", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    plain = run_cli("solve", ROBE, "--model", f"script:{script}", "--json")
    assert plain.returncode == 0, plain.stderr.decode()
    sample1 = report["samples"]["sessions"][1]["session_id"]
    return tmp_path / "edge.db", report["session_id"], sample1, json.loads(plain.stdout)["session_id"]


SAMPLE_DAMAGE = {  # name -> (UPDATE of the row, whose row it is: "parent" or "sample", what the line says)
    "a sample's settings not JSON": ("UPDATE sessions SET settings = '{sample: 1' WHERE id = ?", "sample",
                                     "is not JSON"),
    "a sample's settings a list": ("UPDATE sessions SET settings = '[1]' WHERE id = ?", "sample", "not a JSON object"),
    "samples a list": ("UPDATE sessions SET settings = json_set(settings, '$.samples', json('[3, 0.7]')) WHERE id = ?",
                       "parent", "holds samples"),
    "samples.n a string": ("UPDATE sessions SET settings = json_set(settings, '$.samples.n', '3') WHERE id = ?",
                           "parent", "samples.n"),
    "samples.temperature a string": ("UPDATE sessions SET settings = json_set(settings, '$.samples.temperature', "
                                     "'hot') WHERE id = ?", "parent", "samples.temperature"),
    "samples.n 10^9": ("UPDATE sessions SET settings = json_set(settings, '$.samples.n', 1000000000) WHERE id = ?",
                       "parent", "samples.n"),
    "a sample index stored as '1'": ("UPDATE sessions SET settings = json_set(settings, '$.sample', '1') WHERE id = ?",
                                     "sample", "sample index"),
}


@pytest.mark.parametrize("name", list(SAMPLE_DAMAGE))
def test_a_damaged_sample_row_is_named_by_show_and_resume(sampled, name):
    db, parent, sample1, plain = sampled
    sql, whose, needle = SAMPLE_DAMAGE[name]
    named = parent if whose == "parent" else sample1
    before = _damage(db, sql, named)
    for args in (["show", parent], ["show", parent, "--json"], ["resume", parent]):
        line = one_line(run_cli(*args, timeout=60), "damaged database row: sessions ", "column settings", needle)
        assert named in line, line
    assert _digest(db) == before  # nothing was written: no second sample 1, no lease
    assert run_cli("show", plain).returncode == 0  # the other session is untouched
    listed = run_cli("sessions", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 4
