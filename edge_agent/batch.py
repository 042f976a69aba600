"""Several sequences decoded together: one llama.cpp context, one ``llama_decode`` per token for all of them.

Why: on a CPU one decoded token costs almost as much for one sequence as for several, since the weights
are read once per batch. ``BatchDecoder`` gives ``n`` views of one ``LocalModel`` (``Parallel.seqs``), each
a ``StepModel`` bound to one sequence of a second llama.cpp context on the same weights. Each view is
driven by its own thread (an ``Agent`` run); a view's ``next_step`` hands its request to the decoder's
thread and waits. That thread keeps every waiting sequence in one batch: a sequence whose step ends
(blank line, answer, end of turn, its token cap) leaves the batch and its caller gets its ``Draft``; the
others go on, and a sequence that asks again joins the next ``llama_decode`` (continuous batching).

Each sequence has its own sampler (greedy, or temperature with its own seeded stream), its own signals
(the same per-token entropy, top-1 and log-probability as ``LocalModel.next_step``, by the same code) and
its own KV entries. A new context shares the longest prefix another sequence already holds
(``llama_memory_seq_cp``: the prompt's KV entries are evaluated once), and evaluates only the rest.

Greedy tokens can differ from the one-sequence decoder's when the batch's shape changes the float
arithmetic, as they do between compute modes: a batched step is a record, never a cache entry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ContextError, ModelError
from .local import Draft, StepBuilder, Verdict, pick_token
from .model import Parallel

if TYPE_CHECKING:  # pragma: no cover
    from .local import LocalModel

__all__ = ["MAX_BATCH_CELLS", "BatchDecoder", "Interrupted", "SeqView", "batch_cells"]

# KV cells of one batched context, which llama.cpp allocates up front: 64 sequences of 4,096 tokens, about
# 3 GiB of KV entries for the 0.5B edge model (12 KiB a token)
MAX_BATCH_CELLS = 1 << 18
N_BATCH = 512  # tokens per llama_decode (prefills longer than this are split)
SOLO_BELOW = 4  # fewer ready sequences than this decode one at a time (see BatchDecoder._round)


class Interrupted(Exception):
    """The batch was closed while a sequence waited for its step (Ctrl-C, or another sequence failed)."""


def batch_cells(n_seq: int, n_ctx: int) -> int:
    """KV cells a batch of ``n_seq`` sequences of up to ``n_ctx`` tokens each needs; refused if too many."""
    cells = n_seq * n_ctx
    if cells > MAX_BATCH_CELLS:
        raise ContextError(
            f"{n_seq} sequences of {n_ctx:,} tokens need a {cells:,}-token batch context, above "
            f"{MAX_BATCH_CELLS:,}: lower --samples or --n-ctx"
        )
    return cells


@dataclass
class _Request:
    """One view's ask: continue ``context`` by one step."""

    context: list[int]
    max_tokens: int
    temperature: float
    builder: StepBuilder
    start: float
    done: threading.Event = field(default_factory=threading.Event)
    draft: Draft | None = None
    error: BaseException | None = None
    evaluated: int = 0
    placed: bool = False  # its context is in the sequence's KV (or queued to be)


@dataclass
class _Seq:
    """What the decoder knows of one sequence: its KV tokens, what it must evaluate next, its request."""

    kv: list[int] = field(default_factory=list)  # tokens whose KV entries this sequence holds, in order
    pending: list[int] = field(default_factory=list)  # tokens to evaluate before sampling again
    request: _Request | None = None
    rng: Any = None


