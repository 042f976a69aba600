"""The model seam: what the agent and the tools ask of a local model, and how ``--model SCHEME:SPEC`` opens one.

``StepModel`` is the whole interface, read off its callers (the agent loop, cloud steps, bench, the atlas,
serve, chat, doctor, the llm plugin): ``LocalModel`` (llama.cpp), ``ScriptedModel`` (a fixed list of steps)
and ``CachedModel`` (greedy steps replayed from the step cache) each implement all of it. Building a model
is cheap; the weights load on first use, or at ``load()`` for a caller that wants a bad model to fail early.

``MODEL_SCHEMES`` maps the scheme of a ``--model SCHEME:SPEC`` to how it opens (``script:FILE.json``
is the one the product ships); ``presets.open_model`` consults it before presets and paths, so a test can
register a model class of its own in-process and drive the real factory, agent and store with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import ModelError

if TYPE_CHECKING:  # pragma: no cover - the types only: opening the seam loads nothing
    from .local import Draft, Verdict

__all__ = ["MODEL_SCHEMES", "ModelScheme", "Parallel", "StepModel", "split_scheme"]


@runtime_checkable
class StepModel(Protocol):
    """A local model as the agent uses it: one step at a time on token ids, a yes/no read, its identity."""

    @property
    def name(self) -> str:
        """The display name, stored with the session."""
        ...

    @property
    def path(self) -> str | os.PathLike[str]:
        """What ``--model`` resolves to again on resume (a GGUF file, or ``script:FILE``)."""
        ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def n_threads(self) -> int: ...

    @property
    def identity(self) -> str | None:
        """The weights' sha256 when known (a verified preset), else None: the step cache keys by file."""
        ...

    @property
    def compute(self) -> str:
        """llama.cpp's compute mode ("repack" or "plain"): a greedy step depends on it."""
        ...

    def load(self) -> None:
        """Load the weights now (otherwise they load on first use): a bad model fails here."""
        ...

    def tokenize(self, text: str, *, special: bool = False) -> list[int]: ...

    def detokenize(self, tokens: Sequence[int]) -> str: ...

    def prompt_tokens(self, messages: list[dict[str, str]], *, reserve: int = 0) -> list[int]:
        """The rendered prompt's tokens; a prompt that leaves fewer than ``reserve`` is refused (ContextError)."""
        ...

    def next_step(self, context: Sequence[int], *, max_tokens: int = 256, temperature: float = 0.0,
                  on_text: Callable[[str], None] | None = None) -> Draft:
        """Continue the assistant turn after ``context`` until a blank line, an answer or a limit."""
        ...

    def verify(self, context: Sequence[int], question: str, yes: Sequence[str], no: Sequence[str]) -> Verdict:
        """The model's answer to a yes/no ``question`` asked right after ``context``."""
        ...

    def room(self, context_len: int) -> int:
        """Tokens left in the context window after ``context_len``."""
        ...

    def reseed(self, seed: int) -> None:
        """Restart the sampler's random stream (temperature > 0 only)."""
        ...

    def parallel(self, n: int) -> Parallel | None:
        """``n`` views of this model that separate threads may drive at once (each a ``StepModel``), or
        None if it can only run one sequence at a time (then callers run one after another)."""
        ...

    def close(self) -> None: ...


class Parallel:
    """``n`` sequences of one model that separate threads drive at once (``seqs``); ``close`` ends them.

    ``close`` is also how a caller stops them early: a sequence waiting for its step is woken with an error.
    """

    seqs: list[StepModel]

    def close(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class ModelScheme:
    """How ``--model SCHEME:SPEC`` is checked (cheaply, before anything is touched) and opened."""

    open: Callable[..., StepModel]  # (file, *, n_ctx, n_threads) -> the model; weights load on first use
    check: Callable[[str], Path] = Path  # SPEC -> its file, or a ModelError that says what to pass


def _script_file(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.is_file():  # missing, or not a regular file (a FIFO would block)
        raise ModelError(f"scripted model not found: {path}: pass script:FILE.json")
    return path


def _open_script(path: Path, *, n_ctx: int, n_threads: int | None = None) -> StepModel:
    from .scripted import ScriptedModel  # a scripted model (tests, demos): see edge_agent/scripted.py

    return ScriptedModel(path, n_ctx=n_ctx)  # one "thread": n_threads means nothing to it


MODEL_SCHEMES: dict[str, ModelScheme] = {"script": ModelScheme(open=_open_script, check=_script_file)}


def split_scheme(name: str) -> tuple[ModelScheme, str, str] | None:
    """``SCHEME:SPEC`` with a registered scheme -> (its entry, scheme, spec); anything else -> None."""
    scheme, sep, spec = name.partition(":")
    if not sep or scheme not in MODEL_SCHEMES:
        return None
    return MODEL_SCHEMES[scheme], scheme, spec
