"""The CLI end to end: real model, real SQLite file, real subprocesses."""

import json
import sqlite3
import subprocess
import sys

import pytest

from tests.conftest import ROBE, run_cli

FAST = ["--max-steps", "3", "--max-step-tokens", "48"]


def _json(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_solve_json_then_show_prints_the_same_steps(tmp_path):
    report = _json(run_cli("solve", ROBE, "--json", *FAST))
    assert report["session_id"] and report["status"] in {"done", "max_steps", "ended"}
    steps = report["steps"]
    assert len(steps) >= 1 and steps[0]["author"] == "local" and steps[0]["kind"] == "step"
    assert all(s["text"] for s in steps)
    assert {"mean_entropy", "max_entropy", "min_top1", "first_entropy"} <= set(steps[0]["signals"])
    u = report["usage"]
    assert u["local_steps"] == len(steps) and u["cloud_steps"] == 0
    assert u["offload_ratio"] == 1.0 and u["cost_usd"] == 0
    assert u["local_tokens"] == sum(s["tokens"] for s in steps) > 0
    assert u["wall_s"] >= u["local_s"] > 0
    assert report["cloud"]["available"] is False

    shown = _json(run_cli("show", report["session_id"], "--json"))
    assert [(s["index"], s["text"], s["tokens"]) for s in shown["steps"]] == [
        (s["index"], s["text"], s["tokens"]) for s in steps
    ]
    text = run_cli("show", report["session_id"][:12], "-v")
    assert text.returncode == 0
    assert steps[0]["text"].splitlines()[0] in text.stdout.decode()

    listed = _json(run_cli("sessions", "--json"))
    assert listed[0]["id"] == report["session_id"] and listed[0]["steps"] == len(steps)


def test_solve_streams_labeled_steps_and_a_usage_line():
    proc = run_cli("solve", ROBE, "--max-steps", "2", "--max-step-tokens", "32")
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "── step 0 · local" in out
    assert "local tokens" in out and "session " in out


def test_problem_from_stdin():
    report = _json(run_cli("solve", "-", "--json", "--max-steps", "1", "--max-step-tokens", "16", input=ROBE.encode()))
    assert report["problem"] == ROBE and len(report["steps"]) == 1


def test_resume_finished_session_is_refused():
    report = _json(run_cli("solve", ROBE, "--json", "--max-steps", "1", "--max-step-tokens", "16"))
    proc = run_cli("resume", report["session_id"])
    assert proc.returncode == 2
    assert "already finished" in proc.stderr.decode()


def test_rollback_supersedes_and_regenerates(tmp_path):
    db = tmp_path / "edge.db"
    script = tmp_path / "three.json"  # a multi-step session on any llama.cpp build
    script.write_text(json.dumps(["Blue takes 2 bolts.", "White takes 2 / 2 = 1 bolt.", "In all 2 + 1 = 3."]))
    report = _json(run_cli("solve", ROBE, "--json", "--model", f"script:{script}", "--max-steps", "3"))
    sid, before = report["session_id"], report["steps"]
    assert len(before) == 3 and report["status"] == "max_steps"
    proc = run_cli("rollback", sid, "--to", "1", "--no-continue", "--json")
    after = _json(proc)
    assert [s["text"] for s in after["steps"]] == [before[0]["text"]]
    assert after["status"] == "running"
    again = _json(run_cli("resume", sid, "--json"))
    assert [s["text"] for s in again["steps"]] == [s["text"] for s in before]
    conn = sqlite3.connect(db)
    total, superseded = conn.execute(
        "SELECT COUNT(*), SUM(superseded_by IS NOT NULL) FROM steps WHERE session_id = ?", [sid]
    ).fetchone()
    assert superseded == len(before) - 1  # kept, never deleted
    assert total == superseded + len(again["steps"])
    assert conn.execute("SELECT COUNT(*) FROM rollbacks").fetchone()[0] == 1


def test_models_lists_presets():
    rows = _json(run_cli("models", "--json"))
    by = {r["name"]: r for r in rows}
    assert set(by) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert by["smollm2-135m"]["installed"] is True and by["smollm2-135m"]["size_bytes"] > 50_000_000


def test_help_on_every_command():
    from edge_agent.cli import cli

    for name in cli.commands:
        proc = run_cli(name, "--help")
        assert proc.returncode == 0, name
        assert "Usage:" in proc.stdout.decode() and "--help" in proc.stdout.decode(), name
        assert cli.commands[name].help, f"{name} has no help text"


def test_cli_start_imports_no_heavy_package():
    code = (
        "import sys; from edge_agent.cli import cli; "
        "heavy = [m for m in ('llama_cpp', 'numpy', 'torch', 'sentence_transformers', 'openai', 'anthropic', 'sqlite_utils') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout.decode().strip()
    assert out == ""


def test_cloud_local_stops_its_server_when_terminated():
    """A script's 'kill' (SIGTERM) of cloud-local takes its model server down with it."""
    import signal
    import time
    import urllib.request

    from edge_agent.cloud_local import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "cloud-local", "--model", "smollm2-135m",
                             "--port", str(port), "--n-ctx", "512"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert b"serving" in proc.stdout.readline()  # printed once the server answers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        time.sleep(0.5)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    finally:
        proc.kill()
