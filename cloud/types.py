"""The cloud's value types."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class CloudReply:
    """A cloud model's answer: always this shape, whatever the provider."""

    text: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: float
    latency_s: float
    provider: str
    model: str
    status: str = "ok"  # ok | no_usage (costed at the reservation) | overrun | cache_hit
    overrun_usd: float = 0.0  # what the provider's usage claimed above the reservation (not booked)
