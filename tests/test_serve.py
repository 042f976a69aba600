"""``serve`` driven by the official openai SDK: a real uvicorn on loopback, the real model, a real SQLite file."""

import json
import sqlite3
import subprocess
import sys
import threading
import time

import urllib.error
import urllib.request
import openai
import pytest

from edge_agent.chat import conversation_problem
from tests.conftest import ROBE

FAST = {"max_tokens": 32}


def _post(url, body: bytes, headers=None):
    """A raw request, for what the SDK will not send (broken JSON, no key): (status, headers, JSON body)."""
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())
BODY_LIMIT = 8192


def _start(app):
    import uvicorn

    from edge_agent.cloud_local import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="module")
def served(tmp_path_factory, smol_path, llama_server):
    """One app on the embedded model with the loopback llama.cpp server as its cloud; queue bound 0."""
    from cloud.client import make_cloud
    from edge_agent.agent import Agent, Settings
    from edge_agent.local import LocalModel
    from edge_agent.serve import ServeOptions, create_app
    from store import open_db
    from triggers import get_policy

    db_path = tmp_path_factory.mktemp("serve") / "serve.db"
    cloud = make_cloud("openai:local", base_url=llama_server)
    made = {}

    def make_agent(policy):
        if not made:  # on the worker thread: it owns the model and the connection
            made["model"] = LocalModel(smol_path, "smollm2-135m", n_ctx=2048, n_threads=1)
            made["db"] = open_db(db_path)
        return Agent(made["model"], made["db"], policy, cloud=cloud)

    options = ServeOptions(default_policy="local-only", resolve_policy=lambda spec: get_policy(spec).label,
                           settings=Settings(max_steps=3, max_step_tokens=48, n_ctx=2048), has_cloud=True,
                           max_body_bytes=BODY_LIMIT, max_queue=0)
    app = create_app(make_agent, options)
    server, thread, base = _start(app)
    yield base, db_path, app
    server.should_exit = True
    thread.join(15)


def _client(base, key="unused", **kw):
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120, **kw)


def _db_steps(db_path, sid):
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT idx, author, text FROM steps WHERE session_id = ? AND superseded_by IS NULL "
                        "ORDER BY id", [sid]).fetchall()
    session = conn.execute("SELECT problem, status, settings FROM sessions WHERE id = ?", [sid]).fetchone()
    conn.close()
    return rows, session


def test_models_lists_edge_agent_and_every_policy(served):
    from triggers import POLICIES

    base, _, _ = served
    models = _client(base).models.list().data
    ids = [m.id for m in models]
    assert ids[0] == "edge-agent" and set(POLICIES) <= set(ids)
    assert models[0].model_extra["edge_agent"]["policy"] == "local-only"
    assert next(m for m in models if m.id == "cloud-only").model_extra["edge_agent"]["uses_cloud"] is True


def test_completion_persists_a_session_and_reports_usage(served):
    base, db_path, _ = served
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": ROBE}]
    raw = _client(base).chat.completions.with_raw_response.create(model="edge-agent", messages=messages, **FAST)
    sid = raw.headers["x-edge-agent-session"]
    resp = raw.parse()
    rows, (problem, status, settings) = _db_steps(db_path, sid)
    assert rows and all(author == "local" for _, author, _ in rows)
    assert resp.choices[0].message.content == "\n\n".join(text for _, _, text in rows)
    assert resp.choices[0].finish_reason == ("stop" if status in ("done", "ended") else "length")
    assert problem == conversation_problem(messages)
    assert problem.startswith("Be brief.") and "Earlier in this conversation:\nUser: What is 2+2?\nAssistant: 4" in problem
    assert json.loads(settings)["source"] == "serve" and json.loads(settings)["max_step_tokens"] == 32
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens == u.model_extra["local_tokens"] > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.model_extra["cloud_input_tokens"] == u.model_extra["cloud_output_tokens"] == 0
    assert u.model_extra["cost_usd"] == 0
    ext = resp.model_extra["edge_agent"]
    assert ext["session_id"] == sid and ext["policy"] == "local-only" and resp.id == f"chatcmpl-{sid}"


