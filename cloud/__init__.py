"""Cloud models behind one narrow interface: adapters, pricing and the budget. Knows nothing of steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from edge_agent.values import CloudReply


class CloudModel(Protocol):
    provider: str
    model: str

    def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int, stop: Sequence[str] = ()) -> CloudReply:
        """One chat completion; always returns a ``CloudReply``."""
        ...


__all__ = ["CloudModel", "CloudReply"]
