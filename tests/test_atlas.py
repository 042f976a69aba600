"""The routing atlas on a scripted edge model and a scripted cloud: branches, the reference rows, a kill
and resume that computes no branch twice, and the refusals (a mixed atlas, a bad dataset line)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edge_agent.atlas import auroc
from tests.conftest import run_cli

WRONG = ["Tom has 2 apples.", "He buys 3 more.", "So 2 + 4 = 6, \\boxed{6}."]  # the edge model's (wrong) trace


def _files(tmp_path, steps=WRONG, n=1):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Tom has 2 apples and buys 3 more, case {i}. "
                                        "How many apples?", "answer": "5"}) + "\n" for i in range(n)))
    script = tmp_path / "edge.json"
    script.write_text(json.dumps(steps))
    return data, script


def _build(data, script, out, server, *extra, run=run_cli):
    args = ["atlas", "build", "--dataset", str(data), "--model", f"script:{script}", "--out", str(out),
            "--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
            "--max-step-tokens", "64", *extra]
    return run(*args)


def test_branches_record_what_a_cloud_step_at_each_k_does_and_the_report_reads_them(fault_server, tmp_path):
    data, script = _files(tmp_path)
    # in build order: branch k=0 breaks nothing but answers 7; k=1 fixes; k=2 writes no answer;
    # the handovers at 0 and 1 (the first fixing k), then the cloud alone
    server = fault_server("script", replies=["He has 7, \\boxed{7}.", "2 + 3 = 5, \\boxed{5}.", "Hmm.",
                                             "2 + 3 = 5.\n\nSo \\boxed{5}.", "Tom ends with \\boxed{5}.",
                                             "2 + 3 = 5, \\boxed{5}."])
    proc = _build(data, script, tmp_path / "atlas", server, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    rows = {r["policy"]: r for r in result["rows"]}
    assert result["n"] == 1 and result["branches"] == 3
    assert rows["local-only"]["accuracy"] == 0 and rows["cloud-only"]["accuracy"] == 1
    assert rows["oracle (one step)"]["accuracy"] == 1 and rows["oracle (one step)"]["pgr"] == 1
    assert [rows[f"always step {k}"]["accuracy"] for k in (0, 1, 2)] == [0, 1, 0]
    assert rows["random step (expected)"]["accuracy"] == pytest.approx(1 / 3)
    assert rows["handover at 0"]["accuracy"] == 1
    conn = sqlite3.connect(tmp_path / "atlas" / "bench.db")
    branches = conn.execute("SELECT kind, k, correct, cloud_steps FROM atlas_branches ORDER BY rowid").fetchall()
    assert branches == [("step", 0, 0, 1), ("step", 1, 1, 1), ("step", 2, 0, 1), ("handover", 0, 1, 2),
                        ("handover", 1, 1, 1), ("cloud_only", 0, 1, 1)]
    # branch k keeps the trace's steps before k (replayed from the step cache, not decoded again)
    (sid,) = conn.execute("SELECT session_id FROM atlas_branches WHERE kind = 'step' AND k = 2").fetchone()
    kept = conn.execute("SELECT author, text, replayed FROM steps WHERE session_id = ? ORDER BY idx", [sid]).fetchall()
    assert kept[:2] == [("local", WRONG[0], 1), ("local", WRONG[1], 1)] and kept[2][:2] == ("cloud", "Hmm.")
    # the cloud step continued the edge's own turn: its prefix is the trace's first two steps
    assert server.requests[2]["body"]["messages"][-1]["content"] == WRONG[0] + "\n\n" + WRONG[1] + "\n\n"
    again = run_cli("atlas", "report", str(tmp_path / "atlas"), "--json")  # the report alone reads the same
    report = json.loads(again.stdout)
    assert report["rows"] == result["rows"] and len(server.requests) == 6
    assert report["plot"] and (tmp_path / "atlas" / "atlas.png").read_bytes()[:4] == b"\x89PNG"


def test_a_killed_build_resumes_and_computes_no_branch_twice(fault_server, tmp_path):
    slow = [{"text": s, "delay_s": 0.3} for s in WRONG]
    data, script = _files(tmp_path, slow, n=2)
    server = fault_server("script", replies=["2 + 3 = 5, \\boxed{5}."])
    run = lambda *a: subprocess.Popen([sys.executable, "-m", "edge_agent.cli", *a], stdout=subprocess.PIPE,  # noqa: E731
                                      stderr=subprocess.PIPE, env=os.environ)
    proc = _build(data, script, tmp_path / "atlas", server, "--no-handover", "--no-cloud-only", run=run)
    db = tmp_path / "atlas" / "bench.db"
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            if sqlite3.connect(db).execute("SELECT COUNT(*) FROM atlas_branches WHERE status = 'done'").fetchone()[0]:
                break
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = _build(data, script, tmp_path / "atlas", server, "--no-handover", "--no-cloud-only", "--json")
    assert done.returncode == 0, done.stderr.decode()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT problem_id || kind || k) FROM atlas_branches").fetchone() == (6, 6)
    # one session per trace and per branch: a branch cut short was continued, not started again
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 2 + 6
    assert conn.execute("SELECT COUNT(*) FROM sessions WHERE status = 'running'").fetchone()[0] == 0


def test_an_atlas_is_never_mixed_and_a_bad_dataset_line_is_named(fault_server, tmp_path):
    data, script = _files(tmp_path)
    server = fault_server("script", replies=["2 + 3 = 5, \\boxed{5}."])
    assert _build(data, script, tmp_path / "atlas", server, "--max-k", "1", "--no-handover").returncode == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps(["Another model's step."]))
    before = (tmp_path / "atlas" / "bench.db").read_bytes()
    proc = _build(data, other, tmp_path / "atlas", server)
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and "\n" not in err and "holds an atlas built with edge" in err
    assert (tmp_path / "atlas" / "bench.db").read_bytes() == before
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "1", "problem": "2+2?", "answer": "4"}) + "\n" + json.dumps({"id": "2"}) + "\n")
    proc = _build(bad, script, tmp_path / "atlas2", server)
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr.decode()


def test_auroc_counts_ties_as_half_and_needs_both_classes():
    assert auroc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5
    assert auroc([0.1, 0.9], [1, 0]) == 0.0
    assert auroc([0.3], [1]) is None


def test_a_policy_evaluated_on_the_atlas_matches_a_real_run_and_computes_nothing_new(fault_server, tmp_path):
    """tune --atlas replays the atlas's local steps and cloud replies: the same answers and cloud tokens as
    a fresh run of the policy, with no local step decoded and no cloud call made."""
    shaky = {"min_top1": 0.1, "low_top1_share": 0.5}  # a logprob score of about 0.28: trim-thr(tau=0.5) escalates
    data, script = _files(tmp_path, [WRONG[0], {"text": WRONG[1], "signals": shaky}, WRONG[2]], n=2)
    server = fault_server("by-content", replies=["Hmm."])  # deterministic: a reply is a function of the request
    server.rules = [(WRONG[0] + "\n\n" + WRONG[1], "So 2 + 3 = 5, \\boxed{5}."), (WRONG[0], "He buys 3 more apples.")]
    cloud = ["--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
             "--max-step-tokens", "64", "--max-steps", "4"]
    built = run_cli("atlas", "build", "--dataset", str(data), "--model", f"script:{script}", "--out",
                    str(tmp_path / "atlas"), "--max-k", "3", "--no-handover", *cloud, "--json")
    assert built.returncode == 0, built.stderr.decode()
    calls = lambda: sqlite3.connect(tmp_path / "atlas" / "bench.db").execute(  # noqa: E731
        "SELECT COUNT(*) FROM cloud_calls WHERE status != 'cache_hit'").fetchone()[0]
    paid = calls()
    tuned = run_cli("tune", "--atlas", str(tmp_path / "atlas"), "--policy", "trim-thr", "--grid", "tau=0.5",
                    "--model", f"script:{script}", "--no-write-config", *cloud, "--json")
    assert tuned.returncode == 0, tuned.stderr.decode()
    rows = {s["policy"]: s for s in json.loads(tuned.stdout)["summary"]}
    assert rows["trim-thr(tau=0.5)"]["computed_steps"] == 0 and rows["local-only"]["computed_steps"] == 0
    assert calls() == paid  # every escalation was a branch of the atlas: served from its replies
    fresh = run_cli("bench", "--dataset", str(data), "--policies", "trim-thr(tau=0.5)", "--model", f"script:{script}",
                    "--out", str(tmp_path / "fresh"), "--no-step-cache", *cloud, "--json")
    assert fresh.returncode == 0, fresh.stderr.decode()
    real = json.loads(fresh.stdout)["summary"][0]
    on_atlas = rows["trim-thr(tau=0.5)"]
    assert (on_atlas["accuracy"], on_atlas["cloud_out_per_problem"]) == (real["accuracy"], real["cloud_out_per_problem"])
    answers = lambda d: sorted((r["id"], r["predicted"]) for r in map(json.loads, (tmp_path / d / "results.jsonl")  # noqa: E731
                                                                    .read_text().splitlines()) if r["policy"].startswith("trim"))
    assert answers("atlas") == answers("fresh")
