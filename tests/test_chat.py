"""``chat``: the conversation -> problem rule, and the REPL through click's runner with scripted input."""

import json
import sqlite3

import pytest
from click.testing import CliRunner

from edge_agent.chat import conversation_problem
from edge_agent.errors import InputError


def test_a_lone_user_message_passes_through_unchanged():
    assert conversation_problem([{"role": "user", "content": "  What is 2+2?  "}]) == "What is 2+2?"


def test_system_and_history_come_before_the_last_user_message():
    problem = conversation_problem([
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "2+2?"}]},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"},
    ])
    assert problem == ("Answer in French.\n\nEarlier in this conversation:\nUser: 2+2?\nAssistant: 4\n\n"
                       "And times 3?")


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message must be the user's"),
    ([{"role": "tool", "content": "x"}, {"role": "user", "content": "a"}], "tools are not supported"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "only text"),
    ([{"role": "user", "content": "   "}], "empty"),
])
def test_unusable_conversations_are_refused_with_the_fix(messages, message):
    with pytest.raises(InputError, match=message):
        conversation_problem(messages)


def test_repl_turns_commands_and_ctrl_c_mid_turn(tmp_path, monkeypatch):
    """Turn 1 runs; turn 2 is cancelled after its first committed step; turn 3 runs and the REPL goes on.

    A scripted model writes the turns, so turn 2 has a second step to cancel on any llama.cpp build."""
    from edge_agent import cli as cli_module

    script = tmp_path / "turns.json"
    script.write_text(json.dumps({
        "steps": ["2 + 2 = \\boxed{4}."],
        "when": [{"match": "Second", "steps": ["One, two, three.", "Four, five, six.", "Seven, eight."]}],
    }))

    real_step_end = cli_module.Renderer.step_end
    seen = {"turn": 0}

    def step_end(self, step):
        real_step_end(self, step)
        if seen["turn"] == 1:  # Ctrl-C arrives just after turn 2's first step was committed
            seen["turn"] = 2
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_module.Renderer, "step_end", step_end)
    original_ask = __import__("edge_agent.chat", fromlist=["Chat"]).Chat.ask

    def ask(self, user):
        if user.startswith("Second"):
            seen["turn"] = 1
        return original_ask(self, user)

    monkeypatch.setattr("edge_agent.chat.Chat.ask", ask)
    lines = "\n".join([
        "First: what is 2+2?",
        "/policy no-such-policy",
        "/policy local-only",
        "/offline",
        "Second: count to ten slowly.",
        "Third: what is 3+3?",
        "/cost",
        "/show",
        "/help",
        "/quit",
        "Never asked.",
    ]) + "\n"
    result = CliRunner().invoke(cli_module.cli, ["chat", "--model", f"script:{script}", "--max-steps", "2",
                                                 "--max-step-tokens", "24", "--n-ctx", "2048"], input=lines)
    out = result.output
    assert result.exit_code == 0, out + repr(result.exception)
    assert "Error: unknown policy 'no-such-policy'" in out and "policy: local-only" in out
    assert "no cloud is configured" in out
    assert "turn cancelled: 1 committed step kept in session" in out
    assert "/policy NAME" in out  # /help

    conn = sqlite3.connect(tmp_path / "edge.db")
    rows = conn.execute("SELECT id, problem, status, settings FROM sessions ORDER BY id").fetchall()
    assert len(rows) == 3  # the line after /quit was never asked
    settings = [json.loads(r[3]) for r in rows]
    assert len({s["conversation_id"] for s in settings}) == 1 and [s["turn"] for s in settings] == [0, 1, 2]
    assert rows[0][2] == rows[2][2] == "done"
    cancelled = rows[1]
    assert cancelled[2] == "running"  # resumable
    assert conn.execute("SELECT COUNT(*) FROM steps WHERE session_id = ?", [cancelled[0]]).fetchone()[0] == 1
    from tests.conftest import run_cli

    resumed = run_cli("resume", cancelled[0], "--json")  # the cancelled turn continues on the same script
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = json.loads(resumed.stdout)
    assert report["status"] == "max_steps" and [s["text"] for s in report["steps"]] == ["One, two, three.",
                                                                                        "Four, five, six."]
    third = rows[2][1]
    assert "User: First: what is 2+2?" in third and "Second" not in third and third.endswith("Third: what is 3+3?")
    assert f"conversation {settings[0]['conversation_id']}:" in out  # /cost totals
    assert f"session {rows[2][0]}" in out  # /show names the last turn


def test_a_chat_turn_on_an_unpriced_cloud_model_resumes_at_the_price_it_started_with(tmp_path, monkeypatch,
                                                                                   fault_server):
    """chat stores --price-in/--price-out with each turn's session, as solve does: resume needs them.

    The cloud model 'm' has no known price, so it is usable only with the prices given on the command line."""
    from edge_agent import cli as cli_module
    from tests.conftest import run_cli

    server = fault_server("script", replies=["2 + 1 = 3, so \\boxed{3}."])
    script = tmp_path / "turn.json"
    script.write_text(json.dumps(["Half of 2 is 1.", "So the total is 2 + 1.", "Done."]))
    real_step_end = cli_module.Renderer.step_end

    def step_end(self, step):
        real_step_end(self, step)
        raise KeyboardInterrupt  # Ctrl-C just after the turn's first step was committed

    monkeypatch.setattr(cli_module.Renderer, "step_end", step_end)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    result = CliRunner().invoke(cli_module.cli, [
        "chat", "--model", f"script:{script}", "--policy", "every-k", "--cloud", "openai:m",
        "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2",
        "--max-steps", "4", "--max-step-tokens", "24", "--n-ctx", "2048"], input="How many bolts?\n/quit\n")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "turn cancelled: 1 committed step kept in session" in result.output
    conn = sqlite3.connect(tmp_path / "edge.db")
    [(sid, status)] = conn.execute("SELECT id, status FROM sessions").fetchall()
    conn.close()
    assert status == "running" and not server.requests  # the cloud was not called before the cancel

    resumed = run_cli("resume", sid, "--json", env={"OPENAI_BASE_URL": ""})
    assert resumed.returncode == 0, resumed.stderr.decode()
    report = json.loads(resumed.stdout)
    assert report["status"] == "done" and report["answer"] == "3"
    assert [s["author"] for s in report["steps"]] == ["local", "cloud"]
    assert report["usage"]["cost_usd"] == pytest.approx((50 * 1 + 7 * 2) / 1e6)  # 50 in, 7 out at $1 / $2 per 1M
