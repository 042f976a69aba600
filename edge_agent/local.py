"""The local model: llama.cpp through llama-cpp-python, one step at a time, with cheap signals.

Why a hand-written decode loop: ``Llama(logits_all=True)`` would give per-token scores but makes
decoding ~7.5x slower. With ``logits_all=False`` the context still holds the logits of the last
evaluated token, so after each token we read them (``_ctx.get_logits()``), take the argmax, and
compute entropy and top-1 probability from the same array. The loop also owns the KV cache: it
keeps the evaluated token sequence and, for a new step, evaluates only the tokens the context
has not seen.
"""

from __future__ import annotations

import codecs
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .answer import boxed, extract_answer
from .errors import ContextError, ModelError
from .values import Signals

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .model import Parallel

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Draft:
    """What one call to ``next_step`` produced."""

    text: str  # the step without its separator, stripped
    raw: str  # exactly the decoded text of token_ids
    token_ids: tuple[int, ...]
    signals: Signals
    finish: str  # separator | answer | eos | length | context
    evaluated: int  # tokens run through the model for this step (prefix sync + generated)
    seconds: float
    would_be_s: float | None = None  # replayed from the step cache: what computing it took

@dataclass(frozen=True)
class Verdict:
    """What ``verify`` read: next-token probability masses of the yes and no answers."""

    p_yes: float
    p_no: float
    evaluated: int  # tokens run through the model (the question's, when the context was cached)
    suffix_tokens: int
    seconds: float


class _SignalAccumulator:
    """Running per-step statistics over per-token entropy and top-1 probability."""

    def __init__(self) -> None:
        self.n = 0
        self.sum_ent = 0.0
        self.max_ent = 0.0
        self.first_ent = 0.0
        self.sum_top1 = 0.0
        self.min_top1 = 1.0
        self.first_top1 = 1.0
        self.low = 0
        self.sum_lp = 0.0
        self.min_lp = 0.0

    def add(self, entropy: float, top1: float, logprob: float) -> None:
        if self.n == 0:
            self.first_ent, self.first_top1 = entropy, top1
        self.n += 1
        self.sum_ent += entropy
        self.max_ent = max(self.max_ent, entropy)
        self.sum_top1 += top1
        self.min_top1 = min(self.min_top1, top1)
        self.low += top1 < 0.5
        self.sum_lp += logprob
        self.min_lp = min(self.min_lp, logprob)

    def signals(self, has_answer: bool) -> Signals:
        n = max(self.n, 1)
        return Signals(
            n_tokens=self.n,
            mean_entropy=round(self.sum_ent / n, 6),
            max_entropy=round(self.max_ent, 6),
            first_entropy=round(self.first_ent, 6),
            mean_top1=round(self.sum_top1 / n, 6) if self.n else 1.0,
            min_top1=round(self.min_top1, 6),
            first_top1=round(self.first_top1, 6),
            low_top1_share=round(self.low / n, 6),
            has_answer=has_answer,
            sum_logprob=round(self.sum_lp, 6),
            mean_logprob=round(self.sum_lp / n, 6),
            min_logprob=round(self.min_lp, 6),
        )


def pick_token(np: Any, logits: Any, temperature: float, rng: Any, z_buf: Any, e_buf: Any) -> tuple[int, float, float, float]:
    """Choose the next token from ``logits``: (token, entropy in nats, top-1 probability, its log-probability).

    Greedy at temperature 0, else a draw from ``rng``. ``z_buf`` and ``e_buf`` are scratch arrays of the
    vocabulary's size. Shared by the one-sequence decoder and the batched one, so both read the same signals.
    """
    top = int(np.argmax(logits))
    z = np.subtract(logits, logits[top], out=z_buf)
    e = np.exp(z, out=e_buf)
    total = float(e.sum())
    # p = e / Z, so H = log Z - E_p[z] and the top-1 probability is 1 / Z
    ent = max(math.log(total) - float(np.dot(e, z)) / total, 0.0)
    top1 = 1.0 / total
    log_z = math.log(total)
    if temperature <= 0:
        return top, ent, top1, -log_z
    p = np.exp(z / temperature)
    p /= p.sum()
    tok = int(rng.choice(len(p), p=p))
    return tok, ent, top1, float(z[tok]) - log_z


