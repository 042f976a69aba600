"""solve --samples N: self-consistency over N linked sessions, the vote, resume after a kill (scripted model)."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edge_agent.answer import canonical
from edge_agent.samples import read_samples, vote
from tests.conftest import ROBE, run_cli

GREEDY = ["Blue takes 2 bolts.", "White takes 1 bolt.", "In all \\boxed{3}."]


def _script(tmp_path, cases, steps=GREEDY, name="s.json"):
    """A scripted model: ``steps`` for the greedy session (seed 0), ``cases[seed]`` for the sample with that seed."""
    path = tmp_path / name
    path.write_text(json.dumps({"steps": steps, "when": [{"seed": s, "steps": v} for s, v in cases.items()]}))
    return f"script:{path}"


def _json(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def _sessions(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT id, parent_id, status, answer, agreement, vote_answer FROM sessions"
                            " ORDER BY id").fetchall()
    finally:
        conn.close()


def test_canonical_numbers_agree():
    assert canonical("3") == canonical("3.0") == canonical("\\boxed{3}") == canonical("$3$") == canonical("3 bolts")
    assert canonical("\\frac{1}{2}") == canonical("0.5") == canonical("1/2")
    assert canonical("1,000") == canonical("1000") and canonical("x = 7") == "7"
    assert canonical("3") != canonical("4") and canonical("(A)") == canonical("(a)")


def test_vote_majority_and_ties_go_to_greedy():
    assert (vote(["3", "4", "4", "3"]).winner, vote(["3", "4", "4", "3"]).votes) == ("3", 2)  # tie: greedy's
    assert vote(["3", "4", "4"]).winner == "4" and vote(["3", "4", "4"]).agreement == pytest.approx(2 / 3, abs=1e-6)
    assert vote(["3.0", "\\boxed{3}", "4", "3"]).winner == "3.0"  # written as the greedy wrote it
    assert vote([None, "5", "4", "4", "5"]).winner == "5"  # no greedy vote: the earliest of the tied
    empty = vote([None, None])
    assert (empty.winner, empty.votes, empty.agreement) == (None, 0, 0.0)


@pytest.mark.parametrize("batch", ["off", "on"])  # one after another, or together (the batch's seam, scripted)
def test_samples_vote_with_a_tie_goes_to_the_greedy_answer(tmp_path, batch):
    db = tmp_path / "edge.db"
    model = _script(tmp_path, {1: ["So \\boxed{4}."], 2: ["The answer is 4.0"], 3: ["It is \\boxed{3.0}"]})
    report = _json(run_cli("solve", ROBE, "--json", "--model", model, "--samples", "4", "--batch", batch))
    s = report["samples"]
    assert s["answers"] == ["3", "4", "4.0", "3.0"] and s["votes"] == 2 and s["complete"]
    assert report["answer"] == s["winner"] == "3" and s["greedy_answer"] == "3"  # 2 vs 2: the greedy wins
    assert s["agreement"] == 0.5
    every = sqlite3.connect(db).execute("SELECT SUM(tokens) FROM steps").fetchone()[0]
    assert s["total"]["local_tokens"] == every > sum(x["tokens"] for x in report["steps"])  # all 4 sessions
    assert [x["seed"] for x in s["sessions"]] == [0, 1, 2, 3]  # distinct seeds
    assert [x["temperature"] for x in s["sessions"]] == [0.0, 0.7, 0.7, 0.7]
    rows = _sessions(db)
    parent = report["session_id"]
    assert len(rows) == 4 and sum(1 for r in rows if r[1] == parent) == 3
    assert [r for r in rows if r[0] == parent][0][4:] == (0.5, "3")  # agreement and winner stored on the parent

    shown = run_cli("show", parent)  # the parent shows its samples and the vote
    out = shown.stdout.decode()
    assert shown.returncode == 0 and "solutions (self-consistency)" in out and "vote: 3 · 2/4 agree (0.50)" in out
    child = s["sessions"][1]["session_id"]
    assert json.loads(run_cli("show", child, "--json").stdout)["sample_of"] == {"session_id": parent, "index": 1}


def test_a_sample_that_never_answers_casts_no_vote(tmp_path):
    model = _script(tmp_path, {1: ["Hmm.", "Still thinking.", "More.", "Again."], 2: ["So \\boxed{4}."]})
    report = _json(run_cli("solve", ROBE, "--json", "--model", model, "--samples", "3", "--max-steps", "3"))
    s = report["samples"]
    assert [x["status"] for x in s["sessions"]] == ["done", "max_steps", "done"]
    assert s["answers"] == ["3", None, "4"]
    assert report["answer"] == "3" and s["votes"] == 1 and s["agreement"] == pytest.approx(1 / 3, abs=1e-6)


def test_one_sample_is_a_plain_solve(tmp_path):
    model = _script(tmp_path, {1: ["So \\boxed{4}."]})
    plain = _json(run_cli("solve", ROBE, "--json", "--model", model, "--db", str(tmp_path / "a.db")))
    one = _json(run_cli("solve", ROBE, "--json", "--model", model, "--samples", "1", "--db", str(tmp_path / "b.db")))
    assert one["answer"] == plain["answer"] == "3"
    assert [(x["index"], x["text"], x["tokens"]) for x in one["steps"]] == [
        (x["index"], x["text"], x["tokens"]) for x in plain["steps"]]
    assert "samples" not in one and len(_sessions(tmp_path / "b.db")) == 1


@pytest.mark.parametrize("batch", ["off", "on"])
def test_samples_reuse_the_prompt_kv_on_one_model(tmp_path, batch):
    model = _script(tmp_path, {1: ["So \\boxed{4}."], 2: ["So \\boxed{3}."]})
    report = _json(run_cli("solve", ROBE, "--json", "--model", model, "--samples", "3", "--batch", batch))
    conn = sqlite3.connect(tmp_path / "edge.db")
    first = {sid: conn.execute("SELECT tokens, evaluated FROM steps WHERE session_id = ? AND idx = 0", [sid]).fetchone()
             for sid in (x["session_id"] for x in report["samples"]["sessions"])}
    greedy = first.pop(report["session_id"])
    assert greedy[1] > greedy[0]  # the parent evaluated the prompt
    assert all(evaluated == tokens for tokens, evaluated in first.values())  # the samples did not


def test_config_sets_samples_and_bad_values_are_one_line(tmp_path):
    model = _script(tmp_path, {1: ["So \\boxed{4}."], 2: ["So \\boxed{4}."]})
    for bad in (["--samples", "0"], ["--samples", "-1"], ["--samples", str(10**20)], ["--samples", "65"],
                ["--samples", "3", "--sample-temperature", "0"], ["--samples", "3", "--sample-temperature", "9"]):
        proc = run_cli("solve", ROBE, "--model", model, *bad)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2 and len(err.splitlines()) == 1 and "--sample" in err, (bad, err)
    assert not (tmp_path / "edge.db").exists()  # refused before the database is touched
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[solve]\nsamples = 3\nsample_temperature = 0.5\n")
    report = _json(run_cli("solve", ROBE, "--json", "--model", model, env={"EDGE_AGENT_CONFIG": str(cfg)}))
    assert report["samples"]["n"] == 3 and report["samples"]["temperature"] == 0.5 and report["answer"] == "4"
    cfg.write_text("[solve]\nsamples = 0\n")
    proc = run_cli("solve", ROBE, "--model", model, env={"EDGE_AGENT_CONFIG": str(cfg)})
    assert proc.returncode == 2 and "solve.samples must be an integer from 1 to 64" in proc.stderr.decode()


def _parent(db):
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        row = conn.execute("SELECT id FROM sessions WHERE parent_id IS NULL").fetchone()
        conn.close()
        return row and row[0]
    except sqlite3.Error:  # not created or not migrated yet
        return None


def _finished_samples(db, parent):
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        rows = conn.execute("SELECT id FROM sessions WHERE parent_id = ? AND status IN ('done', 'max_steps', 'ended')"
                            " ORDER BY id", [parent]).fetchall()
        conn.close()
        return [r[0] for r in rows]
    except sqlite3.Error:
        return []


def _steps_of(db, sids):
    conn = sqlite3.connect(db)
    rows = conn.execute(f"SELECT session_id, id, idx, text FROM steps WHERE session_id IN ({','.join('?' * len(sids))})"
                        " ORDER BY id", sids).fetchall()
    conn.close()
    return rows


def test_kill_9_between_samples_then_resume_runs_only_the_rest(tmp_path):
    db = tmp_path / "edge.db"
    # the samples run together (one batch): samples 1 and 2 finish in a second, 3 and 4 take much longer
    delay = {1: 0.4, 2: 0.4, 3: 4.0, 4: 4.0}
    cases = {i: [{"text": f"Sample {i} looks.", "delay_s": delay[i]},
                 {"text": f"So \\boxed{{{3 + i % 2}}}.", "delay_s": delay[i]}] for i in range(1, 5)}
    model = _script(tmp_path, cases)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "solve", ROBE, "--json", "--model", model,
                             "--samples", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, parent, done = time.time() + 60, None, []
    while time.time() < deadline and len(done) < 2:  # kill once 2 sample sessions are committed and finished
        parent = parent or _parent(db)
        done = _finished_samples(db, parent) if parent else []
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the solve finished before it could be killed"
    before = _steps_of(db, done)
    assert len(done) == 2 and len(before) == 4

    resumed = _json(run_cli("resume", parent, "--json"))
    s = resumed["samples"]
    assert s["complete"] and [x["status"] for x in s["sessions"]] == ["done"] * 5
    assert s["answers"] == ["3", "4", "3", "4", "3"] and resumed["answer"] == "3" and s["agreement"] == 0.6
    assert [x["session_id"] for x in s["sessions"][1:3]] == done  # the finished samples were kept, not redone
    assert _steps_of(db, done) == before  # verbatim: same step ids and text
    rows = _sessions(db)
    assert len(rows) == 5 and sum(1 for r in rows if r[1] == parent) == 4  # no sample created twice
    again = run_cli("resume", parent)
    assert again.returncode == 2 and "already finished" in again.stderr.decode()


def test_read_samples_is_what_a_policy_reads(tmp_path, db):
    """``read_samples`` on a stored parent: answers, winner and agreement as a dataclass (None for a plain session)."""
    import store

    parent = store.new_session(db, problem="p", model="m", model_path="m", policy="local-only",
                               settings={"seed": 0, "samples": {"n": 3, "temperature": 0.7}})
    store.set_status(db, parent, "done", "7")
    child = store.new_session(db, problem="p", model="m", model_path="m", policy="local-only",
                              settings={"seed": 1, "sample": 1}, parent_id=parent)
    store.set_status(db, child, "done", "7.0")
    s = read_samples(db, parent)
    assert s.answers == ("7", "7.0", None) and s.winner == "7" and s.agreement == pytest.approx(2 / 3, abs=1e-6)
    assert not s.complete and s.samples[2].session_id is None
    plain = store.new_session(db, problem="p", model="m", model_path="m", policy="local-only", settings={})
    assert read_samples(db, plain) is None


def test_a_database_from_before_samples_is_upgraded(tmp_path):
    """m007 adds the sample columns to an existing database; its sessions read as plain ones."""
    from sqlite_utils import Database

    import store
    from store.db import migrations

    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m007_samples")
    sid = store.new_session(old, problem="p", model="m", model_path="m", policy="local-only", settings={})
    old.close()
    db = store.open_db(path)
    assert {"parent_id", "vote_answer", "agreement"} <= set(db["sessions"].columns_dict)
    assert read_samples(db, sid) is None and store.sample_links(db, sid)["parent_id"] is None
    db.close()


def test_real_model_samples_share_the_prompt_kv(tmp_path):
    """On llama.cpp (the embedded SmolLM2): a sample's first step evaluates its own tokens, not the prompt again."""
    report = _json(run_cli("solve", ROBE, "--json", "--samples", "2", "--max-steps", "1", "--max-step-tokens", "16"))
    s = report["samples"]
    assert all(x["status"] in {"done", "max_steps", "ended"} for x in s["sessions"]) and s["sessions"][1]["seed"] == 1
    conn = sqlite3.connect(tmp_path / "edge.db")
    (gt, ge), (st, se) = [conn.execute("SELECT tokens, evaluated FROM steps WHERE session_id = ? AND idx = 0",
                                       [x["session_id"]]).fetchone() for x in s["sessions"]]
    assert ge > gt + 20  # the greedy run evaluated the prompt
    assert se <= st + 1  # the sample kept it (the last prompt token is re-run for fresh logits)


def test_batch_mode_is_checked_stored_and_kept_by_resume(tmp_path):
    model = _script(tmp_path, {1: ["So \\boxed{4}."]})
    proc = run_cli("solve", ROBE, "--model", model, "--samples", "2", "--batch", "sometimes")
    assert proc.returncode == 2 and len(proc.stderr.decode().strip().splitlines()) == 1
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[solve]\nbatch = "always"\n')
    proc = run_cli("solve", ROBE, "--model", model, "--samples", "2", env={"EDGE_AGENT_CONFIG": str(cfg)})
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "solve.batch must be auto, on or off" in err, err
    assert not (tmp_path / "edge.db").exists()
    cfg.write_text('[solve]\nbatch = "on"\n')
    report = _json(run_cli("solve", ROBE, "--json", "--model", model, "--samples", "2",
                           env={"EDGE_AGENT_CONFIG": str(cfg)}))
    conn = sqlite3.connect(tmp_path / "edge.db")
    settings = json.loads(conn.execute("SELECT settings FROM sessions WHERE id = ?", [report["session_id"]]).fetchone()[0])
    conn.close()
    assert settings["samples"] == {"n": 2, "temperature": 0.7, "batch": "on"}  # what resume reads back
