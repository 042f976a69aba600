"""Cloud models behind one narrow interface: adapters, pricing, the budget and the breaker.

Knows nothing of steps or triggers. Heavy SDKs are imported only when an adapter is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .types import CloudReply


class CloudModel(Protocol):
    provider: str
    model: str

    def call(self, messages: Sequence[dict[str, str]], *, max_tokens: int, budget, purpose: str,
             step_idx: int | None = None, stop: Sequence[str] = ()) -> CloudReply:
        """One chat completion through the budget; always returns a ``CloudReply``."""
        ...


__all__ = ["CloudModel", "CloudReply"]
