"""Policies decide, per step, whether the local step stands or the cloud acts.

Every policy returns an ``Action`` carrying the score and threshold behind it, so a stored
decision can explain itself. New policies register in ``POLICIES``.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Protocol

from edge_agent.values import Action, Step, TriggerEvent

from .scorers import MODEL_SCORERS, SCORERS, StepInputs, step_score

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


class _Base:
    name = "base"
    uses_cloud = False
    params: dict[str, object] = {}
    threshold_param: str | None = None  # the knob ``tune`` sweeps; calibrated when it is a score threshold
    needs: tuple[str, ...] = ()

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

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
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

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        position = step.index + 1
        fired = position % self.k == 0
        return [TriggerEvent("every_k", fired, score=float(position % self.k), threshold=0.0, detail={"k": self.k})]


def _scorer_needs(scorer: str) -> tuple[str, ...]:
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {', '.join(SCORERS)}")
    return (scorer,) if scorer in MODEL_SCORERS else ()


def _score_event(score, fired: bool, threshold: float, **detail: object) -> TriggerEvent:
    return TriggerEvent("step_score", fired, score=score.value, threshold=threshold,
                        detail={"scorer": score.scorer, **score.detail, **detail})


class TrimThr(_Base):
    """TRIM-Thr: the cloud rewrites a step whose correctness score is below the threshold tau.

    ``scorer`` is ``logprob`` (free), ``self`` (the local model's P(yes)) or ``cloud-judge`` (one
    cloud token); see triggers.scorers. The default tau for ``logprob`` is calibrated RouteLLM-style:
    the 20% quantile of logprob scores of the 0.5B edge model's steps on GSM8K dev problems (README,
    "Bench"); the other two scorers are probabilities and default to 0.5.
    """

    name = "trim-thr"
    uses_cloud = True
    threshold_param = "tau"
    default_tau = 0.68  # 20% quantile of 132 step scores, 20 GSM8K dev problems, qwen2.5-coder-0.5b
    default_tau_by_scorer = {"logprob": default_tau, "self": 0.5, "cloud-judge": 0.5}

    def __init__(self, tau: float | None = None, scorer: str = "logprob") -> None:
        self.needs = _scorer_needs(scorer)
        if tau is not None and not 0.0 <= tau <= 1.0:
            raise ValueError("tau must be between 0 and 1")
        self.tau = self.default_tau_by_scorer[scorer] if tau is None else tau
        self.scorer_name = scorer
        self.params = {k: v for k, v in (("tau", tau), ("scorer", scorer if scorer != "logprob" else None)) if v is not None}

    def score(self, step: Step, inputs: StepInputs | None = None) -> float:
        return step_score(self.scorer_name, step, inputs).value

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        score = step_score(self.scorer_name, step, inputs)
        return [_score_event(score, score.value < self.tau, self.tau)]


# What an escalation costs when no cloud price is known (offline runs): DeepSeek-R1's list price in
# USD per 1M tokens, the same one 'edge-agent cloud-local' uses.
REFERENCE_PRICE = (0.55, 2.19)
CLOUD_STEP_PROMPT_TOKENS = 80  # the rewrite request's instructions, around the problem and the steps


class TrimBudget(_Base):
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
    threshold_param = "lam"

    def __init__(self, lam: float = 1.0, value: float = 0.001, scorer: str = "logprob", budget_tokens: int = 0,
                 rewrite_tokens: int = 64, floor: float = 0.05) -> None:
        import inspect

        given = {k: v for k, v in locals().items() if k not in ("self", "inspect")}
        self.needs = ("spend", *_scorer_needs(scorer))
        if lam < 0 or value <= 0 or budget_tokens < 0 or rewrite_tokens < 1 or not 0 < floor <= 1:
            raise ValueError("lam >= 0, value > 0, budget_tokens >= 0, rewrite_tokens >= 1 and 0 < floor <= 1")
        self.lam, self.value, self.scorer_name = float(lam), float(value), scorer
        self.budget_tokens, self.rewrite_tokens, self.floor = budget_tokens, rewrite_tokens, float(floor)
        defaults = {k: p.default for k, p in inspect.signature(TrimBudget.__init__).parameters.items() if k != "self"}
        self.params = {k: v for k, v in given.items() if v != defaults[k]}
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
        return [_score_event(score, fired, threshold, lam=self.lam, lam_eff=round(lam_eff, 6), value=self.value,
                             expected_cost_usd=round(cost, 9), remaining_share=round(share, 6))]


class TrimLearned(_Base):
    """TRIM-Agg style learned trigger: a logistic regression over free step features ('tune --learn').

    It escalates when the predicted probability that the step is correct is below ``tau``. The
    model is a JSON file saved by ``edge-agent tune --learn`` (``model``: a path, ``vN``, or
    ``latest`` in the config dir's ``models/``); at run time it needs no scikit-learn and no cloud.
    """

    name = "trim-learned"
    uses_cloud = True
    threshold_param = "tau"

    def __init__(self, model: str = "latest", tau: float = 0.5) -> None:
        from .learned import load_model

        if not 0.0 <= tau <= 1.0:
            raise ValueError("tau must be between 0 and 1")
        self.model = load_model(str(model))
        self.tau = float(tau)
        # the resolved version is part of the label, so resume uses the same model
        self.params = {"model": self.model.ref, **({"tau": tau} if tau != 0.5 else {})}

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        from .learned import features

        x = features(steps, step)
        p = self.model.predict(x)
        return [TriggerEvent("step_score", p < self.tau, score=p, threshold=self.tau,
                             detail={"scorer": "learned", "model": self.model.ref,
                                     "features": dict(zip(self.model.features, (round(v, 6) for v in x)))})]


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

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
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


class Hybrid(TrigReason):
    """TrigReason's triggers plus a budget-aware TRIM step score (logprob by default: free).

    The TrigReason triggers go first (plan, loop intervention, offloading), then a step that passes
    ``trim-budget``'s test (``lam``, ``value``, ``scorer``, ``budget_tokens``) is rewritten.
    ``max_cloud`` caps all cloud actions of a session together. ``lam`` defaults to 2, above
    trim-budget's 1: the TrigReason triggers spend too, so the score escalates only clearly shaky
    steps (below ~0.6 on a short GSM8K problem at DeepSeek prices); the bench is to tune it.
    """

    name = "hybrid"
    threshold_param = "lam"

    def __init__(self, lam: float = 2.0, value: float = 0.001, scorer: str = "logprob", budget_tokens: int = 0,
                 **trigreason: object) -> None:
        import inspect

        self.trim = TrimBudget(lam=lam, value=value, scorer=scorer, budget_tokens=budget_tokens)
        super().__init__(**trigreason)  # type: ignore[arg-type]
        defaults = inspect.signature(Hybrid.__init__).parameters
        own = {"lam": lam, "value": value, "scorer": scorer, "budget_tokens": budget_tokens}
        self.params = {**self.params, **{k: v for k, v in own.items() if v != defaults[k].default}}
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
        if self._cloud_used(steps) >= self.cfg["max_cloud"]:
            return Action("accept", trigger=e.trigger, score=e.score, threshold=e.threshold,
                          reason=f"max_cloud={self.cfg['max_cloud']} reached")
        return Action("rewrite", trigger="step_score", score=e.score, threshold=e.threshold)


def _hybrid_signature():
    """Hybrid takes its own four parameters plus every TrigReason one (one list, kept in sync)."""
    import inspect

    own = [p for k, p in inspect.signature(Hybrid.__init__).parameters.items() if k not in ("trigreason",)]
    rest = [p for k, p in inspect.signature(TrigReason.__init__).parameters.items() if k != "self"]
    return inspect.Signature(own + rest)


Hybrid.__init__.__signature__ = _hybrid_signature()  # type: ignore[attr-defined]

POLICIES: dict[str, type] = {p.name: p for p in (LocalOnly, CloudOnly, EveryK, TrimThr, TrimBudget, TrimLearned,
                                                 TrigReason, Hybrid)}


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
    """``trim-thr(tau=0.6)`` -> ("trim-thr", {"tau": "0.6"}). A parameter given twice is refused."""
    from edge_agent.errors import InputError

    spec = spec.strip()
    name, _, rest = spec.partition("(")
    params: dict[str, str] = {}
    if rest:
        if not rest.endswith(")"):
            raise InputError(f"policy {spec!r}: write parameters as NAME(key=value,...)")
        for item in filter(None, (x.strip() for x in rest[:-1].split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise InputError(f"policy {spec!r}: parameter {item!r} must be key=value")
            if key in params:
                raise InputError(f"policy {spec!r}: parameter {key} is given twice: give it once")
            params[key] = value.strip()
    return name.strip(), params


_INT = re.compile(r"[+-]?\d{1,18}")


def _convert(policy: str, key: str, value: object, annotation: object, default: object) -> object:
    """Convert one parameter to its declared type (``int``, ``float``, ``bool``, ``str``); refuse anything else."""
    from edge_agent.errors import InputError

    kinds = str(annotation) if annotation is not inspect.Parameter.empty else type(default).__name__
    words = set(re.findall(r"[a-z]+", kinds))
    text = value.strip() if isinstance(value, str) else value

    def fail(what: str) -> InputError:
        return InputError(f"policy {policy}: parameter {key} takes {what} (got {value!r})")

    if text is None or (isinstance(text, str) and text.lower() == "none"):
        if "None" in kinds:
            return None
        raise fail("a value")
    if "bool" in words:
        if isinstance(text, bool):
            return text
        if isinstance(text, str) and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise fail("true or false")
    if "int" in words:
        if isinstance(text, int) and not isinstance(text, bool):
            return text
        if isinstance(text, str) and _INT.fullmatch(text):
            return int(text)
        raise fail("a whole number")
    if "float" in words:
        if isinstance(text, bool):
            raise fail("a number")
        try:
            number = float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise fail("a number") from None
        if not math.isfinite(number):
            raise fail("a finite number")
        return number
    if not isinstance(text, str):
        raise fail("a word")
    return text


def typed_params(name: str, params: dict[str, object]) -> dict[str, object]:
    """``params`` of policy ``name`` converted to their declared types (as ``get_policy`` does)."""
    from edge_agent.errors import InputError

    cls = POLICIES.get(name)
    if cls is None:
        raise InputError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}")
    signature = inspect.signature(cls.__init__).parameters
    return {k: _convert(name, k, v, signature[k].annotation, signature[k].default) if k in signature else v
            for k, v in params.items()}


def get_policy(spec: str, defaults: dict[str, object] | None = None) -> Policy:
    """Build a policy from ``NAME`` or ``NAME(key=value,...)``; ``defaults`` (from config) fill unset keys."""
    from edge_agent.errors import InputError

    name, params = parse_spec(spec)
    cls = POLICIES.get(name)
    if cls is None:
        raise InputError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}")
    signature = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
                 if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    merged = {**(defaults or {}), **params}
    unknown = set(merged) - set(signature)
    if unknown:
        raise InputError(f"policy {name} has no parameter {', '.join(sorted(unknown))}: "
                         f"use {', '.join(signature) or 'no parameters'}")
    values = {k: _convert(name, k, v, signature[k].annotation, signature[k].default) for k, v in merged.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise InputError(f"policy {name}: {e}") from None
