"""What every policy is: a ``Policy`` protocol and ``BasePolicy``, with typed parameters and a label."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from .errors import PolicyError
from .scorers import MODEL_SCORERS, SCORERS, StepInputs
from .types import Action, Step, TriggerEvent

ACCEPT = Action("accept")


class Policy(Protocol):
    name: str
    label: str  # name plus parameters: what a session stores
    uses_cloud: bool
    # what the agent must compute before ``check`` and pass in ``StepInputs``: "self" and
    # "cloud-judge" scores (see triggers.scorers), "spend" (this session's cloud use and prices)
    needs: tuple[str, ...]

    def reset(self, problem: str) -> None:
        """Called when a run starts or resumes."""
        ...

    def before_step(self, steps: Sequence[Step]) -> Action:
        """Decide before the local model drafts the next step (``rewrite`` = the cloud writes it)."""
        ...

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        """Run this policy's detectors on a new local step (``inputs``: what ``needs`` asked for)."""
        ...

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        """Turn detector events into one action for the step."""
        ...


@dataclass(frozen=True)
class NoParams:
    """A policy without parameters."""


class BasePolicy:
    """A policy: its typed ``Params`` (a frozen dataclass, checked in ``check_params``) and its decisions."""

    name = "base"
    uses_cloud = False
    Params: ClassVar[type] = NoParams
    threshold_param: str | None = None  # the knob ``tune`` sweeps; calibrated when it is a score threshold
    needs: tuple[str, ...] = ()

    def __init__(self, params: Any = None, shown: dict[str, object] | None = None) -> None:
        self.cfg = params if params is not None else self.Params()
        self.check_params(self.cfg)
        self._shown = shown or {}  # how the caller wrote each value (3 stays 3 in the label, 3.0 stays 3.0)

    def check_params(self, p: Any) -> None:
        """Refuse parameter values out of range (``PolicyError`` naming the parameter)."""

    @property
    def params(self) -> dict[str, object]:
        """The parameters that differ from their defaults, as the label shows them."""
        defaults = self.Params()
        return {f.name: self._shown.get(f.name, getattr(self.cfg, f.name)) for f in dataclasses.fields(self.cfg)
                if getattr(self.cfg, f.name) != getattr(defaults, f.name)}

    @property
    def label(self) -> str:
        """Name plus parameters, e.g. ``trim-thr(tau=0.6)``: what a session stores, so resume rebuilds it."""
        params = self.params
        if not params:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in sorted(params.items()))})"

    def reset(self, problem: str) -> None:
        """Called when a run starts or resumes."""

    def before_step(self, steps: Sequence[Step]) -> Action:
        return ACCEPT

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        return []

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        fired = [e for e in events if e.fired]
        if not fired:
            return ACCEPT
        e = fired[0]
        return Action("rewrite", trigger=e.trigger, score=e.score, threshold=e.threshold)


def scorer_needs(scorer: str) -> tuple[str, ...]:
    if scorer not in SCORERS:
        raise PolicyError(f"scorer must be one of {', '.join(SCORERS)}")
    return (scorer,) if scorer in MODEL_SCORERS else ()


def score_event(score, fired: bool, threshold: float, **detail: object) -> TriggerEvent:
    return TriggerEvent("step_score", fired, score=score.value, threshold=threshold,
                        detail={"scorer": score.scorer, **score.detail, **detail})
