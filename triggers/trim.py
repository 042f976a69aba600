"""TRIM's step routing: rewrite a step whose correctness score is low (threshold, budget-aware, learned)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import BasePolicy, score_event, scorer_needs
from .errors import PolicyError
from .scorers import StepInputs, step_score
from .types import Action, Step, TriggerEvent

@dataclass(frozen=True)
class TrimThrParams:
    tau: float | None = None  # None: the scorer's default (default_tau_by_scorer)
    scorer: str = "logprob"
    handover_at: int = 0  # the n-th escalation hands the rest of the solution to the cloud (0: never)


class TrimThr(BasePolicy):
    """TRIM-Thr: the cloud rewrites a step whose correctness score is below the threshold tau.

    ``scorer`` is ``logprob`` (free), ``self`` (the local model's P(yes)) or ``cloud-judge`` (one
    cloud token); see triggers.scorers. The default tau for ``logprob`` is calibrated RouteLLM-style:
    the 20% quantile of logprob scores of the 0.5B edge model's steps on GSM8K dev problems (docs/bench.md,
    "Bench"); the other two scorers are probabilities and default to 0.5.
    """

    name = "trim-thr"
    uses_cloud = True
    Params = TrimThrParams
    threshold_param = "tau"
    default_tau = 0.68  # 20% quantile of 132 step scores, 20 GSM8K dev problems, qwen2.5-coder-0.5b
    default_tau_by_scorer = {"logprob": default_tau, "self": 0.5, "cloud-judge": 0.5}

    def check_params(self, p: TrimThrParams) -> None:
        self.needs = scorer_needs(p.scorer)
        if p.tau is not None and not 0.0 <= p.tau <= 1.0:
            raise PolicyError("tau must be between 0 and 1")
        self.tau = self.default_tau_by_scorer[p.scorer] if p.tau is None else p.tau
        self.scorer_name = p.scorer
        if p.handover_at < 0:
            raise PolicyError("handover_at must be >= 0 (0: never hand over)")

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        action = super().decide(steps, step, events)
        escalations = sum(1 for s in steps if s.author == "cloud") + 1
        if action.kind == "rewrite" and self.cfg.handover_at and escalations >= self.cfg.handover_at:
            return Action("handover", trigger=action.trigger, score=action.score, threshold=action.threshold,
                          reason=f"escalation {escalations} >= handover_at={self.cfg.handover_at}")
        return action

    def score(self, step: Step, inputs: StepInputs | None = None) -> float:
        return step_score(self.scorer_name, step, inputs).value

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        score = step_score(self.scorer_name, step, inputs)
        return [score_event(score, score.value < self.tau, self.tau)]


# What an escalation costs when no cloud price is known (offline runs): DeepSeek-R1's list price in
# USD per 1M tokens, the same one 'edge-agent cloud-local' uses.
REFERENCE_PRICE = (0.55, 2.19)
CLOUD_STEP_PROMPT_TOKENS = 80  # the rewrite request's instructions, around the problem and the steps


@dataclass(frozen=True)
class TrimBudgetParams:
    lam: float = 1.0
    value: float = 0.001
    scorer: str = "logprob"
    budget_tokens: int = 0
    rewrite_tokens: int = 64
    floor: float = 0.05


class TrimBudget(BasePolicy):
    """TRIM budget-aware: escalate a step only when its expected gain beats lam times its cost.

    The step is rewritten by the cloud when::

        (1 - score) * value > lam_eff * expected_cost
        lam_eff = lam / max(remaining_share, floor)
        expected_cost = (input_tokens * price_in + rewrite_tokens * price_out) / 1e6

    ``score`` comes from ``scorer`` (see triggers.scorers), so ``1 - score`` is the chance the step
    is wrong; ``value`` is what correcting a wrong step is worth, in USD. ``remaining_share`` is the
    share of this session's cap (``--max-cost``) still unspent; with no cap, the share of
    ``budget_tokens`` cloud output tokens still unused; with neither, 1. As the budget runs out
    ``lam_eff`` rises (at most ``lam / floor``), so within a hard cap the remaining escalations go
    to the lowest-scored steps. ``input_tokens`` is the rewrite request's size (problem and steps
    so far, as counted by the local tokenizer, plus the instructions), ``rewrite_tokens`` a typical
    cloud step, and the prices are the cloud's (``REFERENCE_PRICE`` when there is none).
    Equivalently, the step escalates when ``score < 1 - lam_eff * expected_cost / value``: that
    number is stored as the event's threshold. ``lam`` is the one knob (``tune --grid "lam=..."``).
    """

    name = "trim-budget"
    uses_cloud = True
    Params = TrimBudgetParams
    threshold_param = "lam"

    def check_params(self, p: TrimBudgetParams) -> None:
        self.needs = ("spend", *scorer_needs(p.scorer))
        if p.lam < 0 or p.value <= 0 or p.budget_tokens < 0 or p.rewrite_tokens < 1 or not 0 < p.floor <= 1:
            raise PolicyError("lam >= 0, value > 0, budget_tokens >= 0, rewrite_tokens >= 1 and 0 < floor <= 1")
        self.lam, self.value, self.scorer_name = float(p.lam), float(p.value), p.scorer
        self.budget_tokens, self.rewrite_tokens, self.floor = p.budget_tokens, p.rewrite_tokens, float(p.floor)
        self.problem_tokens = 0

    def reset(self, problem: str) -> None:
        self.problem_tokens = len(problem) // 4 + 1  # about four characters per token

    def remaining_share(self, steps: Sequence[Step], inputs: StepInputs | None) -> float:
        spend = inputs.spend if inputs is not None else None
        if spend is not None and spend.cap_usd is not None:
            return max(spend.cap_usd - spend.cost_usd, 0.0) / spend.cap_usd if spend.cap_usd > 0 else 0.0
        if self.budget_tokens:
            used = spend.cloud_output_tokens if spend is not None else sum(s.tokens for s in steps if s.author == "cloud")
            return max(self.budget_tokens - used, 0) / self.budget_tokens
        return 1.0

    def expected_cost(self, steps: Sequence[Step], inputs: StepInputs | None) -> float:
        spend = inputs.spend if inputs is not None else None
        price_in, price_out = REFERENCE_PRICE
        if spend is not None and spend.price_in is not None and spend.price_out is not None:
            price_in, price_out = spend.price_in, spend.price_out
        input_tokens = CLOUD_STEP_PROMPT_TOKENS + self.problem_tokens + sum(s.tokens for s in steps)
        return (input_tokens * price_in + self.rewrite_tokens * price_out) / 1e6

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        score = step_score(self.scorer_name, step, inputs)
        share = self.remaining_share(steps, inputs)
        lam_eff = self.lam / max(share, self.floor)
        cost = self.expected_cost(steps, inputs)
        fired = (1.0 - score.value) * self.value > lam_eff * cost
        threshold = round(1.0 - lam_eff * cost / self.value, 6)
        return [score_event(score, fired, threshold, lam=self.lam, lam_eff=round(lam_eff, 6), value=self.value,
                             expected_cost_usd=round(cost, 9), remaining_share=round(share, 6))]


@dataclass(frozen=True)
class TrimLearnedParams:
    model: str = "latest"  # latest, vN (in the models dir) or a path to a model JSON file
    tau: float = 0.5


class TrimLearned(BasePolicy):
    """TRIM-Agg style learned trigger: a logistic regression over free step features ('tune --learn').

    It escalates when the predicted probability that the step is correct is below ``tau``. The
    model is a JSON file saved by ``edge-agent tune --learn`` (``model``: a path, ``vN``, or
    ``latest`` in the config dir's ``models/``); at run time it needs no scikit-learn and no cloud.
    """

    name = "trim-learned"
    uses_cloud = True
    Params = TrimLearnedParams
    threshold_param = "tau"

    def check_params(self, p: TrimLearnedParams) -> None:
        if not 0.0 <= p.tau <= 1.0:
            raise PolicyError("tau must be between 0 and 1")
        self.tau = float(p.tau)
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The saved model, read on first use (building the policy touches no file)."""
        if self._model is None:
            from .learned import load_model

            self._model = load_model(str(self.cfg.model))
        return self._model

    @property
    def params(self) -> dict[str, object]:
        # the resolved version is part of the label, so resume uses the same model
        tau = {"tau": self._shown.get("tau", self.cfg.tau)} if self.cfg.tau != 0.5 else {}
        return {"model": self.model.ref, **tau}

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        from .learned import features

        x = features(steps, step)
        p = self.model.predict(x)
        return [TriggerEvent("step_score", p < self.tau, score=p, threshold=self.tau,
                             detail={"scorer": "learned", "model": self.model.ref,
                                     "features": dict(zip(self.model.features, (round(v, 6) for v in x)))})]
