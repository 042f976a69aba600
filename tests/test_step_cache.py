"""The step cache: what its key covers, a replay equal to a fresh step, and replays marked with would-be time."""

import json
import os

import store
from edge_agent.agent import Agent, Settings
from edge_agent.prompts import messages
from edge_agent.scripted import ScriptedModel
from edge_agent.step_cache import CachedModel, model_identity, step_key

PROBLEM = "Tom has 2 apples and buys 3 more. How many apples does he have?"


def test_the_key_changes_with_the_model_file_the_context_and_the_token_cap(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('["x"]')
    b.write_text('["x"]')
    ida, idb = model_identity(ScriptedModel(a)), model_identity(ScriptedModel(b))
    assert ida != idb  # another file, even with the same bytes
    base = step_key(ida, [1, 2, 3], 64)
    assert base == step_key(ida, [1, 2, 3], 64)
    assert base != step_key(ida, [1, 2, 4], 64) and base != step_key(ida, [1, 2, 3], 32)
    os.utime(a, ns=(1, 1))  # the same file, touched: it may have changed
    assert model_identity(ScriptedModel(a)) != ida
    a.write_text('["x", "y"]')
    assert model_identity(ScriptedModel(a)) != ida


def test_a_cached_step_equals_a_fresh_one_and_is_marked_replayed(smol, db):
    context = smol.prompt_tokens(messages(PROBLEM))
    fresh = smol.next_step(context, max_tokens=24)
    cached = CachedModel(smol, db)
    first = cached.next_step(context, max_tokens=24)
    again = cached.next_step(context, max_tokens=24)
    for d in (first, again):
        assert (d.text, d.raw, d.token_ids, d.signals, d.finish) == (
            fresh.text, fresh.raw, fresh.token_ids, fresh.signals, fresh.finish)
    assert first.would_be_s is None and (cached.misses, cached.hits) == (1, 1)
    assert abs(again.would_be_s - first.seconds) < 1e-6  # the seconds computing it took
    assert again.evaluated == 0  # nothing ran through the model
    sampled = cached.next_step(context, max_tokens=24, temperature=0.8)  # sampled steps are never cached
    assert sampled.would_be_s is None and db["step_cache"].count == 1


def test_a_rerun_replays_every_local_step_and_reports_the_time_it_would_have_taken(db, tmp_path):
    script = tmp_path / "steps.json"
    script.write_text(json.dumps([{"text": "Tom has 2 apples.", "delay_s": 0.2}, {"text": "He buys 3 more.", "delay_s": 0.2},
                                  "2 + 3 = 5, so \\boxed{5}."]))
    model = CachedModel(ScriptedModel(script), db)
    agent = Agent(model, db, "local-only")
    first = agent.solve(PROBLEM, Settings(max_steps=4, max_step_tokens=64))
    second = agent.solve(PROBLEM, Settings(max_steps=4, max_step_tokens=64))
    texts = lambda sid: [s.text for s in store.load_state(db, sid).steps]  # noqa: E731
    assert texts(first.session_id) == texts(second.session_id) and len(texts(second.session_id)) == 3
    assert (model.misses, model.hits) == (3, 3)
    rows = list(db.query("SELECT session_id, replayed, seconds, would_be_s FROM steps ORDER BY id"))
    assert [r["replayed"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert all(r["would_be_s"] >= 0.19 and r["seconds"] < 0.1 for r in rows[3:5])  # replayed: fast, would have been slow
    stats = store.step_cache_stats(db, [second.session_id])
    assert (stats["replayed"], stats["computed"]) == (3, 0) and stats["would_be_local_s"] >= 0.38 > stats["local_s"]


def test_bench_twice_replays_every_local_step_and_gets_the_same_accuracies(tmp_path, fault_server):
    from tests.conftest import run_cli

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Tom has {i} apples and buys 3 more. How many?",
                                        "answer": str(i + 3)}) + "\n" for i in (2, 3, 4)))
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(["He buys 3 more.", "2 + 3 = 5, so \\boxed{5}."]))
    args = ["bench", "--dataset", str(data), "--policies", "local-only,every-k(k=5)", "--model", f"script:{script}",
            "--out", str(tmp_path / "out"), "--cloud", "openai:m", "--price-in", "1", "--price-out", "2",
            "--cloud-base-url", fault_server("script", replies=["never asked"]).url + "/v1", "--json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr.decode()
    for name in ("results.jsonl", "results.json", "results.csv"):
        (tmp_path / "out" / name).unlink()
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr.decode()
    a, b = (json.loads(p.stdout)["summary"] for p in (first, second))
    # within the first run the two policies share every local prefix; the second run computes nothing
    assert sum(s["computed_steps"] for s in a) == 6 and sum(s["replayed_steps"] for s in a) == 6
    assert sum(s["computed_steps"] for s in b) == 0 and sum(s["replayed_steps"] for s in b) == 12
    assert [s["accuracy"] for s in a] == [s["accuracy"] for s in b] == [1 / 3, 1 / 3]
    text = run_cli(*args[:-1], "--resume").stdout.decode()  # the table's line on the cache
    assert "step cache:" in text


def test_a_verified_preset_is_known_by_its_sha256_wherever_its_file_lies(tmp_path, monkeypatch):
    from edge_agent import presets

    gguf = tmp_path / "joined.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    preset = presets.PRESETS["qwen2.5-coder-0.5b"]
    monkeypatch.setattr(presets, "resolve_model", lambda name, progress=None: (name, gguf))
    model = presets.open_model("qwen2.5-coder-0.5b")
    assert model_identity(model) == f"sha256:{preset.sha256}"
    os.utime(gguf, ns=(1, 1))  # joined again on another machine: another mtime, the same model
    assert model_identity(presets.open_model("qwen2.5-coder-0.5b")) == f"sha256:{preset.sha256}"
