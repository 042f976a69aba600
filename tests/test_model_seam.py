"""The model seam (edge_agent/model.py): one StepModel interface, and --model SCHEME:SPEC opened through one registry.

No weights load here: the scripted model, a model class written in this file, and a LocalModel that is
built but never used.
"""

import inspect
import json

import pytest

from edge_agent import presets, runtime
from edge_agent.agent import Agent, Settings
from edge_agent.answer import extract_answer
from edge_agent.errors import ModelError
from edge_agent.local import SEPARATOR, Draft, LocalModel, Verdict
from edge_agent.model import MODEL_SCHEMES, ModelScheme, StepModel
from edge_agent.prompts import messages
from edge_agent.scripted import ScriptedModel
from edge_agent.step_cache import CachedModel
from edge_agent.values import Signals

PROBLEM = "What is 2 + 2?"
STEPS = ["First, 2 + 2 = 4.", "So the answer is \\boxed{4}."]


class ToyModel:
    """A StepModel written from the protocol alone: tokens are code points; it writes STEPS, one per call."""

    def __init__(self, path, *, n_ctx: int) -> None:
        self.name = f"toy:{path.name}"
        self.path = f"toy:{path}"
        self.n_ctx = n_ctx
        self.n_threads = 1
        self.identity = "toy-v1"
        self.compute = "repack"
        self.seen: list[list[int]] = []
        self.seeds: list[int] = []

    def load(self) -> None:
        pass

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(self, tokens) -> str:
        return "".join(chr(t) for t in tokens)

    def prompt_tokens(self, messages, *, reserve: int = 0) -> list[int]:
        return self.tokenize("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")

    def next_step(self, context, *, max_tokens: int = 256, temperature: float = 0.0, on_text=None) -> Draft:
        self.seen.append(list(context))
        text = STEPS[len(self.seen) - 1]
        raw = text if extract_answer(text) is not None else text + SEPARATOR
        sig = Signals.from_dict({"n_tokens": len(raw), "has_answer": extract_answer(text) is not None})
        finish = "answer" if sig.has_answer else "separator"
        return Draft(text, raw, tuple(self.tokenize(raw)), sig, finish, len(context), 0.0)

    def verify(self, context, question, yes, no) -> Verdict:
        return Verdict(p_yes=0.5, p_no=0.5, evaluated=0, suffix_tokens=0, seconds=0.0)

    def room(self, context_len: int) -> int:
        return self.n_ctx - context_len

    def reseed(self, seed: int) -> None:
        self.seeds.append(seed)

    def parallel(self, n: int) -> None:
        return None  # one sequence at a time: samples run one after another

    def close(self) -> None:
        pass


def test_a_registered_scheme_opens_through_the_factory_and_the_agent_solves_on_it(monkeypatch, db):
    monkeypatch.setitem(MODEL_SCHEMES, "toy", ModelScheme(open=lambda path, *, n_ctx, n_threads: ToyModel(path, n_ctx=n_ctx)))
    model = presets.open_model("toy:adder", n_ctx=1024)
    assert isinstance(model, ToyModel) and isinstance(model, StepModel)
    assert (model.name, model.n_ctx) == ("toy:adder", 1024)

    result = Agent(model, db, "local-only", offline=True).solve(PROBLEM, Settings(n_ctx=1024, seed=7))

    assert (result.status, result.answer) == ("done", "4")
    prompt = model.prompt_tokens(messages(PROBLEM))
    step1 = model.tokenize(STEPS[0] + SEPARATOR)
    assert model.seen == [prompt, prompt + step1]  # the prompt, then the prompt and the first step's tokens
    assert PROBLEM in model.detokenize(model.seen[0])
    assert model.seeds == [7]
    row = db["sessions"].get(result.session_id)
    assert (row["model"], row["model_path"]) == ("toy:adder", "toy:adder")


def test_an_unregistered_scheme_is_not_a_model(monkeypatch):
    monkeypatch.delitem(MODEL_SCHEMES, "toy", raising=False)
    with pytest.raises(ModelError, match="unknown model preset"):
        presets.open_model("toy:adder")


def test_the_scripted_model_records_every_context_it_was_given(tmp_path, db):
    script = tmp_path / "s.json"
    script.write_text(json.dumps(STEPS))
    model = presets.open_model(f"script:{script}", n_ctx=2048)
    assert isinstance(model, ScriptedModel)

    result = Agent(model, db, "local-only", offline=True).solve(PROBLEM, Settings(n_ctx=2048))

    assert (result.status, result.answer) == ("done", "4")
    prompt = model.prompt_tokens(messages(PROBLEM))
    assert model.seen == [prompt, prompt + list(result.new_steps[0].token_ids)]


def _models(tmp_path, db, monkeypatch):
    monkeypatch.setattr(runtime, "current", lambda: runtime.ComputeMode(False, "env", "pinned by the test"))
    script = tmp_path / "s.json"
    script.write_text(json.dumps(STEPS))
    scripted = ScriptedModel(script)
    # built, never loaded: a path that is not a model proves nothing below touches the weights
    local = LocalModel(tmp_path / "never-loaded.gguf", "never-loaded", n_ctx=512, n_threads=1)
    return {"LocalModel": local, "ScriptedModel": scripted, "CachedModel": CachedModel(scripted, db)}


MEMBERS = sorted(n for n in vars(StepModel) if not n.startswith("_"))


@pytest.mark.parametrize("kind", ["LocalModel", "ScriptedModel", "CachedModel"])
def test_each_model_is_a_step_model_and_writes_every_member_out(kind, tmp_path, db, monkeypatch):
    model = _models(tmp_path, db, monkeypatch)[kind]
    assert isinstance(model, StepModel)
    assert {"next_step", "prompt_tokens", "verify", "compute", "identity", "load"} <= set(MEMBERS)
    for member in MEMBERS:
        # getattr_static: found on the class or the instance itself, never through CachedModel's __getattr__
        inspect.getattr_static(model, member)
        wanted = vars(StepModel)[member]
        if not inspect.isfunction(wanted):
            continue
        assert callable(getattr(model, member)), member
        have = inspect.signature(getattr(type(model), member)).parameters
        for p in inspect.signature(wanted).parameters.values():
            assert p.name in have and have[p.name].kind == p.kind, f"{kind}.{member}: parameter {p.name}"
            assert (p.default is p.empty) == (have[p.name].default is p.empty), f"{kind}.{member}: {p.name}'s default"
    assert kind != "LocalModel" or model._llm is None  # noqa: SLF001 - still not loaded


def test_the_cached_model_hands_every_member_to_the_model_it_wraps(tmp_path, db, monkeypatch):
    models = _models(tmp_path, db, monkeypatch)
    inner, cached = models["ScriptedModel"], models["CachedModel"]
    for member in ("name", "path", "n_ctx", "n_threads", "compute"):
        assert getattr(cached, member) == getattr(inner, member), member
    context = cached.prompt_tokens(messages(PROBLEM))
    assert context == inner.prompt_tokens(messages(PROBLEM))
    assert cached.detokenize(cached.tokenize("héllo")) == "héllo"
    assert cached.room(10) == inner.room(10)
    cached.reseed(3)
    assert inner.seed == 3
    first = cached.next_step(context)
    again = cached.next_step(context)
    assert (first.text, again.text, cached.hits, cached.misses) == (STEPS[0], STEPS[0], 1, 1)
    assert inner.seen == [context]  # the second step was replayed: the wrapped model never saw it
    assert cached.identity == f"{inner.script_path}|{inner.script_path.stat().st_size}|" \
                              f"{inner.script_path.stat().st_mtime_ns}"
