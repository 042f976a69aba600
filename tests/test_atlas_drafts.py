"""The atlas's drafts and the vote policies (scripted edge, scripted cloud): votes, handovers within their
share in tokens and USD, a kill and resume that drafts nothing twice, and the refusals."""

import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edge_agent.atlas_drafts import Drafts
from edge_agent.vote_eval import Problem, accuracies, bootstrap, report
from tests.conftest import run_cli
from tests.test_atlas import WRONG, _build, _files

RIGHT = ["Tom has 2 apples.", "So 2 + 3 = 5, \\boxed{5}."]


def _atlas(tmp_path, fault_server, samples, n=2):
    """An atlas of ``n`` problems whose greedy trace is wrong; ``samples[seed]`` are the sampled drafts' steps."""
    data, script = _files(tmp_path, n=n)
    script.write_text(json.dumps({"steps": WRONG, "when": [{"seed": s, "steps": v} for s, v in samples.items()]}))
    server = fault_server("script", replies=["2 + 3 = 5, \\boxed{5}."] * 50)
    proc = _build(data, script, tmp_path / "atlas", server, "--max-k", "1", "--no-handover")
    assert proc.returncode == 0, proc.stderr.decode()
    return tmp_path / "atlas", script


def test_drafts_vote_and_the_report_counts_them(tmp_path, fault_server):
    out, script = _atlas(tmp_path, fault_server, {1: RIGHT, 2: RIGHT})
    proc = run_cli("atlas", "drafts", str(out), "--model", f"script:{script}", "--n", "3", "--batch", "on", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    whole = result["parts"]["all"]
    row = whole["rows"][0]
    assert result["n"] == 2 and whole["n"] == 2
    assert (row["greedy"], row["vote"], row["pass_at_n"], row["cloud"]) == (0.0, 1.0, 1.0, 1.0)
    assert row["pgr_vote"] == 1.0 and row["share_tokens"] == 0.0
    conn = sqlite3.connect(out / "bench.db")
    kinds = conn.execute("SELECT kind, k, status, correct FROM atlas_branches WHERE kind LIKE 'drafts%'").fetchall()
    sessions = conn.execute("SELECT count(*) FROM sessions WHERE parent_id IS NOT NULL").fetchone()[0]
    conn.close()
    assert kinds == [("drafts@0.7", 3, "done", 1)] * 2 and sessions == 4  # 2 problems x 2 sampled drafts
    again = run_cli("atlas", "drafts", str(out), "--n", "3", "--report-only", "--json")  # reads the database alone
    assert json.loads(again.stdout)["parts"] == result["parts"]
    assert (out / "vote_report_t0.7_n3.json").is_file()


def test_a_killed_drafts_run_resumes_and_drafts_nothing_twice(tmp_path, fault_server):
    slow = [{"text": s, "delay_s": 1.0} for s in RIGHT]
    out, script = _atlas(tmp_path, fault_server, {1: slow, 2: slow})
    args = [sys.executable, "-m", "edge_agent.cli", "atlas", "drafts", str(out), "--model", f"script:{script}",
            "--n", "3", "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once a sampled draft has a committed step
        try:
            conn = sqlite3.connect(out / "bench.db", timeout=1)
            n = conn.execute("SELECT count(*) FROM steps s JOIN sessions p ON p.id = s.session_id"
                             " WHERE p.parent_id IS NOT NULL").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            n = 0
        if n:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = run_cli("atlas", "drafts", str(out), "--model", f"script:{script}", "--n", "3", "--json")
    assert done.returncode == 0, done.stderr.decode()
    conn = sqlite3.connect(out / "bench.db")
    parents = conn.execute("SELECT session_id FROM atlas_branches WHERE kind = 'drafts@0.7'").fetchall()
    samples = conn.execute("SELECT parent_id, json_extract(settings, '$.sample'), count(*) FROM sessions"
                           " WHERE parent_id IS NOT NULL GROUP BY 1, 2").fetchall()
    conn.close()
    assert len(parents) == 2 and len(samples) == 4 and all(c == 1 for _, _, c in samples)  # none made twice
    assert json.loads(done.stdout)["parts"]["all"]["rows"][0]["vote"] == 1.0


def test_drafts_refuse_a_folder_without_an_atlas_or_drafts_in_one_line(tmp_path, fault_server):
    r = run_cli("atlas", "drafts", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no atlas in" in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1
    out, _ = _atlas(tmp_path, fault_server, {1: RIGHT})
    r = run_cli("atlas", "drafts", str(out), "--report-only")
    assert r.returncode == 2 and "no drafts in" in r.stderr.decode()


def _p(i, agreement, winner_ok, cloud_ok, out=100, usd=1.0, greedy_ok=False, tokens=50):
    d = Drafts(f"p{i:02d}", ("x",), (greedy_ok,), (tokens,), (0.5,), "x", winner_ok, agreement)
    return Problem(f"p{i:02d}", d, cloud_ok, out, usd, position=i)


def test_handover_goes_to_the_least_agreed_within_the_share_in_tokens_and_in_usd():
    ps = [_p(0, 0.2, False, True), _p(1, 0.4, False, True, usd=5.0), _p(2, 0.6, True, True), _p(3, 1.0, True, True),
          _p(4, 1.0, True, False)]
    a = accuracies(ps, 0.25)  # 25%: p0 fits (100 of 500 tokens, 1 of 9 USD); p1 would take USD to 6/9
    assert a["handed"] == 0.2 and a["share_tokens"] == 0.2 and a["share_usd"] == pytest.approx(1 / 9)
    assert a["vote"] == 0.6 and a["vote_handover"] == 0.8
    # at random: one problem of five, whose expected gain is the mean of (cloud - vote) = (1 + 1 + 0 + 0 - 1) / 5
    assert a["random_handover"] == pytest.approx(0.6 + 0.2 * 0.2)
    assert accuracies(ps, 0.05)["handed"] == 0.0  # nothing fits in 5%: nothing is handed


def test_the_report_splits_design_and_claim_by_dataset_position_with_intervals():
    ps = [_p(i, 0.2 + 0.1 * (i % 5), i % 3 == 0, i % 4 != 0, greedy_ok=i % 6 == 0) for i in range(0, 240, 8)]
    r = report(ps)
    assert r["n"] == 30 and r["parts"]["design"]["n"] == 13 and r["parts"]["claim"]["n"] == 12  # 0..96, 104..192
    assert [row["share"] for row in r["parts"]["claim"]["rows"]] == [0.10, 0.15, 0.25, 0.50]
    assert all("intervals" in row and row["share_usd"] <= row["share"] and row["share_tokens"] <= row["share"]
               for part in ("design", "claim") for row in r["parts"][part]["rows"])
    assert report(ps[:5])["parts"]["claim"] == {"n": 0}  # nothing to claim on: said, not invented
    iv = bootstrap(ps, 0.15, rounds=200)
    assert iv["gate_minus_random"]["low"] <= iv["gate_minus_random"]["high"]
    json.loads(json.dumps(r), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
