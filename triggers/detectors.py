"""TrigReason's detectors: pure functions of the problem, the accepted steps and the new step's signals.

Each returns one ``TriggerEvent`` with its score, threshold and evidence, fired or not, so a stored
decision explains itself. The only model any of them touches is the loop detector's sentence
embedder, which is injected (and may not be ready yet: then only the text checks run).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .types import Step, TriggerEvent

_NUM = re.compile(r"(?<![\w.])-?\d+(?:[.,]\d+)*(?:/\d+)?")
_OPS = re.compile(r"[=+\-*/×÷^]|\\(?:frac|times|cdot|sqrt|div)|\b(?:times|plus|minus|divided|multiplied|sum|product|total of)\b")
_WORD = re.compile(r"[a-z0-9]+")


def numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUM.findall(text)}


def plan_goals(steps: Sequence[Step]) -> int:
    """How many numbered sub-goals the cloud's plan set (0 without a plan)."""
    for s in steps:
        if s.kind == "plan":
            return len(re.findall(r"(?m)^\s*\d+[.)]", s.text))
    return 0


def difficulty(problem: str, first: Step, *, entropy_max: float, words_max: int) -> TriggerEvent:
    """Strategic initiation in ``auto`` mode: is this problem hard for the local model?

    Two cheap estimates: the first draft step's uncertainty (max token entropy, GlimpRouter-style
    first-step probing) and the problem's size in words. Either past its threshold fires.
    """
    words = len(problem.split())
    ent = first.signals.max_entropy
    fired = ent >= entropy_max or words >= words_max
    score = max(ent / entropy_max if entropy_max else 0.0, words / words_max if words_max else 0.0)
    return TriggerEvent("strategic_initiation", fired, score=round(score, 4), threshold=1.0,
                        detail={"first_step_max_entropy": round(ent, 4), "entropy_max": entropy_max,
                                "problem_words": words, "words_max": words_max})


def overconfidence(problem: str, steps: Sequence[Step], step: Step, *, confidence_min: float,
                   min_steps: int) -> TriggerEvent:
    """Cognitive offloading: a confident commitment on a step that should be hard.

    Fires when the step is very confident (its mean token top-1 probability >= ``confidence_min``)
    and either states the final answer earlier than the work implies (fewer reasoning steps than
    ``min_steps``, or than the plan's sub-goals), or brings a new number with no computation shown.
    """
    sig = step.signals
    reasoning = sum(1 for s in steps if s.kind != "plan")
    expected = max(min_steps, plan_goals(steps))
    seen = numbers(problem).union(*(numbers(s.text) for s in steps)) if steps else numbers(problem)
    new = sorted(numbers(step.text) - seen)
    early = sig.has_answer and reasoning + 1 < expected
    unsupported = bool(new) and not _OPS.search(step.text.lower())
    confident = sig.mean_top1 >= confidence_min
    reason = "early_answer" if early else "unsupported_number" if unsupported else None
    return TriggerEvent("overconfidence", confident and reason is not None, score=round(sig.mean_top1, 4),
                        threshold=confidence_min,
                        detail={"reason": reason, "reasoning_steps": reasoning, "expected_steps": expected,
                                "new_numbers": new[:8], "has_answer": sig.has_answer})


def uncertainty(step: Step, *, first_top1_min: float, min_top1_min: float) -> TriggerEvent:
    """The complement: the local model hesitates (low first-token or lowest-token top-1 probability)."""
    sig = step.signals
    margin = min(sig.first_top1 - first_top1_min, sig.min_top1 - min_top1_min)
    return TriggerEvent("uncertainty", margin < 0, score=round(min(sig.first_top1, sig.min_top1), 4),
                        threshold=min_top1_min,
                        detail={"first_top1": round(sig.first_top1, 4), "first_top1_min": first_top1_min,
                                "min_top1": round(sig.min_top1, 4), "min_top1_min": min_top1_min})


def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def loop(problem: str, steps: Sequence[Step], step: Step, *, cosine_min: float, window: int, ngram_share: float,
         stall_steps: int, embed: Callable[[list[str]], list[list[float]]] | None = None) -> TriggerEvent:
    """Intervention request: the local model repeats itself or stops making progress.

    Compared only with local steps since the last cloud step, so a fresh start is not a loop.
    Three tests: sentence-embedding cosine >= ``cosine_min`` with one of the last ``window`` steps;
    a share >= ``ngram_share`` of the step's word 4-grams already written in that window; or
    ``stall_steps`` steps in a row that bring no new number.
    """
    since = []
    for s in reversed(steps):
        if s.author == "cloud":
            break
        since.append(s)
    since.reverse()
    recent = since[-window:]
    evidence: dict = {"window": len(recent)}
    hits: list[tuple[str, float, float]] = []  # (test, score, threshold)
    if recent and embed is not None:
        vecs = embed([step.text] + [s.text for s in recent])
        if vecs is not None:
            sims = [sum(a * b for a, b in zip(vecs[0], v)) for v in vecs[1:]]
            best = max(range(len(sims)), key=sims.__getitem__)
            evidence.update(similar_step=recent[best].index, cosine=round(sims[best], 4))
            if sims[best] >= cosine_min:
                hits.append(("embedding", sims[best], cosine_min))
        else:
            evidence["embedding"] = "warming up"
    grams = _ngrams(step.text, 4)
    if recent and grams:
        before = set().union(*(_ngrams(s.text, 4) for s in recent))
        share = len(grams & before) / len(grams)
        evidence["ngram_share"] = round(share, 4)
        if share >= ngram_share:
            hits.append(("ngram", share, ngram_share))
    if len(since) + 1 >= stall_steps:
        run = since[-(stall_steps - 1):] + [step]
        earlier = steps[: len(steps) - (stall_steps - 1)]
        known = numbers(problem).union(*(numbers(s.text) for s in earlier)) if earlier else numbers(problem)
        stalled = all(not (numbers(s.text) - known) for s in run)
        evidence["stalled_steps"] = len(run) if stalled else 0
        if stalled and not step.signals.has_answer:
            hits.append(("no_progress", float(len(run)), float(stall_steps)))
    if not hits:
        return TriggerEvent("loop", False, score=evidence.get("cosine"), threshold=cosine_min, detail=evidence)
    test, score, threshold = hits[0]
    return TriggerEvent("loop", True, score=round(score, 4), threshold=threshold, detail={**evidence, "test": test})
