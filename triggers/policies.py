"""Policies decide, per step, whether the local step stands or the cloud acts.

Every policy returns an ``Action`` carrying the score and threshold behind it, so a stored
decision can explain itself. New policies register in ``POLICIES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .base import ACCEPT, BasePolicy, NoParams, Policy
from .errors import PolicyError
from .scorers import StepInputs
from .spec import convert, parse_spec, shown_as, split_specs
from .router import Router
from .trigreason import Hybrid, TrigReason
from .trim import TrimBudget, TrimLearned, TrimThr
from .verify_repair import VerifyRepair
from .types import Action, Step, TriggerEvent

__all__ = ["ACCEPT", "POLICIES", "BasePolicy", "CloudOnly", "EveryK", "Hybrid", "LocalOnly", "NoParams", "Policy",
           "TrigReason", "TrimBudget", "TrimLearned", "TrimThr", "get_policy", "parse_spec", "policy_parameters",
           "split_specs", "typed_params"]


class LocalOnly(BasePolicy):
    """Baseline: every local step is accepted; the cloud is never called."""

    name = "local-only"


class CloudOnly(BasePolicy):
    """Baseline: the large model alone. It writes the whole solution in one call (split into steps);
    if that stops short of an answer it goes on step by step. The local model writes only when the
    cloud cannot (refused by the budget, or down)."""

    name = "cloud-only"
    uses_cloud = True

    def before_step(self, steps: Sequence[Step]) -> Action:
        if not steps:
            return Action("solve", trigger="cloud_only", reason="cloud-only solves the whole problem")
        return Action("rewrite", trigger="cloud_only", reason="cloud-only writes every step")


@dataclass(frozen=True)
class EveryKParams:
    k: int = 2


class EveryK(BasePolicy):
    """For testing the cloud path: the cloud rewrites every k-th reasoning step (k=2: steps 1, 3, 5…)."""

    name = "every-k"
    uses_cloud = True
    Params = EveryKParams

    def check_params(self, p: EveryKParams) -> None:
        if p.k < 1:
            raise PolicyError("k must be >= 1")

    @property
    def k(self) -> int:
        return self.cfg.k

    def check(self, steps: Sequence[Step], step: Step, inputs: StepInputs | None = None) -> list[TriggerEvent]:
        position = step.index + 1
        fired = position % self.k == 0
        return [TriggerEvent("every_k", fired, score=float(position % self.k), threshold=0.0, detail={"k": self.k})]


@dataclass(frozen=True)
class BranchAtParams:
    k: int = 0
    handover: bool = False


class BranchAt(BasePolicy):
    """For the routing atlas: the cloud writes step k (or, with handover, the rest from k); the local model the others."""

    name = "branch-at"
    uses_cloud = True
    Params = BranchAtParams

    def check_params(self, p: BranchAtParams) -> None:
        if p.k < 0:
            raise PolicyError("k must be >= 0")

    def before_step(self, steps: Sequence[Step]) -> Action:
        reasoning = [s for s in steps if s.kind != "plan"]
        if len(reasoning) == self.cfg.k and not any(s.author == "cloud" for s in steps):
            return Action("handover" if self.cfg.handover else "rewrite", trigger="atlas_branch",
                          reason=f"the atlas branch at step {self.cfg.k}")
        return ACCEPT


POLICIES: dict[str, type] = {p.name: p for p in (LocalOnly, CloudOnly, EveryK, TrimThr, TrimBudget, TrimLearned,
                                                 TrigReason, Hybrid, BranchAt, Router, VerifyRepair)}


def _fields(name: str) -> tuple[type, dict[str, dataclasses.Field]]:
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}")
    return cls, {f.name: f for f in dataclasses.fields(cls.Params)}


def typed_params(name: str, params: dict[str, object]) -> dict[str, object]:
    """``params`` of policy ``name`` converted to their declared types (as ``get_policy`` does)."""
    _, fields = _fields(name)
    return {k: convert(name, k, v, str(fields[k].type)) if k in fields else v for k, v in params.items()}


def get_policy(spec: str, defaults: dict[str, object] | None = None) -> Policy:
    """Build a policy from ``NAME`` or ``NAME(key=value,...)``; ``defaults`` (from config) fill unset keys."""
    name, params = parse_spec(spec)
    cls, fields = _fields(name)
    merged = {**(defaults or {}), **params}
    unknown = set(merged) - set(fields)
    if unknown:
        raise PolicyError(f"policy {name} has no parameter {', '.join(sorted(unknown))}: "
                          f"use {', '.join(fields) or 'no parameters'}")
    values = {k: convert(name, k, v, str(fields[k].type)) for k, v in merged.items()}
    shown = {k: shown_as(merged[k], v) for k, v in values.items()}
    return cls(cls.Params(**values), shown)


def policy_parameters(name: str) -> dict[str, object]:
    """Each parameter of policy ``name`` with its default (for ``edge-agent policies``)."""
    cls, fields = _fields(name)
    own = cls.Params.__dict__.get("__annotations__", {})  # a subclass's own fields first (hybrid: lam, ...)
    out = {k: fields[k].default for k in [*own, *(k for k in fields if k not in own)]}
    if out.get("tau", 0) is None:
        out["tau"] = getattr(cls, "default_tau", None)
    return out