class StepBuilder:
    """One step as it is decoded, token by token: its text, signals and stop rule (blank line or answer).

    The caller owns the model and the budget of tokens; this owns what a step is. End-of-turn tokens
    (``eos``) end the step without being part of it.
    """

    def __init__(self, eog: frozenset[int], detokenize: Callable[[list[int]], bytes],
                 on_text: Callable[[str], None] | None = None) -> None:
        self._eog = eog
        self._detokenize = detokenize
        self._on_text = on_text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.acc = _SignalAccumulator()
        self.new: list[int] = []
        self.text = ""
        self.finish = "length"

    def eos(self, tok: int) -> bool:
        """True (and the step ends) if ``tok`` closes the turn."""
        if tok in self._eog:
            self.finish = "eos"
            return True
        return False

    def add(self, tok: int, entropy: float, top1: float, logprob: float) -> bool:
        """Append a chosen token; True when the step is complete (a blank line, or a boxed answer)."""
        self.acc.add(entropy, top1, logprob)
        self.new.append(tok)
        piece = self._decoder.decode(self._detokenize([tok]))
        self.text += piece
        if self._on_text and piece:
            self._on_text(piece)
        body = self.text.lstrip()
        if SEPARATOR in body:
            self.finish = "separator"
            return True
        if "}" in piece and boxed(body) is not None:
            self.finish = "answer"
            return True
        return False

    def draft(self, evaluated: int, seconds: float) -> Draft:
        shown = self.text.lstrip().split(SEPARATOR, 1)[0].strip()
        answer = extract_answer(shown) is not None
        finish = "answer" if answer and self.finish == "separator" else self.finish
        return Draft(text=shown, raw=self.text, token_ids=tuple(self.new), signals=self.acc.signals(answer),
                     finish=finish, evaluated=evaluated, seconds=seconds)


