"""``atlas build --ray`` and ``bench --ray`` on a local Ray with 2 workers, a scripted edge model and a scripted
loopback cloud: the same atlas and bench as one process, a killed driver whose rerun recomputes nothing
finished, a run-wide cap that no pair of workers can spend past, and Ray never imported without --ray."""

import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cli

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed: pip install -e '.[scale]'")
RAY = ("--ray", "auto", "--ray-workers", "2")
WRONG = ["Tom has 2 apples.", "He buys 3 more.", "So 2 + 4 = 6, \\boxed{6}."]
RIGHT = ["Tom has 2 apples.", "He buys 3 more, so 2 + 3 = 5.", "\\boxed{5}"]


def _files(tmp_path, n=4, delay=0.0):
    """``n`` problems; the edge gets the odd ones right and the even ones wrong (so branches fix and break)."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Tom has 2 apples and buys 3 more, case {i}. "
                                        "How many apples?", "answer": "5"}) + "\n" for i in range(n)))
    slow = lambda steps: [{"text": s, "delay_s": delay} for s in steps]  # noqa: E731
    script = tmp_path / "edge.json"
    script.write_text(json.dumps({"steps": slow(WRONG), "when": [{"match": f"case {i}.", "steps": slow(RIGHT)}
                                                                  for i in range(1, n, 2)]}))
    return data, script


def _cloud(fault_server):
    """A deterministic cloud: its reply is a function of the request alone, whoever sends it and when."""
    server = fault_server("by-content", replies=["Hmm."])
    server.rules = [(WRONG[0] + "\n\n" + WRONG[1], "So 2 + 3 = 5, \\boxed{5}."),
                    (WRONG[0], "He buys 3 more apples."), ("How many apples?", "Tom has 2 + 3 = 5, \\boxed{5}.")]
    return server


def _atlas_args(data, script, out, server, *extra):
    return ["atlas", "build", "--dataset", str(data), "--model", f"script:{script}", "--out", str(out),
            "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
            "--max-step-tokens", "64", "--max-k", "3", *extra]


def _atlas(db):
    """Everything an atlas says, without ids or times: problems, branches, every step of every session, the calls."""
    conn = sqlite3.connect(db)
    q = lambda sql: sorted(conn.execute(sql).fetchall())  # noqa: E731
    return {
        "problems": q("SELECT id, status, predicted, correct, steps FROM atlas_problems"),
        "branches": q("SELECT problem_id, kind, k, status, predicted, correct, cloud_in, cloud_out, local_tokens, "
                      "cloud_steps FROM atlas_branches"),
        "trace_steps": q("SELECT p.id, s.idx, s.author, s.kind, s.text, s.token_ids, s.signals, s.replayed "
                         "FROM atlas_problems p JOIN steps s ON s.session_id = p.trace_session"),
        "branch_steps": q("SELECT b.problem_id, b.kind, b.k, s.idx, s.author, s.kind, s.text, s.replayed, "
                          "s.superseded_by IS NULL FROM atlas_branches b JOIN steps s ON s.session_id = b.session_id"),
        "sessions": q("SELECT problem, policy, status, answer FROM sessions"),
        "calls": q("SELECT s.problem, s.policy, c.purpose, c.status, c.input_tokens, c.output_tokens, c.cost_nusd, "
                   "c.mode FROM cloud_calls c JOIN sessions s ON s.id = c.session_id"),
        "events": q("SELECT s.policy, e.step_idx, e.trigger, e.action FROM trigger_events e "
                    "JOIN sessions s ON s.id = e.session_id"),
        "step_cache": q("SELECT key, text FROM step_cache"),
        "response_cache": q("SELECT key, text FROM response_cache"),
    }


def test_ray_is_never_imported_without_ray_and_its_options_need_it(tmp_path):
    data, script = _files(tmp_path, n=2)
    code = ("import sys; from edge_agent.cli import cli; import edge_agent.cli.atlas, edge_agent.cli.tuning; "
            f"args = ['bench', '--dataset', {str(data)!r}, '--model', 'script:{script}', '--policies', 'local-only', "
            f"'--out', {str(tmp_path / 'b')!r}, '--json']\n"
            "try:\n    cli(args)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('RAY', 'ray' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip().splitlines()[-1] == "RAY False"
    assert (tmp_path / "b" / "results.jsonl").read_text().count("\n") == 2
    proc = run_cli("bench", "--dataset", str(data), "--model", f"script:{script}", "--policies", "local-only",
                   "--out", str(tmp_path / "c"), "--ray-workers", "2")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "\n" not in err and "add --ray" in err
    for address, words in (("ray://head:10001", "Ray Client addresses are not supported"), ("head", "HOST:PORT")):
        proc = run_cli("bench", "--dataset", str(data), "--model", f"script:{script}", "--policies", "local-only",
                       "--out", str(tmp_path / "c"), "--ray", address)
        err = proc.stderr.decode().strip()
        assert proc.returncode == 2 and "\n" not in err and words in err, err
    assert not (tmp_path / "c").exists()


@needs_ray
def test_a_problem_a_worker_refuses_is_the_one_line_error_one_process_gives(tmp_path):
    data, script = _files(tmp_path, n=2)
    data.write_text(data.read_text() + json.dumps({"id": "big", "problem": "apples " * 6000, "answer": "1"}) + "\n")
    errors = []
    for out, extra in (("one", ()), ("ray", RAY)):
        proc = run_cli("bench", "--dataset", str(data), "--model", f"script:{script}", "--policies", "local-only",
                       "--out", str(tmp_path / out), *extra)
        errors.append(proc.stderr.decode().strip().splitlines()[-1])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
    assert errors[0] == errors[1] and "the problem is" in errors[0], errors


@needs_ray
def test_an_atlas_on_two_ray_workers_equals_the_one_process_atlas(fault_server, tmp_path):
    data, script = _files(tmp_path)
    server = _cloud(fault_server)
    one = run_cli(*_atlas_args(data, script, tmp_path / "one", server, "--json"))
    assert one.returncode == 0, one.stderr.decode()
    calls_alone = len(server.requests)
    ray = run_cli(*_atlas_args(data, script, tmp_path / "ray", server, *RAY, "--json"))
    assert ray.returncode == 0, ray.stderr.decode()
    assert ray.stderr.decode().strip() == ""  # no Ray chatter on the terminal
    assert json.loads(ray.stdout) == json.loads(one.stdout)
    a, b = _atlas(tmp_path / "one" / "bench.db"), _atlas(tmp_path / "ray" / "bench.db")
    assert len(a["problems"]) == 4 and {p[3] for p in a["problems"]} == {0, 1}
    assert len(a["branches"]) > 12 and any(s[-2] == 1 for s in a["branch_steps"])  # replayed trace steps
    for part in a:
        assert b[part] == a[part], part
    assert len(server.requests) == 2 * calls_alone  # the Ray build asked the cloud exactly what one process did
    conn = sqlite3.connect(tmp_path / "ray" / "bench.db")  # every call was reserved in the driver's ledger
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'settled'").fetchone()[0] == calls_alone
    assert conn.execute("SELECT COUNT(*) FROM sessions WHERE status = 'running'").fetchone()[0] == 0


@pytest.fixture
def ray_cluster():
    """A running Ray cluster of 2 CPUs (as 'ray start --head' leaves one), in a process of its own: its address."""
    code = ("import logging, sys, ray; ray.init(address='local', num_cpus=2, include_dashboard=False, "
            "object_store_memory=100 * 2**20, logging_level=logging.ERROR); "
            "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read(); ray.shutdown()")
    head = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    address = head.stdout.readline().decode().strip()
    yield address
    head.stdin.close()
    try:
        head.wait(60)
    finally:
        _kill_session(head)


@needs_ray
def test_an_atlas_on_a_running_cluster_equals_the_one_process_atlas(fault_server, tmp_path, ray_cluster, monkeypatch):
    """``--ray ADDRESS`` joins a cluster someone started; leaving it stops nothing of the cluster."""
    assert ray_cluster.rpartition(":")[2].isdigit(), ray_cluster
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the cluster was started with Ray's token authentication
    data, script = _files(tmp_path, n=2)
    server = _cloud(fault_server)
    one = run_cli(*_atlas_args(data, script, tmp_path / "one", server, "--json"))
    joined = run_cli(*_atlas_args(data, script, tmp_path / "ray", server, "--ray", ray_cluster, "--json"))
    assert one.returncode == 0 and joined.returncode == 0, joined.stderr.decode()
    assert json.loads(joined.stdout) == json.loads(one.stdout)
    a, b = _atlas(tmp_path / "one" / "bench.db"), _atlas(tmp_path / "ray" / "bench.db")
    for part in a:
        assert b[part] == a[part], part
    again = run_cli(*_atlas_args(data, script, tmp_path / "again", server, "--ray", ray_cluster, "--json"))
    assert again.returncode == 0, again.stderr.decode()  # the cluster outlived the first run


def _rows_of(db, problems):
    """Per finished problem: the ids of its sessions, steps and cloud calls (what a recompute would change)."""
    conn = sqlite3.connect(db)
    out = {}
    for pid in problems:
        sids = [r[0] for r in conn.execute("SELECT trace_session FROM atlas_problems WHERE id = ? UNION "
                                           "SELECT session_id FROM atlas_branches WHERE problem_id = ?", [pid, pid])]
        marks = ",".join("?" * len(sids))
        out[pid] = {t: sorted(r[0] for r in conn.execute(f"SELECT id FROM {t} WHERE {col} IN ({marks})", sids))
                    for t, col in (("sessions", "id"), ("steps", "session_id"), ("cloud_calls", "session_id"))}
    return out


def _kill_session(proc):
    """SIGKILL the driver and everything it started (it leads its own process session)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(50):
        left = [int(p) for p in os.listdir("/proc") if p.isdigit() and _sid(int(p)) == proc.pid]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _sid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return None


