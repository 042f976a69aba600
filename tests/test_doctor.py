"""First run: bare ``edge-agent`` and ``doctor`` say what will run, whether it works, and the fix for what does not."""

import json
import subprocess
import sys

from tests.conftest import run_cli


def test_bare_edge_agent_reports_model_cloud_caps_and_paths(tmp_path):
    proc = run_cli(timeout=120)
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    assert "local model" in out and "smollm2-135m" in out and "loads in" in out
    assert "none configured" in out and "tip:" in out  # no cloud yet: how to add one
    assert str(tmp_path / "edge.db") in out and "not created yet" in out
    assert str(tmp_path / "config" / "edge-agent" / "config.toml") in out
    assert "next: edge-agent solve" in out
    assert not (tmp_path / "edge.db").exists()  # looking does not create the database


def test_doctor_json_pings_the_cloud_without_spending(llama_server, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[budget]\nmax_cost_day = 0.5\n")
    proc = run_cli("doctor", "--json", "--cloud", "openai:local", "--cloud-base-url", llama_server,
                   env={"EDGE_AGENT_CONFIG": str(cfg)}, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["ok"] is True
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["cloud"]["level"] == "ok" and "answers" in checks["cloud"]["detail"]
    assert result["cloud"]["answers"] is True and result["cloud"]["listed"] is True
    assert result["model"]["loads"] is True and result["model"]["name"] == "smollm2-135m"
    assert result["caps"]["day_usd"] == 0.5 and result["caps"]["spent_today_usd"] == 0
    assert result["paths"]["config"] == str(cfg)
    assert not (tmp_path / "edge.db").exists()  # no session, no ledger row: nothing was spent


def test_every_problem_names_its_fix(tmp_path):
    from edge_agent.cloud_local import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[cloud\n")
    proc = run_cli("doctor", "--json", "--model", str(tmp_path / "missing.gguf"), "--cloud", "openai:gpt-4o-mini",
                   "--cloud-base-url", dead, env={"EDGE_AGENT_CONFIG": str(bad_cfg)}, timeout=120)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    checks = {c["name"]: c for c in result["checks"]}
    assert result["ok"] is False
    assert {n for n, c in checks.items() if c["level"] == "fail"} == {"local model", "cloud", "config"}
    assert "model file not found" in checks["local model"]["detail"]
    assert "cannot reach the cloud" in checks["cloud"]["detail"] and "--cloud-base-url" in checks["cloud"]["fix"]
    assert "not valid TOML" in checks["config"]["detail"]
    assert all(c["fix"] for c in result["checks"] if c["level"] != "ok")
    assert checks["caps"]["level"] == "warn" and "max_cost_day" in checks["caps"]["fix"]  # a cloud with no cap

    text = run_cli("doctor", "--model", str(tmp_path / "missing.gguf"), timeout=120)
    lines = text.stdout.decode().splitlines()
    assert text.returncode == 1 and "Traceback" not in text.stderr.decode()
    failed = [i for i, line in enumerate(lines) if line.startswith("✗")]
    assert failed and all(lines[i + 1].strip().startswith("fix:") for i in failed)


def test_help_imports_no_heavy_package():
    code = ("import sys; from edge_agent.cli import cli; "
            "heavy = [m for m in ('fastapi', 'uvicorn', 'llama_cpp', 'openai', 'anthropic', 'numpy', 'rich') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    help_ = run_cli("--help", timeout=60)
    assert help_.returncode == 0 and b"serve" in help_.stdout and b"doctor" in help_.stdout