class BatchDecoder(Parallel):
    """``n_seq`` views of ``model`` decoded in one batch by one thread (see the module's docstring)."""

    def __init__(self, model: LocalModel, n_seq: int, *, n_ctx: int | None = None) -> None:
        import numpy as np

        self.model = model
        self.n_seq = n_seq
        self.n_ctx_seq = n_ctx or model.n_ctx
        self.cells = batch_cells(n_seq, self.n_ctx_seq)  # refused before anything is allocated
        model.load()
        self._np = np
        self._vocab = model.llm.n_vocab()
        self._z = np.empty(self._vocab, dtype=np.float32)
        self._e = np.empty(self._vocab, dtype=np.float32)
        self._state = [_Seq(rng=np.random.default_rng(model.seed)) for _ in range(n_seq)]
        self._cond = threading.Condition()
        self._closed = False
        self._failure: BaseException | None = None
        self._ctx, self._mem, self._batch = self._new_context()
        self.decodes = 0  # llama_decode calls, and tokens they evaluated (bench reads them)
        self.evaluated = 0
        self.decode_s = 0.0  # seconds inside llama_decode
        self.seqs: list[Any] = [SeqView(self, i) for i in range(n_seq)]
        self._thread = threading.Thread(target=self._loop, name="edge-agent-batch", daemon=True)
        self._thread.start()

    # -- the llama.cpp context -----------------------------------------------------------------------
    def _new_context(self) -> tuple[Any, Any, Any]:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.cells
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = self.n_seq
        params.n_threads = params.n_threads_batch = self.model.n_threads
        params.kv_unified = True  # one buffer: a shared prefix is one set of cells, whatever sequences hold it
        params.no_perf = True
        # as the one-sequence decoder's Llama has it, so a lone sequence computes the same logits
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with suppress_stdout_stderr(disable=False):  # llama.cpp's own notes (e.g. n_ctx_seq > n_ctx_train)
            ctx = llama_cpp.llama_init_from_model(self.model.llm.model, params)
        if not ctx:
            raise ModelError(f"llama.cpp could not make a {self.cells:,}-token context for {self.n_seq} sequences: "
                             "lower --samples or --n-ctx")
        return ctx, llama_cpp.llama_get_memory(ctx), llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def close(self) -> None:
        """Stop the decoding thread (waiting callers get ``Interrupted``) and free the context."""
        import llama_cpp

        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    # -- requests (callers' threads) ------------------------------------------------------------------
    def submit(self, seq: int, request: _Request) -> Draft:
        with self._cond:
            if self._closed or self._failure is not None:
                raise Interrupted("the batch was stopped") from self._failure
            self._state[seq].request = request
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.draft is not None
        return request.draft

    def reseed(self, seq: int, seed: int) -> None:
        self._state[seq].rng = self._np.random.default_rng(seed)

    # -- the decoding thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not any(s.request for s in self._state):
                        self._cond.wait()
                    if self._closed:
                        break
                    for s, seq in enumerate(self._state):
                        if seq.request is not None and not seq.request.placed:
                            self._place(s, seq)
                    if not any(seq.pending for seq in self._state):
                        self._cond.wait(0.05)  # nothing to evaluate yet (not expected: a deferred request
                        continue               # waits for a prefix another request is evaluating)
                self._round()
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller, then the loop ends
            self._failure = e
        finally:
            with self._cond:
                for seq in self._state:
                    if seq.request is not None:
                        seq.request.error = self._failure or Interrupted("the batch was stopped")
                        seq.request.done.set()
                        seq.request = None

    def _place(self, s: int, seq: _Seq) -> None:
        """Make sequence ``s`` hold the longest prefix of its new context it can, then queue the rest."""
        import llama_cpp

        req = seq.request
        assert req is not None
        ctx = req.context
        limit = len(ctx) - 1  # the last token is always evaluated: its logits choose the next one
        keep = _common(seq.kv, ctx, limit)
        best, src = keep, None
        for t, other in enumerate(self._state):
            if t != s and (n := _common(other.kv, ctx, limit)) > best:
                best, src = n, t
        if any(t != s and _common(other.kv + other.pending, ctx, limit) > max(best, len(other.kv))
               for t, other in enumerate(self._state) if other.request is not None and other.request.placed):
            return  # another sequence is evaluating more of this context: share it once it is in
        if src is not None:  # another sequence holds more of this context: share its cells
            llama_cpp.llama_memory_seq_rm(self._mem, s, 0, -1)
            llama_cpp.llama_memory_seq_cp(self._mem, src, s, 0, best)
            seq.kv = list(ctx[:best])
        else:
            llama_cpp.llama_memory_seq_rm(self._mem, s, keep, -1)
            seq.kv = seq.kv[:keep]
        seq.pending = list(ctx[len(seq.kv):])
        req.evaluated = len(seq.pending)
        req.placed = True

    def _round(self) -> None:
        """Evaluate every active sequence's pending tokens, then choose a token for each that is ready.

        One ``llama_decode`` for all of them, except that 2 or 3 sequences go one at a time: on the CPUs
        measured (docs/speed.md) llama.cpp's matrix kernels take a batch of 2 or 3 rows no faster than
        that many single rows, and from 4 rows on a batch wins.
        """
        active = [s for s, seq in enumerate(self._state) if seq.request is not None and seq.pending]
        groups = [[s] for s in active] if 1 < len(active) < SOLO_BELOW else [active]
        for group in groups:
            self._decode(group)

    def _decode(self, group: list[int]) -> None:
        """One ``llama_decode`` over the pending tokens of the sequences in ``group`` (at most ``N_BATCH``)."""
        import llama_cpp

        b, room, ready, n = self._batch, N_BATCH, [], 0
        for s in group:
            seq = self._state[s]
            take = seq.pending[:room]
            if not take:
                continue
            for tok in take:
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = tok, len(seq.kv), 1, 0
                b.seq_id[n][0] = s
                seq.kv.append(tok)
                n += 1
            del seq.pending[:len(take)]
            room -= len(take)
            if not seq.pending:  # a prefill longer than the room goes on in the next round
                b.logits[n - 1] = 1
                ready.append((s, n - 1))
        if n == 0:
            return
        b.n_tokens = n
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, b)
        self.decode_s += time.perf_counter() - t0
        if rc != 0:
            raise ModelError(f"llama.cpp could not decode the batch (code {rc}): lower --samples or raise --n-ctx")
        self.decodes += 1
        self.evaluated += n
        for s, i in ready:
            logits = self._np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, i), shape=(self._vocab,))
            self._advance(self._state[s], logits)

    def _advance(self, seq: _Seq, logits: Any) -> None:  # noqa: C901 - one stop rule after another
        """Choose the sequence's next token; end its step when a stop rule says so."""
        req = seq.request
        assert req is not None
        step = req.builder
        if len(step.new) >= req.max_tokens:
            return self._resolve(seq, "length")
        if len(seq.kv) >= self.n_ctx_seq:
            return self._resolve(seq, "context")
        tok, ent, top1, logprob = pick_token(self._np, logits, req.temperature, seq.rng, self._z, self._e)
        if step.eos(tok):
            return self._resolve(seq, None)
        stop = step.add(tok, ent, top1, logprob)
        seq.pending = [tok]
        if stop or len(step.new) >= req.max_tokens:
            # the step's last token is evaluated with the next request (its KV entry and its logits)
            return self._resolve(seq, None)
        req.evaluated += 1

    def _resolve(self, seq: _Seq, finish: str | None) -> None:
        req = seq.request
        assert req is not None
        if finish is not None:
            req.builder.finish = finish
        seq.pending = []  # the next request's context says what to evaluate
        req.draft = req.builder.draft(req.evaluated, time.perf_counter() - req.start)
        with self._cond:
            seq.request = None
        req.done.set()


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    m = min(len(a), len(b), limit)
    while n < m and a[n] == b[n]:
        n += 1
    return n