@needs_ray
def test_a_killed_ray_driver_reruns_only_the_unfinished_problems(fault_server, tmp_path):
    data, script = _files(tmp_path, delay=0.4)
    server = _cloud(fault_server)
    args = _atlas_args(data, script, tmp_path / "atlas", server, *RAY)
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ, start_new_session=True)
    db = tmp_path / "atlas" / "bench.db"
    finished: list[str] = []
    deadline = time.time() + 120
    while time.time() < deadline and not finished:
        time.sleep(0.1)
        try:
            finished = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM atlas_problems WHERE status = 'done'")]
        except sqlite3.Error:
            pass
    _kill_session(proc)
    assert finished and proc.returncode == -signal.SIGKILL
    finished = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM atlas_problems WHERE status = 'done'")]
    assert 1 <= len(finished) < 4  # killed mid-run: some problems done, some not
    before, asked = _rows_of(db, finished), len(server.requests)
    done = run_cli(*args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    assert _rows_of(db, finished) == before  # nothing finished was computed again, nor touched
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM atlas_problems WHERE status = 'done'").fetchone()[0] == 4
    branches = conn.execute("SELECT COUNT(*), COUNT(DISTINCT problem_id || kind || k) FROM atlas_branches").fetchone()
    assert branches[0] == branches[1]
    # the rerun's cloud calls all belong to problems that were unfinished at the kill
    rerun = server.requests[asked:]
    assert rerun and not any(f"case {p[1:]}." in json.dumps(r["body"]) for r in rerun for p in finished)
    # and the whole atlas is the one a single process builds
    one = run_cli(*_atlas_args(data, script, tmp_path / "one", _cloud(fault_server)))
    assert one.returncode == 0, one.stderr.decode()
    a, b = _atlas(tmp_path / "one" / "bench.db"), _atlas(db)
    for part in ("problems", "branches", "branch_steps", "trace_steps"):
        assert b[part] == a[part], part


@needs_ray
def test_ray_extends_an_atlas_one_process_began_and_redoes_none_of_it(fault_server, tmp_path):
    """An atlas built by one process with --max-k 1, then extended to --max-k 3 on Ray: the workers start from the
    problems' rows (traces and branches kept, not recomputed) and the result is the atlas one process builds."""
    data, script = _files(tmp_path)
    server = _cloud(fault_server)
    first = _atlas_args(data, script, tmp_path / "atlas", server)
    first[first.index("--max-k") + 1] = "1"
    assert run_cli(*first).returncode == 0
    db = tmp_path / "atlas" / "bench.db"
    before = _rows_of(db, [f"p{i}" for i in range(4)])
    extended = run_cli(*_atlas_args(data, script, tmp_path / "atlas", server, *RAY))
    assert extended.returncode == 0, extended.stderr.decode()
    after = _rows_of(db, [f"p{i}" for i in range(4)])
    for pid, rows in before.items():
        for table, ids in rows.items():
            assert set(ids) <= set(after[pid][table]), (pid, table)  # every row of the first build is still there
        assert len(after[pid]["sessions"]) > len(rows["sessions"])  # and the new branches were added
    one = run_cli(*_atlas_args(data, script, tmp_path / "one", server))
    assert one.returncode == 0, one.stderr.decode()
    a, b = _atlas(tmp_path / "one" / "bench.db"), _atlas(db)
    for part in ("problems", "branches", "branch_steps", "trace_steps", "step_cache", "response_cache"):
        assert b[part] == a[part], part


@needs_ray
def test_a_cap_smaller_than_the_run_needs_holds_across_two_workers(fault_server, tmp_path):
    data, script = _files(tmp_path)
    server = _cloud(fault_server)
    # every call costs 60 output tokens of the 64 it reserves (input is free): 12 branches need $0.00144, the day
    # cap lets one ledger grant 4 calls; two ledgers that did not share would grant 8 ($0.00096 > the cap)
    server.usage = {"prompt_tokens": 50, "completion_tokens": 60, "total_tokens": 110}
    day_cap, session_cap = 0.0006, 0.0005
    (tmp_path / "config" / "edge-agent").mkdir(parents=True)
    (tmp_path / "config" / "edge-agent" / "config.toml").write_text(f"[budget]\nmax_cost_day = {day_cap}\n")
    args = _atlas_args(data, script, tmp_path / "atlas", server, *RAY, "--no-handover", "--no-cloud-only",
                       "--max-cost", str(session_cap), "--json")
    args[args.index("--price-in") + 1] = "0"
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    conn = sqlite3.connect(tmp_path / "atlas" / "bench.db")
    spent = conn.execute("SELECT COALESCE(SUM(cost_nusd), 0) FROM cloud_calls").fetchone()[0]
    assert 0 < spent <= day_cap * 1e9
    per_session = conn.execute("SELECT MAX(s) FROM (SELECT SUM(cost_nusd) AS s FROM cloud_calls GROUP BY session_id)")
    assert per_session.fetchone()[0] <= session_cap * 1e9
    denied = conn.execute("SELECT COUNT(*) FROM trigger_events WHERE trigger = 'budget_denied'").fetchone()[0]
    assert denied > 0  # the cap did bind
    # no request left without a reservation granted by the one ledger, and none is left open
    unreserved = conn.execute("SELECT COUNT(*) FROM cloud_calls c LEFT JOIN budget_reservations r "
                              "ON r.id = c.reservation_id WHERE c.status != 'cache_hit' AND r.id IS NULL").fetchone()[0]
    settled = conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'settled'").fetchone()[0]
    assert unreserved == 0 and settled == len(server.requests) > 0
    assert conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0


@needs_ray
def test_a_bench_on_ray_equals_one_process_and_its_resume_computes_nothing(fault_server, tmp_path):
    data, script = _files(tmp_path)
    server = _cloud(fault_server)

    def bench(out, *extra):
        proc = run_cli("bench", "--dataset", str(data), "--model", f"script:{script}", "--policies",
                       "local-only,every-k,cloud-only", "--out", str(tmp_path / out), "--cloud", "openai:m",
                       "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
                       "--max-step-tokens", "64", "--json", *extra)
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout)

    one, ray = bench("one"), bench("ray", *RAY)
    key = lambda r: (r["policy"], r["id"], r["predicted"], r["correct"], r["status"], r["usage"]["cloud_steps"],  # noqa: E731
                     r["usage"]["cloud_output_tokens"], r["usage"]["local_steps"], r["usage"]["replayed_steps"])
    rows = lambda out: [json.loads(line) for line in (tmp_path / out / "results.jsonl").read_text().splitlines()]  # noqa: E731
    assert sorted(map(key, rows("ray"))) == sorted(map(key, rows("one"))) and len(rows("one")) == 12
    drop = ("wall_mean", "wall_p50", "wall_p90", "local_s_mean", "cloud_s_mean", "would_be_local_s_mean")
    strip = lambda s: [{k: v for k, v in x.items() if k not in drop} for x in s["summary"]]  # noqa: E731
    assert strip(ray) == strip(one)
    conn = sqlite3.connect(tmp_path / "ray" / "bench.db")
    sessions, asked = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0], len(server.requests)
    again = bench("ray", *RAY, "--resume")
    assert strip(again) == strip(ray) and len(server.requests) == asked
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == sessions == 12


