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
    label: str  # name plus parameters: what a session stores
    uses_cloud: bool

    def reset(self, problem: str) -> None:
        """Called when a run starts or resumes."""
        ...

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
    params: dict[str, object] = {}
    threshold_param: str | None = None  # the knob ``tune --target-escalation-rate`` calibrates

    @property
    def label(self) -> str:
        """Name plus parameters, e.g. ``trim-thr(tau=0.6)``: what a session stores, so resume rebuilds it."""
        if not self.params:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in sorted(self.params.items()))})"

    def reset(self, problem: str) -> None:
        """Called when a run starts or resumes."""

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
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.params = {"k": k} if k != 2 else {}

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
    threshold_param = "tau"
    default_tau = 0.68  # 20% quantile of 132 step scores, 20 GSM8K dev problems, qwen2.5-coder-0.5b

    def __init__(self, tau: float | None = None, scorer: str = "logprob") -> None:
        from .scorers import SCORERS

        if scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}")
        if tau is not None and not 0.0 <= tau <= 1.0:
            raise ValueError("tau must be between 0 and 1")
        self.tau = self.default_tau if tau is None else tau
        self.scorer_name = scorer
        self.scorer = SCORERS[scorer]
        self.params = {k: v for k, v in (("tau", tau), ("scorer", scorer if scorer != "logprob" else None)) if v is not None}

    def score(self, step: Step) -> float:
        return self.scorer(step.signals)

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        score = self.score(step)
        return [TriggerEvent("step_score", score < self.tau, score=score, threshold=self.tau,
                             detail={"scorer": self.scorer_name})]


class TrigReason(_Base):
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

    # thresholds (the defaults below) read off local-only traces of the 0.5B edge model on GSM8K dev
    # (README, "TrigReason")
    def __init__(self, plan: str = "auto", offload: bool = True, uncertainty: bool = False, loop: bool = True,
                 entropy_max: float = 1.6, words_max: int = 45, confidence_min: float = 0.85, min_steps: int = 2,
                 first_top1_min: float = 0.3, min_top1_min: float = 0.05, cosine_min: float = 0.92, window: int = 3,
                 ngram_share: float = 0.6, stall_steps: int = 3, max_interventions: int = 2, max_cloud: int = 4) -> None:
        import inspect

        given = {k: v for k, v in locals().items() if k not in ("self", "inspect")}
        if plan not in ("always", "never", "auto"):
            raise ValueError("plan must be always, never or auto")
        if window < 1 or stall_steps < 2 or max_interventions < 0 or max_cloud < 0:
            raise ValueError("window >= 1, stall_steps >= 2, max_interventions >= 0 and max_cloud >= 0")
        defaults = {k: p.default for k, p in inspect.signature(TrigReason.__init__).parameters.items() if k != "self"}
        self.cfg = given
        self.params = {k: v for k, v in given.items() if v != defaults[k]}
        self.problem = ""
        self.embedder = None  # injected; by default the shared all-MiniLM-L6-v2 embedder, warmed at reset

    def reset(self, problem: str) -> None:
        self.problem = problem
        if self.cfg["loop"] and self.embedder is None:
            from .embed import shared

            self.embedder = shared()
        if self.embedder is not None:
            self.embedder.warm()

    def _cloud_used(self, steps: Sequence[Step]) -> int:
        return sum(1 for s in steps if s.author == "cloud")

    def before_step(self, steps: Sequence[Step]) -> Action:
        if self.cfg["plan"] == "always" and not steps:
            return Action("plan", trigger="strategic_initiation", reason="plan=always")
        return ACCEPT

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        from . import detectors as d

        c = self.cfg
        out = []
        if c["plan"] == "auto" and not steps:
            out.append(d.difficulty(self.problem, step, entropy_max=c["entropy_max"], words_max=c["words_max"]))
        if c["loop"]:
            embed = self.embedder.encode if self.embedder is not None else None
            out.append(d.loop(self.problem, steps, step, cosine_min=c["cosine_min"], window=c["window"],
                              ngram_share=c["ngram_share"], stall_steps=c["stall_steps"], embed=embed))
        if c["offload"]:
            out.append(d.overconfidence(self.problem, steps, step, confidence_min=c["confidence_min"],
                                        min_steps=c["min_steps"]))
        if c["uncertainty"]:
            out.append(d.uncertainty(step, first_top1_min=c["first_top1_min"], min_top1_min=c["min_top1_min"]))
        return out

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        fired = {e.trigger: e for e in events if e.fired}
        if not fired:
            return ACCEPT
        if self._cloud_used(steps) >= self.cfg["max_cloud"]:
            e = next(iter(fired.values()))
            return Action("accept", trigger=e.trigger, score=e.score, threshold=e.threshold,
                          reason=f"max_cloud={self.cfg['max_cloud']} reached")
        if "strategic_initiation" in fired:
            e = fired["strategic_initiation"]
            return Action("plan", trigger=e.trigger, score=e.score, threshold=e.threshold)
        if "loop" in fired:
            e = fired["loop"]
            done = sum(1 for s in steps if s.kind == "intervention")
            kind = "intervene" if done < self.cfg["max_interventions"] else "rewrite"
            return Action(kind, trigger="loop", score=e.score, threshold=e.threshold)
        for name in ("overconfidence", "uncertainty"):
            if name in fired:
                e = fired[name]
                return Action("rewrite", trigger=name, score=e.score, threshold=e.threshold)
        return ACCEPT


POLICIES: dict[str, type] = {p.name: p for p in (LocalOnly, CloudOnly, EveryK, TrimThr, TrigReason)}


def split_specs(text: str) -> list[str]:
    """Split ``a,b(x=1,y=2),c`` at top-level commas."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``trim-thr(tau=0.6)`` -> ("trim-thr", {"tau": "0.6"})."""
    from edge_agent.errors import InputError

    spec = spec.strip()
    name, _, rest = spec.partition("(")
    params: dict[str, str] = {}
    if rest:
        if not rest.endswith(")"):
            raise InputError(f"policy {spec!r}: write parameters as NAME(key=value,...)")
        for item in filter(None, (x.strip() for x in rest[:-1].split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"policy {spec!r}: parameter {item!r} must be key=value")
            params[key.strip()] = value.strip()
    return name.strip(), params


def _convert(value: object) -> object:
    if not isinstance(value, str):
        return value
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def get_policy(spec: str, defaults: dict[str, object] | None = None) -> Policy:
    """Build a policy from ``NAME`` or ``NAME(key=value,...)``; ``defaults`` (from config) fill unset keys."""
    import inspect

    from edge_agent.errors import InputError

    name, params = parse_spec(spec)
    cls = POLICIES.get(name)
    if cls is None:
        raise InputError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}")
    accepted = [k for k, p in inspect.signature(cls.__init__).parameters.items()
                if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    merged = {**(defaults or {}), **params}
    unknown = set(merged) - set(accepted)
    if unknown:
        raise InputError(f"policy {name} has no parameter {', '.join(sorted(unknown))}: "
                         f"use {', '.join(accepted) or 'no parameters'}")
    try:
        return cls(**{k: _convert(v) for k, v in merged.items()})
    except (TypeError, ValueError) as e:
        raise InputError(f"policy {name}: {e}") from None