def test_streaming_sends_one_chunk_per_step_then_usage(served):
    base, db_path, _ = served
    client = _client(base)
    with client.chat.completions.with_streaming_response.create(
            model="local-only", messages=[{"role": "user", "content": ROBE}], stream=True, **FAST) as resp:
        sid = resp.headers["x-edge-agent-session"]
        chunks = list(resp.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    steps = [c for c in chunks if c.model_extra.get("edge_agent", {}).get("step") is not None]
    final = chunks[-1]
    rows, (_, status, _) = _db_steps(db_path, sid)
    assert [c.model_extra["edge_agent"]["step"] for c in steps] == [idx for idx, _, _ in rows]
    assert all(c.model_extra["edge_agent"]["author"] == "local" for c in steps)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "\n\n".join(t for _, _, t in rows)
    assert final.choices[0].finish_reason in ("stop", "length") and final.usage.completion_tokens > 0
    assert final.usage.model_extra["cost_usd"] == 0
    assert final.model_extra["edge_agent"]["session_id"] == sid and final.model_extra["edge_agent"]["status"] == status


def test_cloud_steps_carry_tokens_and_cost(served):
    base, db_path, _ = served
    with _client(base).chat.completions.with_streaming_response.create(
            model="every-k", messages=[{"role": "user", "content": ROBE}], stream=True, **FAST) as resp:
        sid = resp.headers["x-edge-agent-session"]
        chunks = list(resp.parse())
    authors = [c.model_extra["edge_agent"]["author"] for c in chunks if "author" in c.model_extra.get("edge_agent", {})]
    assert "cloud" in authors and "local" in authors
    cloud_chunk = next(c for c in chunks if c.model_extra.get("edge_agent", {}).get("author") == "cloud")
    assert cloud_chunk.model_extra["edge_agent"]["trigger"] == "every_k"
    u = chunks[-1].usage.model_extra
    conn = sqlite3.connect(db_path)
    out, nusd = conn.execute("SELECT SUM(output_tokens), SUM(cost_nusd) FROM cloud_calls WHERE session_id = ?",
                             [sid]).fetchone()
    assert u["cloud_output_tokens"] == out > 0 and u["cloud_input_tokens"] > 0
    assert u["cost_usd"] == pytest.approx(nusd / 1e9) and u["cost_usd"] > 0


def test_bad_requests_get_openai_style_errors(served):
    base, db_path, _ = served
    client = _client(base)
    before = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="edge-agent", messages=[{"role": "assistant", "content": "hi"}])
    assert e.value.body["param"] == "messages" and "last message must be the user's" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="edge-agent", messages=[{"role": "user", "content": "hi"}], n=2)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="edge-agent", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    status, _, body = _post(base + "/chat/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="edge-agent", messages=[{"role": "user", "content": "x" * BODY_LIMIT}])
    assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"
    after = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert after == before  # nothing refused was written


def test_a_second_request_while_one_runs_gets_429(served):
    base, _, app = served
    client = _client(base)
    with client.chat.completions.with_streaming_response.create(
            model="local-only", messages=[{"role": "user", "content": ROBE}], stream=True, **FAST) as resp:
        stream = resp.parse()
        next(iter(stream))  # the first chunk: the request holds the model now
        assert app.state.worker.busy == 1
        with pytest.raises(openai.RateLimitError) as e:
            client.chat.completions.create(model="local-only", messages=[{"role": "user", "content": "2+2?"}], **FAST)
        assert e.value.body["code"] == "rate_limit_exceeded" and e.value.response.headers["retry-after"]
        rest = list(stream)
    assert rest[-1].choices[0].finish_reason in ("stop", "length")
    deadline = time.monotonic() + 10
    while app.state.worker.busy and time.monotonic() < deadline:  # released when the job ends
        time.sleep(0.05)
    ok = client.chat.completions.create(model="local-only", messages=[{"role": "user", "content": "2+2?"}],
                                       max_tokens=16, extra_body={"max_steps": 1})
    assert ok.choices[0].message.content and len(ok.model_extra["edge_agent"]["steps"]) == 1


def test_serve_cli_requires_the_token(tmp_path):
    from edge_agent.cloud_local import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "serve", "--port", str(port), "--token", "s3cret",
                             "--max-steps", "2", "--max-step-tokens", "24", "--n-ctx", "2048"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                urllib.request.urlopen(base + "/models", timeout=1)
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        with pytest.raises(openai.AuthenticationError) as e:
            _client(base, key="wrong").models.list()
        assert e.value.body["code"] == "invalid_api_key"
        status, headers, body = _post(base + "/chat/completions", b'{"model": "edge-agent", "messages": []}')
        assert status == 401 and headers["www-authenticate"] == "Bearer" and body["error"]["code"] == "invalid_api_key"
        client = _client(base, key="s3cret")
        assert "edge-agent" in [m.id for m in client.models.list()]
        raw = client.chat.completions.with_raw_response.create(model="edge-agent",
                                                               messages=[{"role": "user", "content": ROBE}])
        sid = raw.headers["x-edge-agent-session"]
        assert raw.parse().model_extra["edge_agent"]["session_id"] == sid
    finally:
        proc.terminate()
        proc.wait(15)
    conn = sqlite3.connect(tmp_path / "edge.db")  # the isolated EDGE_AGENT_DB
    assert conn.execute("SELECT policy FROM sessions WHERE id = ?", [sid]).fetchone() == ("local-only",)


def test_serve_refuses_a_public_host_without_a_token():
    from tests.conftest import run_cli

    proc = run_cli("serve", "--host", "0.0.0.0", timeout=60)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert err.startswith("Error: ") and "--token" in err and "Traceback" not in err


def test_a_client_that_leaves_mid_stream_stops_the_solve_and_keeps_its_steps(served):
    base, db_path, app = served
    client = _client(base)
    with client.chat.completions.with_streaming_response.create(
            model="local-only", messages=[{"role": "user", "content": ROBE}], stream=True, max_tokens=48) as resp:
        sid = resp.headers["x-edge-agent-session"]
        next(iter(resp.parse()))  # the role chunk arrives at once; then the client hangs up
    deadline = time.monotonic() + 30
    while app.state.worker.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.state.worker.busy == 0  # the model is free for the next request
    rows, (_, status, _) = _db_steps(db_path, sid)
    assert status == "running" and len(rows) < 3  # stopped early, resumable with 'edge-agent resume'


@pytest.mark.parametrize("args, message", [
    (["serve", "--policy", "no-such"], "unknown policy"),
    (["serve", "--policy", "cloud-only"], "needs a cloud"),
    (["serve", "--max-steps", "0"], "--max-steps"),
    (["chat", "--policy", "trim-thr"], "needs a cloud"),
    (["chat", "--model", "/no/such.gguf"], "model file not found"),
])
def test_bad_serve_and_chat_options_fail_in_one_line(args, message):
    from tests.conftest import run_cli

    proc = run_cli(*args, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("Error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_serve_on_a_taken_port_fails_before_loading():
    import socket

    from tests.conftest import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc = run_cli("serve", "--port", str(s.getsockname()[1]), timeout=60)
    assert proc.returncode == 2 and "pass another --port" in proc.stderr.decode()


def test_a_client_cannot_make_the_server_open_a_file(served, tmp_path):
    """A model id names a policy, never a path: a FIFO would freeze the server, /dev/zero exhaust it."""
    import itertools
    import os

    base, db_path, _ = served
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    answers = {}

    def ask(model):
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "2+2?"}]}).encode()
        answers[model] = _post(base + "/chat/completions", body)[0]

    for target, policy in itertools.product((str(fifo), "/etc/passwd", "/dev/zero"), ("trim-learned", "router")):
        model = f"{policy}(model={target})"
        t = threading.Thread(target=ask, args=(model,), daemon=True)
        t.start()
        t.join(5)
        started = time.monotonic()
        with urllib.request.urlopen(base + "/models", timeout=5) as r:  # the server still answers, at once
            assert r.status == 200
        assert time.monotonic() - started < 1.0
        assert answers.get(model) == 404, (model, answers)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # nobody opened the FIFO for writing or reading
    os.close(fd)


def test_hostile_bodies_get_400_not_500(served):
    base, db_path, _ = served
    before = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    user = [{"role": "user", "content": "2+2?"}]
    cases = {
        "unclosed policy": json.dumps({"model": "trim-thr(tau", "messages": user}).encode(),
        "negative seed": json.dumps({"model": "edge-agent", "messages": user, "seed": -1}).encode(),
        "lone surrogate": b'{"model": "edge-agent", "messages": [{"role": "user", "content": "x \\udcff"}]}',
        "deep nesting": b'{"model": "edge-agent", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        "parameter twice": json.dumps({"model": "trim-thr(tau=0.5,tau=0.6)", "messages": user}).encode(),
    }
    for name, body in cases.items():
        assert len(body) < BODY_LIMIT
        status, _, reply = _post(base + "/chat/completions", body)
        assert status == 400, (name, status, reply)
        assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"], name
    after = sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert after == before
