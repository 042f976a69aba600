"""The step cache: with greedy decoding the same model on the same context tokens writes the same step.

``CachedModel`` wraps a local model (same interface). At temperature 0 each step is looked up by
(model identity, the exact context token ids, the step's token cap); a hit is replayed -- its
tokens, text, signals and finish exactly as first computed -- and marked with the seconds computing
it took, so reports show real and would-be time side by side. A miss is computed and kept. Sampled
steps are never cached. Bench, tune and the atlas use it; ``solve`` only when asked (``--step-cache``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import store

from .local import Draft, Verdict
from .smallfile import warn_once
from .values import Signals

if TYPE_CHECKING:  # pragma: no cover
    from store import Database

    from .model import Parallel, StepModel


def model_identity(model: Any) -> str:
    """What makes a model the same model: a verified preset's sha256 (the same on every machine), else
    its file (resolved path, size, mtime), never its name."""
    if getattr(model, "identity", None):
        return model.identity
    path = getattr(model, "script_path", None) or getattr(model, "path")
    path = os.path.realpath(str(path))
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def step_key(identity: str, context: Sequence[int], max_tokens: int, compute: str = "repack") -> str:
    """The cache key of a greedy step. llama.cpp's compute mode is part of it (a plain-mode step differs from a
    repack-mode one); "repack", the mode every earlier entry was computed in, keeps the key it always had."""
    key = {"model": identity, "context": list(context), "max_tokens": max_tokens, "decode": "greedy"}
    if compute != "repack":
        key["compute"] = compute
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def compute_mode(model: Any) -> str:
    """The model's compute mode ("repack" for a model that has none, such as the scripted one)."""
    return getattr(model, "compute", None) or "repack"


class CachedModel:
    """A local model whose greedy steps are replayed from (and kept in) the step cache in ``db``.

    A ``StepModel`` itself: ``next_step`` and ``identity`` are its own, the rest of the interface is the
    wrapped model's, each member delegated by name so the type checker sees the whole seam."""

    def __init__(self, model: StepModel, db: Database) -> None:
        self.inner = model
        self.db = db
        self.identity: str = model_identity(model)
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:
        # only what is outside StepModel (``llm``, ``sync``, ``script_path``...): callers that reach past
        # the seam into one kind of model; every protocol member is written out below
        return getattr(self.inner, name)

    # -- StepModel, delegated ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def path(self) -> str | os.PathLike[str]:
        return self.inner.path

    @property
    def n_ctx(self) -> int:
        return self.inner.n_ctx

    @property
    def n_threads(self) -> int:
        return self.inner.n_threads

    @property
    def compute(self) -> str:
        return self.inner.compute

    def load(self) -> None:
        self.inner.load()

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.inner.tokenize(text, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.inner.detokenize(tokens)

    def prompt_tokens(self, messages: list[dict[str, str]], *, reserve: int = 0) -> list[int]:
        return self.inner.prompt_tokens(messages, reserve=reserve)

    def verify(self, context: Sequence[int], question: str, yes: Sequence[str], no: Sequence[str]) -> Verdict:
        return self.inner.verify(context, question, yes, no)

    def room(self, context_len: int) -> int:
        return self.inner.room(context_len)

    def reseed(self, seed: int) -> None:
        self.inner.reseed(seed)

    def parallel(self, n: int) -> Parallel | None:
        return None  # the cache replays sequential greedy steps: a batch's would be another record

    def close(self) -> None:
        self.inner.close()

    # -- the cached step ---------------------------------------------------------------------------

    def next_step(self, context: Sequence[int], *, max_tokens: int = 256, temperature: float = 0.0,
                  on_text: Callable[[str], None] | None = None) -> Draft:
        if temperature > 0:
            return self.inner.next_step(context, max_tokens=max_tokens, temperature=temperature, on_text=on_text)
        start = time.perf_counter()
        key = step_key(self.identity, context, max_tokens, compute_mode(self.inner))
        try:
            hit, damaged = store.step_cache_get(self.db, key), False
        except store.DamagedRow as e:  # only a cache: a miss, computed again below and replaced
            hit, damaged = None, True
            warn_once(f"note: {e.table} {e.key}, column {e.column} was damaged: that step is computed again and "
                      "the entry replaced (further damaged entries are replaced silently)", once="step_cache")
        if hit is not None:
            self.hits += 1
            if on_text and hit["raw"]:
                on_text(hit["raw"])
            return Draft(text=hit["text"], raw=hit["raw"], token_ids=tuple(json.loads(hit["token_ids"])),
                         signals=Signals.from_dict(json.loads(hit["signals"])), finish=hit["finish"], evaluated=0,
                         seconds=time.perf_counter() - start, would_be_s=hit["seconds"])
        draft = self.inner.next_step(context, max_tokens=max_tokens, temperature=temperature, on_text=on_text)
        self.misses += 1
        store.step_cache_put(self.db, key, replace=damaged, model=self.identity, context_tokens=len(context),
                             token_ids=json.dumps(list(draft.token_ids)), text=draft.text, raw=draft.raw,
                             signals=json.dumps(draft.signals.to_dict()), finish=draft.finish, seconds=draft.seconds)
        return draft
