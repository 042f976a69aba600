"""The bench harness: grading, PGR/ΔIBC arithmetic, and a resumable run on the real embedded model."""

import json
import sqlite3

import pytest

from edge_agent.bench import cpt, fallback_answer, grade, pareto_front, quantile, summarize
from tests.conftest import run_cli


@pytest.mark.parametrize(
    "gold, predicted, ok",
    [("72", "72", True), ("3", "3 bolts", True), ("\\frac{1}{2}", "0.5", True), ("1,000", "1000", True),
     ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", True), ("72", "73", False), ("5", None, False),
     ("0.5", "\\boxed{\\frac{1}{2}}", True), ("72", "27", False)],
)
def test_grade(gold, predicted, ok):
    assert grade(gold, predicted) is ok


def test_fallback_answer_takes_the_last_number_of_the_last_step():
    assert fallback_answer([{"text": "2 + 1 = 3"}, {"text": "so she pays $1,250 in total"}]) == "1250"
    assert fallback_answer([{"text": "x = 4"}, {"text": "done"}]) == "4"
    assert fallback_answer([{"text": "no numbers"}]) is None


def _row(policy, correct, cloud_out=0, cost=0.0, local=3, cloud=0):
    return {"policy": policy, "correct": correct, "usage": {
        "local_steps": local, "cloud_steps": cloud, "cloud_input_tokens": 10 * cloud, "cloud_output_tokens": cloud_out,
        "cost_usd": cost, "wall_s": 1.0, "local_s": 0.5, "cloud_s": 0.5}}


def test_summary_pgr_and_delta_ibc():
    rows = (
        [_row("local-only", c) for c in (1, 0, 0, 0)]  # S = 25%
        + [_row("cloud-only", c, 100, 0.01, local=0, cloud=4) for c in (1, 1, 1, 0)]  # L = 75%
        + [_row("hybrid", c, 20, 0.002, local=3, cloud=1) for c in (1, 1, 0, 0)]  # H = 50%
    )
    by = {s.policy: s for s in summarize(rows)}
    assert by["hybrid"].pgr == pytest.approx(0.5)
    assert by["local-only"].pgr == pytest.approx(0.0) and by["cloud-only"].pgr == pytest.approx(1.0)
    # IBC = accuracy / cost: hybrid 0.5/0.002 = 250, cloud 0.75/0.01 = 75 -> +2.33
    assert by["hybrid"].delta_ibc == pytest.approx(250 / 75 - 1)
    assert by["hybrid"].offload_ratio == pytest.approx(0.75)
    assert by["cloud-only"].cloud_out_per_problem == 100


def test_bench_run_writes_reports_and_resumes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
                            for i in (2, 3)))
    out = tmp_path / "out"
    base = ["bench", "--dataset", str(data), "--policies", "local-only", "--out", str(out),
            "--max-steps", "2", "--max-step-tokens", "24", "--json"]
    first = run_cli(*base, "--limit", "1")
    assert first.returncode == 0, first.stderr.decode()
    report = json.loads(first.stdout)
    assert report["summary"][0]["n"] == 1
    for name in ("results.json", "results.csv", "accuracy_vs_cloud_tokens.png", "results.jsonl"):
        assert (out / name).stat().st_size > 0
    again = run_cli(*base)
    assert again.returncode == 2 and "--resume" in again.stderr.decode()
    resumed = run_cli(*base, "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert json.loads(resumed.stdout)["summary"][0]["n"] == 2
    sessions = sqlite3.connect(out / "bench.db").execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert sessions == 2  # the first problem was not solved again
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["p2", "p3"]


def test_bench_refuses_cloud_policies_without_a_cloud(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "1+1?", "answer": "2"}) + "\n")
    proc = run_cli("bench", "--dataset", str(data), "--policies", "cloud-only", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "need a cloud" in proc.stderr.decode()


def test_cpt_pareto_and_quantile_by_hand():
    rows = (
        [_row("local-only", c) for c in (1, 0, 0, 0)]  # S = 25%
        + [_row("cloud-only", c, 200, 0.01, local=0, cloud=4) for c in (1, 1, 1, 0)]  # L = 75%, 200 out/pb
        + [_row("t(tau=0.5)", c, 20) for c in (1, 1, 0, 0)]  # PGR 0.5 at 10% of cloud-only's tokens
        + [_row("t(tau=0.7)", c, 40) for c in (1, 1, 0, 0)]  # same accuracy, dearer: off the front
        + [_row("t(tau=0.9)", c, 100) for c in (1, 1, 1, 0)]  # PGR 1.0 at 50%
    )
    s = summarize(rows)
    by = {x.policy: x for x in s}
    assert by["t(tau=0.9)"].cloud_out_share == pytest.approx(0.5)
    assert cpt(s, 0.5) == pytest.approx(0.1)
    assert cpt(s, 0.95) == pytest.approx(0.5)
    assert cpt(summarize([r for r in rows if r["policy"] != "cloud-only"]), 0.5) is None  # no cloud-only: undefined
    front = [x.policy for x in pareto_front([x for x in s if x.policy.startswith("t(")])]
    assert front == ["t(tau=0.5)", "t(tau=0.9)"]
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert quantile([0.0, 1.0], 0.2) == pytest.approx(0.2)
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5, lower=True) == 2.0


def test_a_killed_bench_resumes_without_redoing_a_finished_problem(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} times {i}?", "answer": str(i * i)}) + "\n"
                            for i in (2, 3, 4)))
    out = tmp_path / "out"
    args = ["bench", "--dataset", str(data), "--policies", "local-only", "--out", str(out),
            "--max-steps", "4", "--max-step-tokens", "48", "--json", "--resume"]
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (results.exists() and results.read_text().count("\n") >= 1):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [json.loads(x)["id"] for x in results.read_text().splitlines() if x.strip()]
    assert 1 <= len(finished) < 3
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr.decode()
    ids = [json.loads(x)["id"] for x in results.read_text().splitlines() if x.strip()]
    assert sorted(ids) == ["p2", "p3", "p4"]  # each problem exactly once
    conn = sqlite3.connect(out / "bench.db")
    for pid, problem in (("p2", "What is 2 times 2?"), ("p3", "What is 3 times 3?")):
        if pid in finished:  # solved before the kill: never solved again
            assert conn.execute("SELECT COUNT(*) FROM sessions WHERE problem = ?", [problem]).fetchone()[0] == 1
