"""What the cloud's read of a trace says: per step, how much less the cloud believes the edge's tokens than the edge.

For each edge token we have ``e`` (the edge's own log-probability, from the step's signals or a local read)
and ``c`` (the cloud's, from ``cloud.reads.read``). BASELINES.md measured on the bench pair: the whole-trace
``sum(e - c)`` tells a wrong trace from a right one (AUROC 0.78 dev, 0.86 test); the step with the largest
``sum(e - c)`` is where a cloud step helps most often; after a repair, the finish with the higher mean
``(c - e)`` is the one to keep.

Token ids go to the cloud as they are when both models share a vocabulary (``ids``); otherwise the text goes,
and the cloud's tokens are mapped back to the edge's steps by their character offsets (``text``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

LOW_P = math.log(0.1)  # a token the cloud gives less than 10% is "improbable"


@dataclass(frozen=True)
class StepRead:
    """One step's tokens as the cloud and the edge score them (log-probs in nats)."""

    index: int
    n: int
    sum_c: float
    min_c: float
    low: int  # tokens with cloud probability < 0.1
    sum_e: float

    @property
    def gap(self) -> float:
        """sum(e - c): how much less the cloud believes this step than the edge does."""
        return self.sum_e - self.sum_c


@dataclass(frozen=True)
class TraceRead:
    steps: tuple[StepRead, ...]
    input_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def n(self) -> int:
        return sum(s.n for s in self.steps)

    @property
    def suspicion(self) -> float:
        """The whether-score: sum(e - c) over the trace (higher = more likely wrong)."""
        return sum(s.gap for s in self.steps)

    @property
    def trust(self) -> float:
        """mean (c - e) per token (higher = the cloud believes it more): picks between two finishes."""
        return -self.suspicion / self.n if self.n else 0.0

    @property
    def low(self) -> int:
        return sum(s.low for s in self.steps)

    def flagged(self, max_k: int, first: int = 0) -> int | None:
        """The position (among the read steps) with the largest gap, from ``first`` and below ``max_k``; ties: earlier."""
        cands = [(s.gap, -i) for i, s in enumerate(self.steps) if first <= i < max_k and s.n]
        return -max(cands)[1] if cands else None

    def to_dict(self) -> dict:
        return {"steps": [asdict(s) for s in self.steps], "input_tokens": self.input_tokens,
                "cost_usd": self.cost_usd, "suspicion": round(self.suspicion, 6), "trust": round(self.trust, 6),
                "low": self.low, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> "TraceRead":
        return cls(tuple(StepRead(**s) for s in d["steps"]), d.get("input_tokens", 0), d.get("cost_usd", 0.0))


def _step_read(index: int, cs: Sequence[float], sum_e: float | None) -> StepRead:
    """``sum_e`` None: a step the edge did not write (the cloud's): it counts as believed alike (e = c)."""
    sum_e = float(sum(cs)) if sum_e is None else sum_e
    return StepRead(index=index, n=len(cs), sum_c=round(float(sum(cs)), 6), min_c=round(min(cs, default=0.0), 6),
                    low=sum(1 for c in cs if c < LOW_P), sum_e=round(sum_e, 6))


def by_ids(prompt: Sequence[int], steps: Sequence[tuple[int, Sequence[int], float | None]],
           logprobs: Sequence[float | None]) -> tuple[StepRead, ...]:
    """Per-step reads from log-probs aligned with ``prompt + all step ids`` (a same-vocabulary read).

    ``steps``: (index, token ids, the edge's sum of log-probs over them, None for a cloud step)."""
    at = len(prompt)
    if len(logprobs) != at + sum(len(ids) for _, ids, _ in steps):
        raise ValueError("the read's tokens do not line up with the ids sent")
    out = []
    for index, ids, sum_e in steps:
        cs = [float(v) for v in logprobs[at: at + len(ids)] if v is not None]
        out.append(_step_read(index, cs, sum_e))
        at += len(ids)
    return tuple(out)


def by_text(prompt_text: str, steps: Sequence[tuple[int, str, float | None]], tokens: Sequence[str],
            logprobs: Sequence[float | None], offsets: Sequence[int]) -> tuple[StepRead, ...]:
    """Per-step reads from a read of ``prompt_text + all step texts`` by a cloud with its own tokenizer.

    Each cloud token belongs to the step whose characters it starts in; tokens in the prompt are skipped.
    ``steps``: (index, raw text, the edge's sum of log-probs over its tokens)."""
    spans, at = [], len(prompt_text)
    for index, raw, _ in steps:
        spans.append((at, at + len(raw)))
        at += len(raw)
    cs: list[list[float]] = [[] for _ in steps]
    j = 0
    for off, lp in zip(offsets, logprobs):
        if lp is None or off < len(prompt_text):
            continue
        while j < len(spans) - 1 and off >= spans[j][1]:
            j += 1
        if spans and spans[j][0] <= off < spans[j][1]:
            cs[j].append(float(lp))
    return tuple(_step_read(index, c, sum_e) for (index, _, sum_e), c in zip(steps, cs))


EdgeLogprobs = Callable[[Sequence[int]], Sequence[float | None]]
MISSING = "missing"  # a local step whose signals predate the edge's log-probs


def edge_sums(prompt: Sequence[int], steps: Sequence[tuple[int, Sequence[int], float | str | None]],
              edge_read: EdgeLogprobs | None) -> list[tuple[int, Sequence[int], float | None]]:
    """Fill in the edge's sum of log-probs for local steps whose signals lack it (``MISSING``), by one local read
    of the whole context; a cloud step's None stays None."""
    if not any(s == MISSING for _, _, s in steps) or edge_read is None:
        return [(i, ids, 0.0 if s == MISSING else s) for i, ids, s in steps]  # type: ignore[misc]
    context = list(prompt) + [t for _, ids, _ in steps for t in ids]
    lps = edge_read(context)
    out: list[tuple[int, Sequence[int], float | None]] = []
    at = len(prompt)
    for index, ids, s in steps:
        local = float(sum(v for v in lps[at: at + len(ids)] if v is not None))
        out.append((index, ids, local if s == MISSING else s))  # type: ignore[arg-type]
        at += len(ids)
    return out


def step_inputs(steps: Sequence[Any]) -> list[tuple[int, Sequence[int], float | str | None]]:
    """(index, token ids, the edge's log-prob sum | MISSING | None for a cloud step) of ``Step`` values."""
    out: list[tuple[int, Sequence[int], float | str | None]] = []
    for s in steps:
        if s.author != "local":
            out.append((s.index, s.token_ids, None))
        elif s.signals.sum_logprob or not s.signals.n_tokens:
            out.append((s.index, s.token_ids, s.signals.sum_logprob))
        else:
            out.append((s.index, s.token_ids, MISSING))
    return out


@dataclass(frozen=True)
class JudgeRead:
    """The judge's read, for a cloud with no prompt log-probs: the first step it calls wrong (None: all right).

    It speaks the ``TraceRead`` interface ``verify-repair`` uses: a wrong verdict is maximally suspicious and
    flags its step; ``trust`` is 1 for a trace judged right and 0 for one judged wrong."""

    first_wrong: int | None  # position among the read steps
    n_steps: int
    input_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def suspicion(self) -> float:
        return math.inf if self.first_wrong is not None else -math.inf

    @property
    def trust(self) -> float:
        return 0.0 if self.first_wrong is not None else 1.0

    def flagged(self, max_k: int, first: int = 0) -> int | None:
        k = self.first_wrong
        return k if k is not None and first <= k < min(max_k, self.n_steps) else None


def parse_judge(text: str, n_steps: int) -> int | None | str:
    """The judge's reply as a step position, None for "none", or "unparsed"."""
    import re

    t = text.strip().lower()
    if t.startswith("none") or t.startswith("no "):
        return None
    m = re.search(r"\d+", t)
    if not m:
        return "unparsed"
    k = int(m.group())
    return k if 0 <= k < n_steps else "unparsed"
