"""Issue 32, item 8: every --json output and every HTTP body parses with a strict JSON parser.

A score that is not a finite number (a judge read's verdict, a sum of log-probs that overflowed) is "no score":
null, as docs/commands.md says. The database keeps what was computed."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.conftest import ROBE, run_cli


def strict(text: str | bytes):
    """JSON as JavaScript, Go and serde read it: Infinity, -Infinity and NaN are errors."""
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _script(tmp_path) -> str:
    script = tmp_path / "two.json"
    script.write_text(json.dumps(["Half of 2 is 1.", "So 2 + 1 = 3, and the answer is \\boxed{3}."]))
    return f"script:{script}"


@pytest.fixture
def infinite_session(tmp_path):
    """A finished session with the events a judge read and an overflowing sum leave: scores inf, -inf, NaN."""
    proc = run_cli("solve", ROBE, "--model", _script(tmp_path), "--max-steps", "2", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    sid = json.loads(proc.stdout)["session_id"]
    conn = sqlite3.connect(tmp_path / "edge.db")
    for n, (score, detail) in enumerate([(float("inf"), '{"suspicion": Infinity, "trust": 0.0, "flagged": 1}'),
                                         (float("-inf"), '{"suspicion": -Infinity, "trust": NaN}')]):
        conn.execute("INSERT INTO trigger_events (id, session_id, step_idx, trigger, action, score, threshold, detail,"
                     " created_at) VALUES (?, ?, 1, 'verify_repair', 'accept', ?, 8.0, ?, 'now')",
                     [f"EV{n}", sid, score, detail])
    conn.commit()
    conn.close()
    return tmp_path / "edge.db", sid


def test_show_json_prints_no_infinity(infinite_session):
    db, sid = infinite_session
    for args in (["show", sid, "--json"], ["show", sid, "--json", "--all", "-v"]):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr.decode()
        out = strict(proc.stdout)
        events = [e for e in out["events"] if e["trigger"] == "verify_repair"]
        assert [e["score"] for e in events] == [None, None] and all(e["threshold"] == 8.0 for e in events)
        assert events[0]["detail"] == {"suspicion": None, "trust": 0.0, "flagged": 1}
        assert events[1]["detail"] == {"suspicion": None, "trust": None}
    # the database keeps what was computed
    assert sqlite3.connect(db).execute("SELECT score FROM trigger_events WHERE id = 'EV0'").fetchone()[0] == float("inf")


def test_the_app_api_serves_strict_json(infinite_session):
    """FastAPI already wrote null for a dict an endpoint returns; the app keeps it so (default_response_class)."""
    from fastapi.testclient import TestClient

    import store
    from edge_agent.agent import Settings
    from edge_agent.serve import ServeOptions, create_app

    db, sid = infinite_session
    options = ServeOptions(default_policy="local-only", resolve_policy=lambda spec: spec, settings=Settings(),
                           open_db=lambda: store.open_db(str(db), create=False))
    with TestClient(create_app(lambda policy: None, options), base_url="http://127.0.0.1") as client:  # reads only
        r = client.get(f"/app/api/sessions/{sid}")
        assert r.status_code == 200, r.text
        body = strict(r.content)
        scores = [e["score"] for item in body["timeline"] for e in item.get("events", [])
                  if e["trigger"] == "verify_repair"]
        assert scores == [None, None]


def test_solve_json_with_a_judge_read_prints_no_infinity(tmp_path, fault_server):
    """The judge's "none" (every step right) is suspicion -inf: the event's score is null."""
    cloud = fault_server("script", replies=["none"])
    cfg = tmp_path / "judge.toml"
    cfg.write_text('[cloud]\nread = "judge"\n')
    proc = run_cli("solve", ROBE, "--model", _script(tmp_path), "--max-steps", "2", "--policy", "verify-repair",
                   "--cloud", "openai:judge-model", "--cloud-base-url", cloud.url + "/v1", "--price-in", "1",
                   "--price-out", "1", "--json", env={"EDGE_AGENT_CONFIG": str(cfg), "OPENAI_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    out = strict(proc.stdout)
    judged = [e for e in out["events"] if e["trigger"] == "verify_repair"]
    assert judged and judged[0]["score"] is None and judged[0]["detail"]["suspicion"] is None


def test_a_stream_chunk_and_an_error_body_are_strict_json():
    """What serve writes itself (SSE chunks, its JSONResponses), not through FastAPI's encoder."""
    from edge_agent.serve import ApiError
    from edge_agent.serve_wire import sse

    line = sse({"edge_agent": {"score": float("inf"), "scores": [float("nan"), 0.5]}})
    assert line.startswith("data: ") and strict(line[6:]) == {"edge_agent": {"score": None, "scores": [None, 0.5]}}
    assert strict(ApiError(400, "bad").response().body)["error"]["message"] == "bad"
