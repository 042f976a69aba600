"""The value types edge_agent works with. Each package owns its own (``triggers.types``,
``cloud.types``); this module gathers them for the CLI, the agent and the tests, and adds ``Usage``."""

from __future__ import annotations

from dataclasses import dataclass

from cloud.types import CloudReply
from triggers.types import Action, Author, Kind, Signals, Step, TriggerEvent

__all__ = ["Action", "Author", "CloudReply", "Kind", "Signals", "Step", "TriggerEvent", "Usage"]


@dataclass(frozen=True)
class Usage:
    """Addable usage split by side (local vs cloud)."""

    local_steps: int = 0
    cloud_steps: int = 0
    local_tokens: int = 0
    local_evaluated: int = 0
    cloud_input_tokens: int = 0
    cloud_output_tokens: int = 0
    cloud_cached_tokens: int = 0
    cost_usd: float = 0.0
    local_s: float = 0.0
    cloud_s: float = 0.0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__})

    @property
    def offload_ratio(self) -> float | None:
        total = self.local_steps + self.cloud_steps
        return self.local_steps / total if total else None
