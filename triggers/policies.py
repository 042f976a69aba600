"""Policies decide, per step, whether the local step stands or the cloud acts.

Every policy returns an ``Action`` carrying the score and threshold behind it, so a stored
decision can explain itself. New policies register in ``POLICIES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge_agent.values import Action, Step, TriggerEvent


class Policy(Protocol):
    name: str
    uses_cloud: bool

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        """Run this policy's detectors on a new local step."""
        ...

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        """Turn detector events into one action for the step."""
        ...


class LocalOnly:
    """Baseline: every local step is accepted; the cloud is never called."""

    name = "local-only"
    uses_cloud = False

    def check(self, steps: Sequence[Step], step: Step) -> list[TriggerEvent]:
        return []

    def decide(self, steps: Sequence[Step], step: Step, events: Sequence[TriggerEvent]) -> Action:
        return Action("accept")


POLICIES: dict[str, type] = {LocalOnly.name: LocalOnly}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        from edge_agent.errors import InputError

        raise InputError(f"unknown policy {name!r}: use one of {', '.join(POLICIES)}") from None
