"""The learned router on a scripted edge and a scripted cloud: an atlas is built, the router is fit on it
(cross-validated), saved and used by ``solve``. The run-time features equal the atlas's, the router's
branch is the atlas's branch, and it never escalates past ``max_cloud`` or the budget."""

import json
import sqlite3

import pytest

from tests.conftest import run_cli

SHAKY = {"min_top1": 0.1, "mean_top1": 0.5, "first_top1": 0.3, "low_top1_share": 0.6, "mean_entropy": 1.5,
         "max_entropy": 3.0, "first_entropy": 2.0, "n_tokens": 8}
SURE = {"min_top1": 0.95, "mean_top1": 0.99, "first_top1": 0.99, "low_top1_share": 0.0, "mean_entropy": 0.05,
        "max_entropy": 0.2, "first_entropy": 0.1, "n_tokens": 8}
WRONG = [{"text": "Tom has 2 apples.", "signals": SHAKY}, {"text": "He buys 3 more.", "signals": SHAKY},
         {"text": "So 2 + 4 = 6, \\boxed{6}.", "signals": {**SHAKY, "has_answer": True}}]
RIGHT = [{"text": "Tom has 2 apples.", "signals": SURE}, {"text": "He buys 3 more.", "signals": SURE},
         {"text": "So 2 + 3 = 5, \\boxed{5}.", "signals": {**SURE, "has_answer": True}}]
FIX = "2 + 3 = 5, \\boxed{5}."


def _problem(i: int) -> str:
    return f"Tom has 2 apples and buys 3 more (case {i}, {'odd' if i % 2 else 'even'}). How many apples?"


