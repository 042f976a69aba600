"""llama.cpp's compute mode: the embedded model decodes on this CPU, the setting forces either mode, the probe's
verdict is kept per machine, and a runtime that cannot run is one line, not a segfault."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_agent import runtime
from edge_agent.errors import ModelError
from edge_agent.step_cache import step_key
from tests.conftest import ROBE, run_cli

SEGV = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
OK = [sys.executable, "-c", "pass"]


def test_the_embedded_model_decodes_on_this_cpu():
    # On an AMX / AVX-512 CPU the old code died here with SIGSEGV on the first decode (exit -11).
    r = run_cli("solve", ROBE, "--model", "smollm2-135m", "--max-steps", "1", "--max-step-tokens", "8", "--json")
    assert r.returncode == 0, (r.returncode, r.stderr.decode()[-400:])
    out = json.loads(r.stdout)
    assert out["steps"] and out["steps"][0]["author"] == "local" and out["steps"][0]["tokens"] > 0


def _mode_in_child(env: dict[str, str]) -> tuple[str, str, bool]:
    code = ("import llama_cpp.llama_cpp as lib; from edge_agent import runtime; m = runtime.apply(); "
            "print(m.name, m.source, lib.llama_model_default_params().use_extra_bufts)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-400:]
    name, source, bufts = r.stdout.decode().split()
    return name, source, bufts == "True"


@pytest.mark.parametrize("value, mode, repack", [("on", "repack", True), ("off", "plain", False)])
def test_the_env_var_forces_either_mode_and_llama_loads_with_it(value, mode, repack):
    import os

    assert _mode_in_child({**os.environ, runtime.ENV: value}) == (mode, "env", repack)


@pytest.mark.parametrize("value, mode, repack", [("on", "repack", True), ("off", "plain", False)])
def test_the_config_key_forces_either_mode_and_the_env_var_wins(tmp_path, value, mode, repack):
    import os

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[local]\nrepack = "{value}"\n')
    env = {**os.environ, "EDGE_AGENT_CONFIG": str(cfg)}
    env.pop(runtime.ENV, None)
    assert _mode_in_child(env) == (mode, "config", repack)
    other = "off" if value == "on" else "on"
    assert _mode_in_child({**env, runtime.ENV: other})[1:] == ("env", not repack)


def test_doctor_says_which_mode_is_in_force_and_why():
    r = run_cli("doctor", "--json", env={runtime.ENV: "off"})
    out = json.loads(r.stdout)
    assert out["compute"] == {"mode": "plain", "repack": False, "source": "env",
                              "reason": f"forced off by {runtime.ENV}"}
    check = next(c for c in out["checks"] if c["name"] == "llama.cpp compute")
    assert check["level"] == "ok" and "plain" in check["detail"] and runtime.ENV in check["detail"]


def test_a_bad_setting_is_one_line_and_exit_2():
    r = run_cli("solve", ROBE, "--max-steps", "1", env={runtime.ENV: "maybe"})
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert runtime.ENV in err and "auto, on or off" in err


@pytest.fixture
def probe_env(tmp_path, monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setattr(runtime, "verdict_path", lambda: tmp_path / "runtime.json")
    calls: list[bool] = []
    yield calls


def test_a_repack_that_crashes_in_the_probe_turns_it_off_once_per_machine(probe_env, monkeypatch):
    monkeypatch.setattr(runtime, "probe_argv", lambda repack: probe_env.append(repack) or (SEGV if repack else OK))
    mode = runtime.resolve()
    assert (mode.repack, mode.source) == (False, "probe") and "SIGSEGV" in mode.reason
    assert probe_env == [True, False]
    again = runtime.resolve()  # the verdict is kept: no second probe
    assert (again.repack, again.source, again.reason) == (False, "cached probe", mode.reason)
    assert probe_env == [True, False]


def test_a_repack_that_decodes_in_the_probe_stays_on(probe_env, monkeypatch):
    monkeypatch.setattr(runtime, "probe_argv", lambda repack: probe_env.append(repack) or OK)
    mode = runtime.resolve()
    assert (mode.repack, mode.source) == (True, "probe") and probe_env == [True]


def test_a_runtime_that_cannot_decode_in_either_mode_is_one_line(probe_env, monkeypatch):
    monkeypatch.setattr(runtime, "probe_argv", lambda repack: SEGV)
    with pytest.raises(ModelError) as e:
        runtime.resolve()
    message = str(e.value)
    assert "\n" not in message and "cannot run on this CPU" in message and "reinstall llama-cpp-python" in message
    # and through the CLI: exit 2, one line, no traceback
    import os

    code = ("import pathlib, sys; from edge_agent import runtime, cli; "
            f"runtime.probe_argv = lambda repack: {SEGV!r}; "
            "runtime.verdict_path = lambda: pathlib.Path(sys.argv[1]); "
            "sys.argv = ['edge-agent', 'solve', 'What is 2+3?', '--max-steps', '1']; cli.main()")
    verdicts = str(runtime.verdict_path())
    r = subprocess.run([sys.executable, "-c", code, verdicts], capture_output=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != runtime.ENV})
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot run on this CPU" in err


def test_the_step_cache_key_names_the_compute_mode_and_keeps_the_old_keys():
    import hashlib

    old = hashlib.sha256(json.dumps({"model": "m", "context": [1, 2], "max_tokens": 8,
                                     "decode": "greedy"}).encode()).hexdigest()
    assert step_key("m", [1, 2], 8) == old == step_key("m", [1, 2], 8, "repack")  # committed caches still replay
    assert step_key("m", [1, 2], 8, "plain") != old  # a plain-mode step is never replayed as a repack one
