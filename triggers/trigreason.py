"""TrigReason's three triggers (plan, offloading, intervention), and ``hybrid``: them plus TRIM's budget-aware score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .base import ACCEPT, BasePolicy
from .errors import PolicyError
from .scorers import StepInputs
from .trim import TrimBudget, TrimBudgetParams
from .types import Action, Step, TriggerEvent

@dataclass(frozen=True)
class TrigReasonParams:
    # thresholds read off local-only traces of the 0.5B edge model on GSM8K dev (docs/policies.md, "TrigReason")
    plan: str = "auto"
    offload: bool = True
    uncertainty: bool = False
    loop: bool = True
    entropy_max: float = 1.6
    words_max: int = 45
    confidence_min: float = 0.85
    min_steps: int = 2
    first_top1_min: float = 0.3
    min_top1_min: float = 0.05
    cosine_min: float = 0.92
    window: int = 3
    ngram_share: float = 0.6
    stall_steps: int = 3
    max_interventions: int = 2
    max_cloud: int = 4


class TrigReason(BasePolicy):
    """TrigReason: the cloud is called only by three triggers, and control returns to the local model.

    * strategic initiation: a short plan before the first step (``plan=always``), or in ``auto`` when
      the first draft step is uncertain or the problem is long (the draft is then replaced);
    * cognitive offloading: a very confident step that answers too early or jumps to a number with no
      computation is rewritten by the cloud (``offload``); its complement ``uncertainty`` routes a
      hesitant step (low first-token / lowest-token probability);
    * intervention request: a loop (embedding cosine, repeated 4-grams, or steps with no new number)
      asks the cloud to review the trace; it may roll back to the first wrong step.

    ``max_cloud`` caps cloud actions per session and ``max_interventions`` stops ping-pong.
    """

    name = "trigreason"
    uses_cloud = True
    Params = TrigReasonParams

    def check_params(self, p: TrigReasonParams) -> None:
        if p.plan not in ("always", "never", "auto"):
            raise PolicyError("plan must be always, never or auto")
        if p.window < 1 or p.stall_steps < 2 or p.max_interventions < 0 or p.max_cloud < 0:
            raise PolicyError("window >= 1, stall_steps >= 2, max_interventions >= 0 and max_cloud >= 0")
        self.problem = ""
        self.embedder = None  # injected; by default the shared all-MiniLM-L6-v2 embedder, warmed at reset

    def reset(self, problem: str) -> None:
        self.problem = problem
        if self.cfg.loop and self.embedder is None:
            from .embed import shared

            self.embedder = shared()
        if self.embedder is not None:
            self.embedder.warm()

    def _cloud_used(self, steps: Sequence[Step]) -> int:
        return sum(1 for s in steps if s.author == "cloud")

    def before_step(self, steps: Sequence[Step]) -> Action:
        if self.cfg.plan == "always" and not steps:
            return Action("plan", trigger="strategic_initiation", reason="plan=always")
        return ACCEPT

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        from . import detectors as d

        c = self.cfg
        out = []
        if c.plan == "auto" and not steps:
            out.append(d.difficulty(self.problem, step, entropy_max=c.entropy_max, words_max=c.words_max))
        if c.loop:
            embed = self.embedder.encode if self.embedder is not None else None
            out.append(d.loop(self.problem, steps, step, cosine_min=c.cosine_min, window=c.window,
                              ngram_share=c.ngram_share, stall_steps=c.stall_steps, embed=embed))
        if c.offload:
            out.append(d.overconfidence(self.problem, steps, step, confidence_min=c.confidence_min,
                                        min_steps=c.min_steps))
        if c.uncertainty:
            out.append(d.uncertainty(step, first_top1_min=c.first_top1_min, min_top1_min=c.min_top1_min))
        return out

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        fired = {e.trigger: e for e in events if e.fired}
        if not fired:
            return ACCEPT
        if self._cloud_used(steps) >= self.cfg.max_cloud:
            e = next(iter(fired.values()))
            return Action("accept", trigger=e.trigger, score=e.score, threshold=e.threshold,
                          reason=f"max_cloud={self.cfg.max_cloud} reached")
        if "strategic_initiation" in fired:
            e = fired["strategic_initiation"]
            return Action("plan", trigger=e.trigger, score=e.score, threshold=e.threshold)
        if "loop" in fired:
            e = fired["loop"]
            done = sum(1 for s in steps if s.kind == "intervention")
            kind = "intervene" if done < self.cfg.max_interventions else "rewrite"
            return Action(kind, trigger="loop", score=e.score, threshold=e.threshold)
        for name in ("overconfidence", "uncertainty"):
            if name in fired:
                e = fired[name]
                return Action("rewrite", trigger=name, score=e.score, threshold=e.threshold)
        return ACCEPT


@dataclass(frozen=True)
class HybridParams(TrigReasonParams):
    lam: float = 2.0
    value: float = 0.001
    scorer: str = "logprob"
    budget_tokens: int = 0


class Hybrid(TrigReason):
    """TrigReason's triggers plus a budget-aware TRIM step score (logprob by default: free).

    The TrigReason triggers go first (plan, loop intervention, offloading), then a step that passes
    ``trim-budget``'s test (``lam``, ``value``, ``scorer``, ``budget_tokens``) is rewritten.
    ``max_cloud`` caps all cloud actions of a session together. ``lam`` defaults to 2, above
    trim-budget's 1: the TrigReason triggers spend too, so the score escalates only clearly shaky
    steps (below ~0.6 on a short GSM8K problem at DeepSeek prices); the bench is to tune it.
    """

    name = "hybrid"
    Params = HybridParams
    threshold_param = "lam"

    def check_params(self, p: HybridParams) -> None:
        super().check_params(p)
        self.trim = TrimBudget(TrimBudgetParams(lam=p.lam, value=p.value, scorer=p.scorer,
                                                budget_tokens=p.budget_tokens))
        self.needs = self.trim.needs

    def reset(self, problem: str) -> None:
        super().reset(problem)
        self.trim.reset(problem)

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        return super().check(steps, step, inputs) + self.trim.check(steps, step, inputs)

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        action = super().decide(steps, step, [e for e in events if e.trigger != "step_score"])
        if action.kind != "accept" or action.reason:  # a TrigReason action, or max_cloud reached
            return action
        e = next((e for e in events if e.fired and e.trigger == "step_score"), None)
        if e is None:
            return ACCEPT
        if self._cloud_used(steps) >= self.cfg.max_cloud:
            return Action("accept", trigger=e.trigger, score=e.score, threshold=e.threshold,
                          reason=f"max_cloud={self.cfg.max_cloud} reached")
        return Action("rewrite", trigger="step_score", score=e.score, threshold=e.threshold)