@pytest.fixture
def atlas(tmp_path, fault_server):
    """An atlas of 8 problems: the edge is wrong (and shaky) on even cases, right (and sure) on odd ones."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": _problem(i), "answer": "5"}) + "\n"
                            for i in range(8)))
    script = tmp_path / "edge.json"
    script.write_text(json.dumps({"steps": RIGHT, "when": [{"match": "even", "steps": WRONG}]}))
    server = fault_server("script", replies=[FIX])
    cloud = ["--cloud", "openai:m", "--cloud-base-url", server.url + "/v1", "--price-in", "1", "--price-out", "2"]
    out = tmp_path / "atlas"
    proc = run_cli("atlas", "build", "--dataset", str(data), "--model", f"script:{script}", "--out", str(out),
                   "--max-k", "3", "--no-handover", "--max-step-tokens", "64", *cloud, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return {"dir": out, "script": script, "server": server, "cloud": cloud}


def _fit(atlas, *extra):
    proc = run_cli("atlas", "fit", str(atlas["dir"]), "--folds", "2", "--no-ablation", "--json", *extra)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def _solve(atlas, problem, policy, *extra):
    proc = run_cli("solve", problem, "--model", f"script:{atlas['script']}", "--policy", policy,
                   "--max-step-tokens", "64", *atlas["cloud"], "--json", *extra)
    return proc


def test_fit_cross_validates_saves_and_the_router_sends_the_wrong_draft_back_to_one_step(atlas, tmp_path):
    report = _fit(atlas, "--share", "0.5")
    assert report["n"] == 8 and report["rows"] == 24
    assert report["base"] == {"local": 0.5, "cloud": 1.0, "cloud_out": pytest.approx(report["base"]["cloud_out"])}
    # shaky traces are the wrong ones and every cloud step fixes them: held out, the router ranks them first.
    # A step costs what the cloud alone costs here, so 25% of its tokens pays for 2 of the 4 wrong ones.
    assert report["router"]["at"]["0.25"]["pgr"] == 0.5 and report["router"]["auroc_fixable"] == 1.0
    assert report["model"]["ref"] == "v1" and report["model"]["max_k"] == 3
    assert (atlas["dir"] / "router_report.json").exists()

    before = len(atlas["server"].requests)
    proc = _solve(atlas, _problem(10), "router(loop=false)")
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["answer"] == "5" and out["usage"]["cloud_steps"] == 1
    assert len(atlas["server"].requests) == before + 1
    conn = sqlite3.connect(tmp_path / "edge.db")
    sid = out["session_id"]
    (reason, to_idx, superseded), = conn.execute("SELECT reason, to_idx, superseded FROM rollbacks WHERE session_id = ?",
                                                 [sid]).fetchall()
    assert reason == "router" and superseded == 3 - to_idx
    active = conn.execute("SELECT author FROM steps WHERE session_id = ? AND superseded_by IS NULL ORDER BY idx",
                          [sid]).fetchall()
    assert [a for (a,) in active][-1] == "cloud" and len(active) == to_idx + 1
    # the features the router read at run time are the ones 'atlas fit' computes from the atlas
    (detail,), = conn.execute("SELECT detail FROM trigger_events WHERE session_id = ? AND trigger = 'router'",
                              [sid]).fetchall()
    detail = json.loads(detail)
    assert detail["k"] == to_idx
    from edge_agent.factory import open_db
    from edge_agent.router_fit import dataset
    from triggers.router import FEATURES

    problems = dataset(open_db(str(atlas["dir"] / "bench.db"), create=False))
    atlas_rows = {p.id: p for p in problems}
    # the saved threshold spends the asked share on the atlas with the saved model's own nets
    from triggers.router import load_router

    saved = load_router("latest", tmp_path / "config" / "edge-agent" / "models")
    picks = [saved.best([(k, x) for k, x, _, _ in p.rows]) for p in problems]
    spent = sum({k: o for k, _, _, o in p.rows}[b[0]] for p, b in zip(problems, picks) if b[1] >= saved.tau)
    assert 0 < spent <= 0.5 * report["base"]["cloud_out"] * len(problems)
    k, x, correct, _ = atlas_rows["p0"].rows[to_idx]  # the same trace (case 0 is also even)
    expected = dict(zip(FEATURES, (round(v, 6) for v in x)))
    differs = {f for f in FEATURES if detail["features"][f] != expected[f]}
    assert differs <= {"problem_words"} and k == to_idx and correct == 1  # the atlas's branch: fixed too

    right = _solve(atlas, _problem(11), "router(loop=false)")
    assert right.returncode == 0 and json.loads(right.stdout)["answer"] == "5"
    assert json.loads(right.stdout)["usage"]["cloud_steps"] == 0 and len(atlas["server"].requests) == before + 1


def test_never_past_max_cloud_or_the_budget(atlas, tmp_path, fault_server):
    _fit(atlas)
    hmm = fault_server("script", replies=["Hmm."])  # a cloud step that fixes nothing: the draft ends wrong again
    cloud = ["--cloud", "openai:m", "--cloud-base-url", hmm.url + "/v1", "--price-in", "1", "--price-out", "2"]
    # tau=-1 escalates any draft, again after each failed branch: only max_cloud stops it, and it counts
    # the branches whose cloud step a later branch superseded (paid for all the same)
    calls = []
    for max_cloud, expected in ((0, 0), (1, 1), (2, 1)):
        proc = run_cli("solve", _problem(12), "--model", f"script:{atlas['script']}", "--json",
                       "--policy", f"router(loop=false,tau=-1,max_cloud={max_cloud})", *cloud)
        assert proc.returncode == 0, proc.stderr.decode()
        assert json.loads(proc.stdout)["usage"]["cloud_steps"] == expected
        calls.append(len(hmm.requests) - sum(calls))
    assert calls == [0, 1, 2]
    # a cap below one call's reservation: no call is made and the draft stands
    proc = run_cli("solve", _problem(14), "--model", f"script:{atlas['script']}", "--json", "--max-cost", "0.0000001",
                   "--policy", "router(loop=false,tau=-1)", *cloud)
    assert proc.returncode == 0, proc.stderr.decode()
    out = json.loads(proc.stdout)
    assert out["answer"] == "6" and out["usage"]["cloud_steps"] == 0 and len(hmm.requests) == 3


def test_the_saved_model_round_trips_and_a_newer_one_is_refused(tmp_path, atlas):
    from triggers.router import FORMAT, load_router, save_router

    _fit(atlas)
    models = tmp_path / "config" / "edge-agent" / "models"
    model = load_router("latest", models)
    path, _ = save_router(model, tmp_path / "m")
    loaded = load_router(str(path))
    x = [0.5] * len(model.features)
    assert loaded.net(x) == model.net(x) and loaded.tau == model.tau and loaded.max_k == model.max_k
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    newer = json.loads(path.read_text())
    newer["format"] = FORMAT + 1
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    proc = _solve(atlas, _problem(1), f"router(model={tmp_path / 'newer.json'})")
    err = proc.stderr.decode().strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "newer edge-agent" in err, err


def test_the_saved_threshold_spends_the_share_on_the_saved_models_own_scale():
    """Held-out nets sit on another scale than the final model's: the saved tau must come from the latter."""
    from edge_agent.router_fit import Problem, final_model
    from triggers.router import FEATURES

    def x(shaky: float) -> list[float]:
        v = [0.0] * len(FEATURES)
        v[FEATURES.index("trace_min_score")] = 1.0 - shaky
        v[FEATURES.index("index")] = shaky * 0.1  # not constant, so the scaler keeps it
        return v

    # wrong (even) problems have shaky drafts and the step fixes them; right ones are not broken
    problems = [Problem(f"p{i}", i % 2, 1, 100.0, [(0, x(float(i % 2 == 0) + i / 100), 1, 100)]) for i in range(8)]
    held_out = [(-0.9, 0)] * 8  # a fold's nets, far below what the final model predicts
    model = final_model(problems, {"picks": held_out, "rows": 8, "folds": 2, "router": {}}, 0.25, 1.0, 1, {})
    spent = sum(100 for p in problems if model.net(p.rows[0][1]) >= model.tau)
    assert 0 < spent <= 0.25 * 100 * len(problems)
