"""Issue 26, the smaller ones: a missing optional package, a damaged database row, a 100 kB --policy and a hub
that names no commit hash. Each is one line that says what is wrong and what to do, exit 2, no traceback,
and the database (or the models dir) as it was."""

from __future__ import annotations

import json
import sqlite3

import pytest

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
