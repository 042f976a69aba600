"""Step scorers: each maps a step to ``score`` in [0, 1], an estimate that the step is correct.

Three scorers, from free to paid:

* ``logprob`` (free) uses only the signals read while decoding. On the bench pair the lowest
  top-1 probability of any token and the share of unsure tokens separate right from wrong solutions
  far better than mean entropy (shared/BASELINES.md: AUROC 0.75 for the minimum, 0.66 for the share,
  0.61 for mean entropy), so the score is built from those two::

      score = min_top1 ** 0.25 * (1 - low_top1_share)

  The fourth root spreads the minimum, which is often tiny, across [0, 1]; a step whose every token
  was sure (min_top1 -> 1, no unsure tokens) scores near 1, and one with a coin-flip token and many
  hesitant ones scores low.
* ``self`` (one short local forward pass) asks the local model ``VERIFY_QUESTION`` right after the
  step, in a new user turn, and reads the next-token distribution::

      score = P(yes) / (P(yes) + P(no))

  where P(yes) sums the probabilities of the one-token variants in ``YES`` (" Yes", "Yes", ...) and
  P(no) those in ``NO``. Only the question's ~20 tokens are evaluated (the context is in the KV
  cache) and they are dropped afterwards (``LocalModel.verify``).
* ``cloud-judge`` (one cloud call, one output token; SpecReason / TRIM-PRM stand-in) asks the cloud
  to rate the last step 0-9 (``judge_messages``). With the provider's top logprobs the score is
  the expected digit over the digit tokens, ``sum(d * p_d) / sum(p_d) / 9``; without them, the
  digit it wrote / 9 (``digit_score``).

The seam: scorers that need a model are not pure functions of ``Signals``. A policy lists the ones
it needs in ``needs``; before ``check`` the agent computes them (``LocalModel.verify``,
``Cloud.judge``) and hands them over as ``StepInputs.scores``, each a ``Score`` carrying its inputs.
If a paid score cannot be had (no cloud, budget refused, cloud down, no context room), the agent
hands over the ``logprob`` score instead, with the reason in ``detail["fallback"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .types import Signals, Step

MODEL_SCORERS = ("self", "cloud-judge")  # computed by the agent, not from signals

VERIFY_QUESTION = "Is the last step correct? Answer Yes or No."
YES = (" Yes", "Yes", " yes", "yes", "YES")
NO = (" No", "No", " no", "no", "NO")

JUDGE_SYSTEM = (
    "You grade one step of a math solution. Rate how likely the LAST step is correct, from 0 "
    "(certainly wrong) to 9 (certainly correct). Reply with one digit and nothing else."
)


@dataclass(frozen=True)
class Score:
    """A step score in [0, 1] from ``scorer``, with the numbers it came from."""

    value: float
    scorer: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spend:
    """This session's cloud use so far, and what a typical escalation costs (for budget-aware policies)."""

    cost_usd: float = 0.0
    cap_usd: float | None = None  # the session cap, if one is set
    cloud_calls: int = 0
    cloud_output_tokens: int = 0
    price_in: float | None = None  # USD per 1M tokens; None without a cloud
    price_out: float | None = None


@dataclass(frozen=True)
class StepInputs:
    """What the agent computed for a policy's ``needs`` before ``check``: paid scores and spend."""

    scores: Mapping[str, Score] = field(default_factory=dict)
    spend: Spend | None = None


def logprob_score(signals: Signals) -> float:
    if signals.n_tokens == 0:
        return 1.0
    score = (max(signals.min_top1, 0.0) ** 0.25) * (1.0 - min(max(signals.low_top1_share, 0.0), 1.0))
    return round(min(max(score, 0.0), 1.0), 6)


def self_score(p_yes: float, p_no: float) -> float:
    """P(yes) normalised over the two answers; 0.5 when the model puts no mass on either."""
    total = p_yes + p_no
    if total <= 1e-12:
        return 0.5
    return round(min(max(p_yes / total, 0.0), 1.0), 6)


def digit_score(top_logprobs: Sequence[tuple[str, float]] | None, text: str) -> tuple[float, dict[str, Any]] | None:
    """The judge's rating as a score: the expected digit over digit tokens in ``top_logprobs``
    (merging variants such as "7" and " 7"), else the first digit of ``text``, divided by 9.

    None when neither holds a digit.
    """
    import math

    probs: dict[int, float] = {}
    for token, logprob in top_logprobs or ():
        t = token.strip()
        if len(t) == 1 and t.isdigit() and logprob is not None and math.isfinite(logprob):
            probs[int(t)] = probs.get(int(t), 0.0) + math.exp(logprob)
    mass = sum(probs.values())
    if mass > 0:
        expected = sum(d * p for d, p in probs.items()) / mass
        return round(expected / 9, 6), {"source": "logprobs", "expected_digit": round(expected, 4),
                                        "digit_mass": round(mass, 4),
                                        "probs": {str(d): round(p, 4) for d, p in sorted(probs.items())}}
    digit = next((c for c in text if c.isdigit()), None)
    if digit is None:
        return None
    return round(int(digit) / 9, 6), {"source": "text", "digit": int(digit)}


def judge_messages(problem: str, steps: Sequence[Step], step: Step) -> list[dict[str, str]]:
    """The cloud judge's request: the problem, the steps so far, and the step to rate."""
    before = "\n\n".join(f"Step {s.index}: {s.text}" for s in steps) or "(none)"
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": f"Problem:\n{problem}\n\nEarlier steps:\n{before}\n\n"
                                    f"LAST step (Step {step.index}):\n{step.text}\n\nRating (one digit 0-9):"},
    ]


def step_score(scorer: str, step: Step, inputs: StepInputs | None) -> Score:
    """The ``scorer`` score of ``step``: free ones computed here, paid ones read from ``inputs``.

    A paid score missing from ``inputs`` (e.g. a policy called outside the agent) falls back to
    ``logprob``, marked as such.
    """
    if scorer == "logprob":
        return Score(logprob_score(step.signals), "logprob")
    got = (inputs.scores if inputs is not None else {}).get(scorer)
    if got is not None:
        return got
    return Score(logprob_score(step.signals), "logprob", {"fallback": f"{scorer} score not supplied"})


SCORERS = {
    "logprob": "free: min_top1 ** 0.25 * (1 - low_top1_share) from the decode signals",
    "self": "one local pass over a ~20-token question: P(yes) / (P(yes) + P(no))",
    "cloud-judge": "one cloud call, 1 output token: expected digit 0-9 / 9 (top logprobs), else the digit / 9",
}