@needs_ray
def test_an_atlas_of_the_embedded_model_on_ray_equals_the_one_process_atlas(fault_server, tmp_path):
    """The real llama.cpp edge model (SmolLM2) on 2 Ray workers, one thread each: the same atlas as one process."""
    data, _ = _files(tmp_path)
    server = fault_server("script", replies=["So the answer is \\boxed{5}."])

    def build(out, *extra):
        proc = run_cli("atlas", "build", "--dataset", str(data), "--model", "smollm2-135m", "--out", str(tmp_path / out),
                       "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1",
                       "--price-out", "2", "--max-steps", "4", "--max-step-tokens", "48", "--n-ctx", "1024",
                       "--max-k", "2", "--json", *extra, timeout=900)
        assert proc.returncode == 0, proc.stderr.decode()
        return json.loads(proc.stdout)

    assert build("ray", *RAY) == build("one")
    a, b = _atlas(tmp_path / "one" / "bench.db"), _atlas(tmp_path / "ray" / "bench.db")
    for part in ("problems", "branches", "branch_steps", "sessions"):
        assert b[part] == a[part], part
    assert [(p, i, au, k, t, tok) for p, i, au, k, t, tok, _, _ in b["trace_steps"]] == \
        [(p, i, au, k, t, tok) for p, i, au, k, t, tok, _, _ in a["trace_steps"]]
