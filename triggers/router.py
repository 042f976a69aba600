"""The learned router: where one cloud step pays, learned from the routing atlas's outcomes.

The atlas tells, for every step k of an edge trace, whether a cloud step written at k (by
continuation, the edge finishing the rest) fixes a wrong answer (*gain*) or breaks a right one
(*harm*). Free per-step signals barely tell *where* a step helps, but the finished trace tells
*whether* it is wrong (BASELINES.md), so the router decides once the edge's draft is complete: it
scores every candidate step k < ``max_k`` with two logistic heads over run-time features (the trace's
and the step's), predicts ``P(gain) - P(harm)``, and when the best step passes ``tau`` it rolls the
draft back to that step, the cloud writes it, and the edge finishes. That is exactly the atlas's branch
at k, so the atlas's outcome is the router's outcome.

Features need no cloud and no model call: they are read off the stored steps (signals, text), so the
vector at run time equals the one computed from the atlas for the same step. The model is versioned
JSON (``router-vN.json`` in the models dir, as ``trim-learned``); predicting is a dot product.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import detectors as d
from .base import ACCEPT
from .errors import PolicyError
from .learned import model_path, models_dir, save_versioned
from .scorers import logprob_score
from .trigreason import TrigReason, TrigReasonParams
from .types import Action, Step

FORMAT = 1  # the model file's layout; a file with a higher format was written by a newer edge-agent
PREFIX = "router-v"
TRIGGER = "router"
# feature groups (the ablation table removes one group at a time)
GROUPS: dict[str, tuple[str, ...]] = {
    "index": ("index", "position"),
    "step": ("log_tokens", "score", "mean_entropy", "max_entropy", "first_entropy", "min_top1", "mean_top1",
             "first_top1", "low_top1_share", "has_answer_step"),
    "trim_agg": ("min_prev_score", "prod_prev_score"),
    "detectors": ("overconfident", "uncertainty", "ngram_share", "new_numbers"),
    "trace": ("n_steps", "log_trace_tokens", "trace_answered", "trace_min_score", "trace_mean_score",
              "trace_min_top1", "trace_max_entropy", "problem_words"),
}
FEATURES: tuple[str, ...] = tuple(f for names in GROUPS.values() for f in names)


def reasoning(steps: Sequence[Step]) -> list[Step]:
    """The steps a router looks at: the trace's reasoning steps (no plan, no intervention)."""
    return [s for s in steps if s.kind == "step"]


def trace_features(problem: str, steps: Sequence[Step], status: str) -> dict[str, float]:
    """What the whole draft says about whether it is wrong (the same for every candidate step)."""
    scores = [logprob_score(s.signals) for s in steps] or [1.0]
    return {"n_steps": float(len(steps)), "log_trace_tokens": math.log1p(sum(s.tokens for s in steps)),
            "trace_answered": float(status == "done"), "trace_min_score": min(scores),
            "trace_mean_score": sum(scores) / len(scores),
            "trace_min_top1": min((s.signals.min_top1 for s in steps), default=1.0),
            "trace_max_entropy": max((s.signals.max_entropy for s in steps), default=0.0),
            "problem_words": math.log1p(len(problem.split()))}


def step_features(problem: str, steps: Sequence[Step], k: int) -> dict[str, float]:
    """What step ``k`` of the trace says about itself and what came before it."""
    step, before = steps[k], list(steps[:k])
    sig = step.signals
    prev = [logprob_score(s.signals) for s in before]
    over = d.overconfidence(problem, before, step, confidence_min=0.85, min_steps=2)
    unsure = d.uncertainty(step, first_top1_min=0.3, min_top1_min=0.05)
    loop = d.loop(problem, before, step, cosine_min=2.0, window=3, ngram_share=2.0, stall_steps=3)
    return {"index": float(k), "position": k / max(len(steps), 1), "log_tokens": math.log1p(step.tokens),
            "score": logprob_score(sig), "mean_entropy": sig.mean_entropy, "max_entropy": sig.max_entropy,
            "first_entropy": sig.first_entropy, "min_top1": sig.min_top1, "mean_top1": sig.mean_top1,
            "first_top1": sig.first_top1, "low_top1_share": sig.low_top1_share,
            "has_answer_step": float(sig.has_answer), "min_prev_score": min(prev, default=1.0),
            "prod_prev_score": math.prod(prev), "overconfident": float(over.fired),
            "uncertainty": float(unsure.score or 0.0), "ngram_share": float(loop.detail.get("ngram_share", 0.0)),
            "new_numbers": float(len(over.detail.get("new_numbers") or ()))}