class SeqView:
    """One sequence of a ``BatchDecoder`` as a ``StepModel``: steps are batched, the rest is the model's."""

    def __init__(self, decoder: BatchDecoder, index: int) -> None:
        self._decoder = decoder
        self._model = decoder.model
        self.index = index

    @property
    def name(self) -> str:
        return self._model.name

    @property
    def path(self) -> Any:
        return self._model.path

    @property
    def n_ctx(self) -> int:
        return self._decoder.n_ctx_seq

    @property
    def n_threads(self) -> int:
        return self._model.n_threads

    @property
    def identity(self) -> str | None:
        return self._model.identity

    @property
    def compute(self) -> str:
        return f"{self._model.compute}+batch"

    def load(self) -> None:
        self._model.load()

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return self._model.tokenize(text, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self._model.detokenize(tokens)

    def prompt_tokens(self, messages: list[dict[str, str]], *, reserve: int = 0) -> list[int]:
        with _shared:
            return self._model.prompt_tokens(messages, reserve=reserve)

    def next_step(self, context: Sequence[int], *, max_tokens: int = 256, temperature: float = 0.0,
                  on_text: Callable[[str], None] | None = None) -> Draft:
        llm = self._model.llm
        builder = StepBuilder(self._model.stop_tokens, llm.detokenize, on_text)
        request = _Request(list(context), max_tokens, temperature, builder, time.perf_counter())
        return self._decoder.submit(self.index, request)

    def verify(self, context: Sequence[int], question: str, yes: Sequence[str], no: Sequence[str]) -> Verdict:
        with _shared:  # the model's own context: one caller at a time
            return self._model.verify(context, question, yes, no)

    def room(self, context_len: int) -> int:
        return self._decoder.n_ctx_seq - context_len

    def reseed(self, seed: int) -> None:
        self._decoder.reseed(self.index, seed)

    def parallel(self, n: int) -> Parallel | None:
        return None  # a view is already one of a batch

    def close(self) -> None:
        pass  # the decoder owns the context


_shared = threading.Lock()  # the wrapped model's own llama.cpp context is not for two threads at once