class LocalModel:
    """One llama.cpp context, built on first use (a ``StepModel``, edge_agent/model.py)."""

    def __init__(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        seed: int = 0,
    ) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, os.cpu_count() or 1)
        self.seed = seed
        self.identity: str | None = None  # the weights' sha256 when known (a verified preset); see step_cache
        self._llm: Any = None
        self._kv: list[int] = []  # tokens whose KV entries are in the context, in order
        self._eog: frozenset[int] = frozenset()
        self._np: Any = None
        self._rng: Any = None
        self._z: Any = None
        self._e: Any = None
        # logits of the last KV token kept aside by ``verify``: the context's own logits were
        # overwritten by the question's, and keeping a copy avoids re-evaluating that token
        self._held: Any = None
        self._suffixes: dict[str, list[int]] = {}

    # -- loading -------------------------------------------------------------------------------
    @property
    def llm(self) -> Any:
        if self._llm is None:
            self._load()
        return self._llm

    def load(self) -> None:
        """Load the weights now (``StepModel.load``): a bad model fails here, not at its first step."""
        self.llm  # noqa: B018 - the property loads

    @property
    def compute(self) -> str:
        """llama.cpp's compute mode for this model ("repack" or "plain"; see runtime): greedy steps depend on it."""
        from . import runtime

        return runtime.current().name

    def _load(self) -> None:
        import numpy as np
        from llama_cpp import Llama

        from . import runtime

        runtime.apply()  # before any Llama: on some CPUs the weight repack crashes the first decode
        try:
            llm = Llama(
                model_path=str(self.path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=False,
                seed=self.seed,
                verbose=False,
            )
        except Exception as e:  # llama-cpp-python raises ValueError/RuntimeError with no detail
            raise ModelError(
                f"cannot load model {self.path}: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                "(the GGUF is corrupt, truncated or of an unsupported architecture): pass another model"
            ) from None
        self._np = np
        self._rng = np.random.default_rng(self.seed)
        self._z = np.empty(llm.n_vocab(), dtype=np.float32)
        self._e = np.empty(llm.n_vocab(), dtype=np.float32)
        self._llm = llm
        self._eog = self._find_eog(llm)
        self._kv = []
        self._held = None

    @staticmethod
    def _find_eog(llm: Any) -> frozenset[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        eog = {i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}
        eog.add(llm.token_eos())
        return frozenset(eog)

    @property
    def stop_tokens(self) -> frozenset[int]:
        """The tokens that end the assistant's turn (end of generation)."""
        self.llm  # noqa: B018 - the property loads
        return self._eog

    def parallel(self, n: int) -> "Parallel | None":
        """``n`` sequences decoded in one llama.cpp batch on these weights (edge_agent/batch.py)."""
        from .batch import BatchDecoder

        return BatchDecoder(self, n)

    # -- prompt ----------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        """Apply the GGUF's chat template and open the assistant turn (never close it)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = self.llm
        template = llm.metadata.get("tokenizer.chat_template") or CHATML
        bos = llm._model.token_get_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return fmt(messages=messages).prompt

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def prompt_tokens(self, messages: list[dict[str, str]], *, reserve: int = 0) -> list[int]:
        """Tokens of the rendered prompt; a prompt that leaves < ``reserve`` tokens is refused."""
        tokens = self.tokenize(self.render(messages), special=True)
        if len(tokens) + reserve > self.n_ctx:
            raise ContextError(
                f"the problem needs {len(tokens)} prompt tokens and {reserve} more to answer, "
                f"but the context holds {self.n_ctx}: shorten the problem or raise --n-ctx"
            )
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    # -- KV cache ----------------------------------------------------------------------------------
    def sync(self, tokens: Sequence[int]) -> int:
        """Make the context hold exactly ``tokens`` with the last token's logits ready.

        Evaluates only what the context has not seen; returns how many tokens that was.
        """
        if not tokens:
            raise ValueError("cannot sync an empty context")
        llm = self.llm
        keep = 0
        limit = min(len(self._kv), len(tokens) - 1)  # the last token is re-run if its logits are stale
        while keep < limit and self._kv[keep] == tokens[keep]:
            keep += 1
        if keep == len(tokens) - 1 and len(self._kv) == len(tokens) and self._kv[-1] == tokens[-1]:
            return 0  # the context already ends here and its logits are those of tokens[-1]
        llm.n_tokens = keep  # eval() drops KV entries from n_tokens on
        self._kv = self._kv[:keep]
        rest = list(tokens[keep:])
        self._held = None
        llm.eval(rest)
        self._kv.extend(rest)
        return len(rest)

    def _logits(self) -> "np.ndarray":
        if self._held is not None:
            return self._held
        np = self._np
        return np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self._z.shape[0],))

    def _pick(self, temperature: float) -> tuple[int, float, float, float]:
        """Choose the next token and return (token, entropy in nats, top-1 probability, the token's log-probability)."""
        return pick_token(self._np, self._logits(), temperature, self._rng, self._z, self._e)

    # -- one step ----------------------------------------------------------------------------------
    def next_step(
        self,
        context: Sequence[int],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        on_text: Callable[[str], None] | None = None,
    ) -> Draft:
        """Continue the assistant turn after ``context`` until a blank line, an answer or a limit."""
        start = time.perf_counter()
        evaluated = self.sync(context)
        llm = self._llm
        step = StepBuilder(self._eog, llm.detokenize, on_text)
        for _ in range(max_tokens):
            if len(self._kv) >= self.n_ctx:
                step.finish = "context"
                break
            tok, ent, top1, logprob = self._pick(temperature)
            if step.eos(tok):
                break
            self._held = None
            llm.eval([tok])
            self._kv.append(tok)
            evaluated += 1
            if step.add(tok, ent, top1, logprob):
                break
        return step.draft(evaluated, time.perf_counter() - start)

    # -- self-verification ---------------------------------------------------------------------------
    def question_suffix(self, question: str) -> list[int]:
        """Tokens that close the assistant turn, ask ``question`` as the user and open a new assistant turn.

        Read off the GGUF's own chat template: a conversation is rendered with a sentinel as the
        assistant's text, and whatever the template puts after the sentinel is the suffix.
        """
        if question not in self._suffixes:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            llm = self.llm
            sentinel = "\u2063EDGE-AGENT-STEP\u2063"
            template = llm.metadata.get("tokenizer.chat_template") or CHATML
            eos = llm._model.token_get_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token="")
            rendered = fmt(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": sentinel},
                                     {"role": "user", "content": question}]).prompt
            tail = rendered.split(sentinel, 1)[1] if sentinel in rendered else f"\n{question}\n"
            self._suffixes[question] = self.tokenize(tail, special=True)
        return list(self._suffixes[question])

    def verify(self, context: Sequence[int], question: str, yes: Sequence[str], no: Sequence[str]) -> "Verdict":
        """The model's answer to a yes/no ``question`` asked right after ``context`` (prompt + steps).

        Only the question's tokens are evaluated when ``context`` is already in the KV cache (as it
        is right after ``next_step``); afterwards the cache is cut back to ``context`` and its last
        logits are kept, so the next step continues from there without evaluating anything again.
        P(yes) and P(no) are next-token probability masses summed over the variants that are one token.
        """
        start = time.perf_counter()
        suffix = self.question_suffix(question)  # loads the model: numpy is ready after this
        np = self._np
        if len(context) + len(suffix) > self.n_ctx:
            raise ContextError("no room in the context for the verification question")
        evaluated = self.sync(context)
        llm = self._llm
        n = len(self._kv)
        held = np.array(self._logits(), copy=True)
        self._held = None
        llm.eval(suffix)
        self._kv.extend(suffix)
        evaluated += len(suffix)
        logits = self._logits().astype(np.float64)
        top = float(logits.max())
        log_z = top + math.log(float(np.exp(logits - top).sum()))

        def mass(words: Sequence[str]) -> float:
            # only one-token variants: a split one would count its first piece ("Y") as the whole word
            ids = {t[0] for w in words if len(t := self.tokenize(w)) == 1}
            return float(sum(math.exp(float(logits[i]) - log_z) for i in ids))

        p_yes, p_no = mass(yes), mass(no)
        llm.n_tokens = n  # the next eval drops the question's KV entries
        self._kv = self._kv[:n]
        self._held = held
        return Verdict(p_yes=p_yes, p_no=p_no, evaluated=evaluated, suffix_tokens=len(suffix),
                       seconds=time.perf_counter() - start)

    def reseed(self, seed: int) -> None:
        """Restart the sampler's random stream (used only when temperature > 0)."""
        import numpy as np

        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def room(self, context_len: int) -> int:
        """Tokens left in the context window after ``context_len``."""
        return self.n_ctx - context_len

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
            self._kv = []
            self._held = None
