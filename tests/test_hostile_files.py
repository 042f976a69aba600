"""Issue 32, items 12 and 13: a cache file, the config or an input that someone replaced with something hostile
(nested 100k deep, a FIFO, a link to /dev/zero, a directory), closed stdin, a huge --limit or --port.

A damaged cache file is a miss with at most one line of warning (probe again, list no pulled model); the config,
a dataset or an argument is bad input: one line, exit 2, no traceback. Nothing hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROBE, run_cli
from tests.test_damaged import one_line

HOSTILE = ("nested", "fifo", "dev-zero", "directory")


def _make(path, kind: str) -> None:
    if kind == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()


def _script(tmp_path) -> str:
    script = tmp_path / "s.json"
    script.write_text(json.dumps(["Half of 2 is 1, so 2 + 1 = 3. The answer is \\boxed{3}."]))
    return f"script:{script}"


# -- item 12: runtime.json and pulled.json -----------------------------------------------------------------


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_runtime_cache_is_a_miss_that_probes_again(tmp_path, kind):
    verdicts = tmp_path / "runtime.json"
    _make(verdicts, kind)
    code = ("import json, pathlib, sys; from edge_agent import runtime; "
            f"runtime.probe_argv = lambda repack: {[sys.executable, '-c', 'pass']!r}; "
            "runtime.verdict_path = lambda: pathlib.Path(sys.argv[1]); "
            "m = runtime.resolve(); print(json.dumps(m.to_dict()))")
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_REPACK"}
    r = subprocess.run([sys.executable, "-c", code, str(verdicts)], capture_output=True, timeout=60, env=env)
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert json.loads(r.stdout)["source"] == "probe"  # a miss: probed again
    lines = err.strip().splitlines()
    assert len(lines) <= 1 and all("runtime.json" in line for line in lines), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runtime.json"]  # no runtime.json.PID.tmp left behind
    if kind != "directory":  # a file it could replace now holds the verdict
        assert len(json.loads(verdicts.read_text())) == 1


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_pulled_models_registry_lists_no_pulled_model_with_one_warning(tmp_path, kind):
    cache = tmp_path / "models"
    cache.mkdir()
    _make(cache / "pulled.json", kind)
    env = {"EDGE_AGENT_CACHE": str(cache)}
    r = run_cli("models", "--json", env=env, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    rows = json.loads(r.stdout)
    assert rows and not any(row.get("kind") == "pulled" for row in rows)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pulled.json" in lines[0] and "move it aside" in lines[0], err
    # a pull, which rewrites the registry, refuses it before downloading anything
    one_line(run_cli("models", "pull", "org/repo/tiny.gguf", env=env, timeout=60), "pulled.json", "move it aside")


# -- item 13: bad input that ended in a traceback or a hang ---------------------------------------------------


def test_solve_from_a_closed_stdin_is_one_line(tmp_path):
    r = subprocess.run(f"exec {sys.executable} -m edge_agent.cli solve - --model {_script(tmp_path)} <&-",
                       shell=True, capture_output=True, timeout=60)
    one_line(r, "stdin", "closed")


@pytest.mark.parametrize("args, needle", [
    (["sessions", "--limit", "99999999999999999999"], "--limit"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--port", "70000"], "--port"),
    (["cloud-local", "--port", "-1"], "--port"),
])
def test_out_of_range_numbers_are_one_line(tmp_path, args, needle):
    assert run_cli("solve", ROBE, "--model", _script(tmp_path), "--max-steps", "1").returncode == 0
    one_line(run_cli(*args, timeout=60), needle, "range")


def test_a_dataset_line_nested_100k_deep_is_one_line(tmp_path):
    data = tmp_path / "deep.jsonl"
    data.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    one_line(run_cli("bench", "--dataset", str(data), "--policies", "local-only", "--model", _script(tmp_path),
                     "--out", str(tmp_path / "out"), timeout=60), "deep.jsonl:1", "nests too deeply")


@pytest.mark.parametrize("nest", ["[", "{a = "])
def test_a_config_nested_5000_deep_is_one_line(tmp_path, nest):
    cfg = tmp_path / "deep.toml"
    cfg.write_text("[solve]\nsamples = " + nest * 5000 + ("]" if nest == "[" else "}") * 5000 + "\n")
    r = run_cli("solve", ROBE, "--model", _script(tmp_path), env={"EDGE_AGENT_CONFIG": str(cfg)}, timeout=60)
    one_line(r, "deep.toml", "too deeply")
    assert not (tmp_path / "edge.db").exists()


def test_a_config_that_is_a_fifo_is_one_line_not_a_hang(tmp_path):
    cfg = tmp_path / "fifo.toml"
    os.mkfifo(cfg)
    r = run_cli("solve", ROBE, "--model", _script(tmp_path), env={"EDGE_AGENT_CONFIG": str(cfg)}, timeout=60)
    one_line(r, "fifo.toml", "FIFO")