def candidates(problem: str, steps: Sequence[Step], status: str, max_k: int) -> list[tuple[int, list[float]]]:
    """(step k, feature vector in ``FEATURES`` order) for each step a cloud step could replace.

    Candidates are the local reasoning steps before any cloud-written step, k < ``max_k``."""
    trace = reasoning(steps)
    local = []
    for s in trace:
        if s.author != "local":
            break
        local.append(s)
    whole = trace_features(problem, trace, status)
    out = []
    for k in range(min(len(local), max_k)):
        f = {**step_features(problem, trace, k), **whole}
        out.append((k, [float(f[name]) for name in FEATURES]))
    return out


@dataclass(frozen=True)
class Head:
    """One logistic regression: P = sigmoid(coef . (x - mean) / scale + intercept), over ``features``."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def predict(self, x: Sequence[float]) -> float:
        z = self.intercept + sum(c * (v - m) / s for c, v, m, s in zip(self.coef, x, self.mean, self.scale))
        z = max(min(z, 60.0), -60.0)
        return 1.0 / (1.0 + math.exp(-z))

    def to_json(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "scale": list(self.scale), "coef": list(self.coef),
                "intercept": self.intercept}

    @classmethod
    def from_json(cls, data: dict[str, Any], n: int) -> Head:
        mean, scale, coef = (tuple(float(v) for v in data[key]) for key in ("mean", "scale", "coef"))
        if not len(mean) == len(scale) == len(coef) == n or any(not s > 0 for s in scale):
            raise ValueError("shape")
        return cls(mean, scale, coef, float(data["intercept"]))


@dataclass(frozen=True)
class RouterModel:
    """Two heads over the same features: P(a cloud step here fixes a wrong answer), P(... breaks a right one)."""

    features: tuple[str, ...]
    gain: Head
    harm: Head
    max_k: int
    tau: float = 0.0  # escalate when the best step's predicted net gain is at least this
    version: int = 0
    ref: str = ""
    training: dict[str, Any] | None = None

    def net(self, x: Sequence[float]) -> float:
        """Predicted gain minus harm of one cloud step at a candidate (its features in model order)."""
        return round(self.gain.predict(x) - self.harm.predict(x), 6)

    def best(self, cands: Sequence[tuple[int, Sequence[float]]]) -> tuple[int, float] | None:
        """The candidate step with the highest net gain (the earlier one on a tie), or None."""
        scored = [(self.net(x), -k, k) for k, x in cands]
        if not scored:
            return None
        net, _, k = max(scored)
        return k, net

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "kind": "router", "version": self.version, "features": list(self.features),
                "max_k": self.max_k, "tau": self.tau, "gain": self.gain.to_json(), "harm": self.harm.to_json(),
                "training": self.training or {}}


def save_router(model: RouterModel, directory: Path | None = None) -> tuple[Path, RouterModel]:
    """Write the model as the next version (``router-vN.json``, mode 0600); older versions are kept."""
    return save_versioned(model, directory or models_dir(), PREFIX)


def load_router(ref: str = "latest", directory: Path | None = None) -> RouterModel:
    """``latest``, ``vN`` (in the models dir) or a path to a router JSON file."""
    directory = directory or models_dir()
    hint = "fit one with 'edge-agent atlas fit DIR'"
    path = model_path(ref, directory, PREFIX, f"no router model in {directory}: {hint}")
    try:
        if not path.is_file():
            raise FileNotFoundError(path)
        if path.stat().st_size > 1 << 20:
            raise PolicyError(f"router model {path} is over 1 MiB: not a model file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"no router model at {path}: {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise PolicyError(f"cannot read router model {path} ({type(e).__name__}): {hint}") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if isinstance(fmt, int) and fmt > FORMAT:
        raise PolicyError(f"router model {path} was written by a newer edge-agent (format {fmt}, this one reads "
                          f"{FORMAT}): upgrade edge-agent, or fit a model with this one")
    try:
        if fmt != FORMAT or data["kind"] != "router" or tuple(data["features"]) != FEATURES:
            raise ValueError("format")
        n = len(FEATURES)
        model = RouterModel(features=FEATURES, gain=Head.from_json(data["gain"], n),
                            harm=Head.from_json(data["harm"], n), max_k=int(data["max_k"]),
                            tau=float(data["tau"]), version=int(data.get("version") or 0),
                            training=data.get("training") or {})
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PolicyError(f"router model {path} does not match this version's features: {hint}") from None
    mine = path.parent == directory and path.name == f"{PREFIX}{model.version}.json"
    return replace(model, ref=f"v{model.version}" if mine else str(path))


@dataclass(frozen=True)
class RouterParams(TrigReasonParams):
    model: str = "latest"  # latest, vN (in the models dir) or a path to a router JSON file
    tau: float | None = None  # None: the threshold saved with the model (set by 'atlas fit --share')
    # TrigReason's triggers: only the loop intervention, the one that stops a runaway trace
    plan: str = "never"
    offload: bool = False
    loop: bool = True
    max_cloud: int = 1  # cloud actions per problem, the router's step and any loop intervention together


class Router(TrigReason):
    """The learned router, with TrigReason's loop intervention: one cloud step where it pays most.

    It reviews the finished draft (``review``): every local step k < the model's ``max_k`` is scored
    with predicted gain minus harm; the best one, when it reaches ``tau``, is rolled back and written
    by the cloud, and the edge finishes from there. ``max_cloud`` caps the cloud actions per problem.
    """

    name = "router"
    Params = RouterParams
    threshold_param = "tau"

    def check_params(self, p: RouterParams) -> None:
        super().check_params(p)
        if p.tau is not None and not -1.0 <= p.tau <= 1.0:
            raise PolicyError("tau must be between -1 and 1 (a net gain)")
        self._model: RouterModel | None = None

    @property
    def model(self) -> RouterModel:
        """The saved model, read on first use (building the policy touches no file)."""
        if self._model is None:
            self._model = load_router(str(self.cfg.model))
        return self._model

    @property
    def tau(self) -> float:
        return self.model.tau if self.cfg.tau is None else float(self.cfg.tau)

    @property
    def params(self) -> dict[str, object]:
        # the resolved version is part of the label, so resume uses the same model
        return {**{k: v for k, v in super().params.items() if k != "model"}, "model": self.model.ref}

    def review(self, steps: Sequence[Step], status: str, sent_back: int = 0) -> Action:
        """The draft is finished (``status``): roll back to the best step and let the cloud write it, or accept.

        ``sent_back``: how many times earlier reviews of this session rolled back (their cloud steps
        may have been superseded since, but they count against ``max_cloud``)."""
        others = sum(1 for s in steps if s.author == "cloud" and s.trigger != TRIGGER)
        if others + sent_back >= self.cfg.max_cloud:
            return ACCEPT
        cands = candidates(self.problem, steps, status, self.model.max_k)
        best = self.model.best(cands)
        if best is None:
            return ACCEPT
        k, net = best
        detail = {"model": self.model.ref, "k": k,
                  "features": dict(zip(FEATURES, (round(v, 6) for v in dict(cands)[k])))}
        if net < self.tau:
            return Action("accept", trigger=TRIGGER, score=net, threshold=self.tau, reason=f"best step {k}",
                          detail=detail)
        return Action("rewrite", trigger=TRIGGER, score=net, threshold=self.tau, reason=f"best step {k}",
                      at=reasoning(steps)[k].index, detail=detail)
