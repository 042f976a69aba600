"""A scripted local model: the ``StepModel`` interface (edge_agent/model.py), writing a fixed list of steps.

Chosen like any model, with ``--model script:FILE.json`` (the same resolver and factory the product
uses), so the agent loop, resume, serve and chat can be driven to an exact behaviour -- a loop, an
early end of turn, a slow step, an answer at a given step -- on any llama.cpp build. The real model
decides what text comes out; tests that need a particular text use this.

The file is JSON: either a list of steps, or ``{"steps": [...], "when": [{"match": "substring of
the problem", "seed": 2, "steps": [...]}], "then": "eos" | "repeat"}`` (a case with a ``seed``
holds only for a session with that seed: samples of one problem can write different steps). A step is a string or an object
``{"text": ..., "signals": {...}, "eos": true, "delay_s": 0.5, "p_yes": 0.9}``. Step ``k`` of the
script is written when the context already holds ``k`` steps after the prompt, so a rollback, a
resume or a cloud step lands on the right line of the script. After the last step the model closes
its turn (``"then": "eos"``, the default) or repeats the last step.

Tokens are UTF-8 bytes (id = byte + 3), so any text round-trips exactly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .answer import boxed, extract_answer
from .errors import ContextError, ModelError
from .local import SEPARATOR, Draft, Verdict
from .model import Parallel, StepModel
from .values import Signals

PREFIX = "script:"
_OFFSET = 3


def _load_script(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read scripted model {path}: {e}: pass a JSON list of steps") from None
    if isinstance(data, list):
        data = {"steps": data}
    if not isinstance(data, dict) or not isinstance(data.get("steps", []), list):
        raise ModelError(f"scripted model {path} must be a JSON list of steps or an object with 'steps'")
    if data.get("then", "eos") not in ("eos", "repeat"):
        raise ModelError(f"scripted model {path}: 'then' must be 'eos' or 'repeat'")
    return data


def _as_item(item: Any) -> dict[str, Any]:
    return {"text": item} if isinstance(item, str) else dict(item)


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class _Copies(Parallel):
    def __init__(self, seqs: list[StepModel]) -> None:
        self.seqs = seqs

    def close(self) -> None:
        for m in self.seqs:
            m.close()


class ScriptedModel:
    """Writes the steps of a script; otherwise behaves as ``LocalModel`` does (KV accounting included)."""

    def __init__(self, script: str | Path, *, n_ctx: int = 4096, seed: int = 0) -> None:
        self.script_path = Path(script).resolve()
        self.path = PREFIX + str(self.script_path)  # stored with the session: resume rebuilds this model
        self.name = PREFIX + self.script_path.name
        self.n_ctx = n_ctx
        self.n_threads = 1
        self.seed = seed
        self.identity: str | None = None  # no weights: the step cache keys a script by its file
        self.script = _load_script(self.script_path)
        self.seen: list[list[int]] = []  # every context next_step was given, in order (for tests)
        self._kv: list[int] = []
        self._prompts: dict[tuple[int, ...], str] = {}
        self._peers: list[ScriptedModel] = []  # the copies of one ``parallel`` (their KV is shared)

    # -- the StepModel interface (edge_agent/model.py) ------------------------------------------------
    @property
    def compute(self) -> str:
        return "repack"  # no llama.cpp: the mode every step-cache key had before modes existed

    def load(self) -> None:
        """Nothing to load: the script was read when the model was built."""

    @property
    def llm(self) -> "ScriptedModel":  # for callers that still touch ``.llm`` to load early; prefer load()
        return self

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return [b + _OFFSET for b in text.encode("utf-8")]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(t - _OFFSET for t in tokens if t >= _OFFSET).decode("utf-8", errors="replace")

    def render(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def prompt_tokens(self, messages: list[dict[str, str]], *, reserve: int = 0) -> list[int]:
        tokens = self.tokenize(self.render(messages))
        if len(tokens) + reserve > self.n_ctx:
            raise ContextError(
                f"the problem needs {len(tokens)} prompt tokens and {reserve} more to answer, "
                f"but the context holds {self.n_ctx}: shorten the problem or raise --n-ctx"
            )
        problem = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        self._prompts[tuple(tokens)] = problem
        return tokens

    def sync(self, tokens: Sequence[int]) -> int:
        keep = _common(self._kv, tokens)
        if keep == len(tokens) == len(self._kv):
            return 0
        shared = max((_common(p._kv, tokens) for p in self._peers if p is not self), default=0)
        self._kv = list(tokens)
        return len(tokens) - max(keep, shared)

    def next_step(self, context: Sequence[int], *, max_tokens: int = 256, temperature: float = 0.0,
                  on_text: Callable[[str], None] | None = None) -> Draft:
        start = time.perf_counter()
        self.seen.append(list(context))
        evaluated = self.sync(context)
        item = self._item(context)
        if item is None or item.get("eos"):
            return Draft("", "", (), Signals(), "eos", evaluated, time.perf_counter() - start)
        text = str(item["text"]).strip()
        answer = extract_answer(text) is not None
        raw = text if answer and boxed(text) is not None else text + SEPARATOR
        tokens = self.tokenize(raw)
        finish = "answer" if answer else "separator"
        if len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
            raw = self.detokenize(tokens)
        delay = float(item.get("delay_s", 0.0))
        pieces = raw.split(" ")
        for n, piece in enumerate(pieces):  # stream word by word, as a decoder would
            if delay:
                time.sleep(delay / len(pieces))
            if on_text:
                on_text(piece if n == len(pieces) - 1 else piece + " ")
        self._kv.extend(tokens)
        shown = raw.strip().split(SEPARATOR, 1)[0].strip()
        sig = {"n_tokens": len(tokens), **item.get("signals", {}), "has_answer": extract_answer(shown) is not None}
        return Draft(shown, raw, tuple(tokens), Signals.from_dict(sig), finish, evaluated + len(tokens),
                     time.perf_counter() - start)

    def verify(self, context: Sequence[int], question: str, yes: Sequence[str], no: Sequence[str]) -> Verdict:
        suffix = self.tokenize(f"\n<user>\n{question}\n<assistant>\n")
        if len(context) + len(suffix) > self.n_ctx:
            raise ContextError("no room in the context for the verification question")
        evaluated = self.sync(context)
        item = self._item(context, last=True) or {}
        p_yes = float(item.get("p_yes", 0.5))
        return Verdict(p_yes=p_yes, p_no=1.0 - p_yes, evaluated=evaluated + len(suffix),
                       suffix_tokens=len(suffix), seconds=0.0)

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def room(self, context_len: int) -> int:
        return self.n_ctx - context_len

    def parallel(self, n: int) -> Parallel | None:
        """``n`` copies of the script, one for each thread: the seam of llama.cpp's batch, without weights."""
        copies = [ScriptedModel(self.script_path, n_ctx=self.n_ctx, seed=self.seed) for _ in range(n)]
        for m in copies:  # as in llama.cpp's batch, a prefix another copy holds is not evaluated again
            m._peers = copies
        seqs: list[StepModel] = list(copies)
        return _Copies(seqs)

    def close(self) -> None:
        self._kv = []

    # -- the script ------------------------------------------------------------------------------------
    def _item(self, context: Sequence[int], last: bool = False) -> dict[str, Any] | None:
        """The script line for the step after ``context`` (``last``: for the step that ends it)."""
        prompt = max((p for p in self._prompts if tuple(context[: len(p)]) == p), key=len, default=None)
        if prompt is None:
            raise ModelError("scripted model: the context does not start with a prompt it rendered")
        done = self.detokenize(context[len(prompt):])
        index = len(done.split(SEPARATOR)) - (1 if done.endswith(SEPARATOR) or not done else 0)
        if last:
            index -= 1
        steps = self._steps(self._prompts[prompt])
        if index < len(steps):
            return _as_item(steps[index])
        if self.script.get("then") == "repeat" and steps:
            return _as_item(steps[-1])
        return None

    def _steps(self, problem: str) -> list[Any]:
        for case in self.script.get("when", []):
            if case.get("match", "") in problem and case.get("seed", self.seed) == self.seed:
                return list(case.get("steps", []))
        return list(self.script.get("steps", []))
