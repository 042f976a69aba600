"""Policies decide, per step, whether the local step stands or the cloud acts.

Every policy returns an ``Action`` carrying the score and threshold behind it, so a stored
decision can explain itself. New policies register in ``POLICIES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge_agent.values import Action, Step, TriggerEvent

ACCEPT = Action("accept")


class Policy(Protocol):
    name: str
    uses_cloud: bool

    def before_step(self, steps: Sequence[Step]) -> Action:
        """Decide before the local model drafts the next step (``rewrite`` = the cloud writes it)."""
        ...

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        """Run this policy's detectors on a new local step."""
        ...

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        """Turn detector events into one action for the step."""
        ...


class _Base:
    name = "base"
    uses_cloud = False

    def before_step(self, steps: Sequence[Step]) -> Action:
        return ACCEPT

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        return []

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        fired = [e for e in events if e.fired]
        if not fired:
            return ACCEPT
        e = fired[0]
        return Action("rewrite", trigger=e.trigger, score=e.score, threshold=e.threshold)


class LocalOnly(_Base):
    """Baseline: every local step is accepted; the cloud is never called."""

    name = "local-only"


class CloudOnly(_Base):
    """Baseline: the large model alone. It writes the whole solution in one call (split into steps);
    if that stops short of an answer it goes on step by step. The local model writes only when the
    cloud cannot (refused by the budget, or down)."""

    name = "cloud-only"
    uses_cloud = True

    def before_step(self, steps: Sequence[Step]) -> Action:
        if not steps:
            return Action("solve", trigger="cloud_only", reason="cloud-only solves the whole problem")
        return Action("rewrite", trigger="cloud_only", reason="cloud-only writes every step")


class EveryK(_Base):
    """For testing the cloud path: the cloud rewrites every k-th reasoning step (k=2: steps 1, 3, 5…)."""

    name = "every-k"
    uses_cloud = True

    def __init__(self, k: int = 2) -> None:
        self.k = k

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        position = step.index + 1
        fired = position % self.k == 0
        return [TriggerEvent("every_k", fired, score=float(position % self.k), threshold=0.0, detail={"k": self.k})]


class TrimThr(_Base):
    """TRIM-Thr: the cloud rewrites a step whose correctness score is below the threshold tau.

    The default tau is calibrated RouteLLM-style: the 20% quantile of logprob scores of the
    0.5B edge model's steps on GSM8K dev problems (see README, "Bench").
    """

    name = "trim-thr"
    uses_cloud = True
    default_tau = 0.68  # 20% quantile of 132 step scores, 20 GSM8K dev problems, qwen2.5-coder-0.5b

    def __init__(self, tau: float | None = None, scorer: str = "logprob") -> None:
        from .scorers import SCORERS

        self.tau = self.default_tau if tau is None else tau
        self.scorer_name = scorer
        self.scorer = SCORERS[scorer]

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        score = self.scorer(step.signals)
        return [TriggerEvent("step_score", score < self.tau, score=score, threshold=self.tau,
                             detail={"scorer": self.scorer_name})]


POLICIES: dict[str, type] = {p.name: p for p in (LocalOnly, CloudOnly, EveryK, TrimThr)}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        from edge_agent.errors import InputError

        raise InputError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}") from None
