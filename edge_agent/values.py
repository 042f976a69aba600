"""Shared value types: frozen dataclasses that every package may import."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Author = Literal["local", "cloud"]
Kind = Literal["plan", "step", "intervention"]


@dataclass(frozen=True)
class Signals:
    """Confidence statistics of one step, read from last-token logits while decoding."""

    n_tokens: int = 0
    mean_entropy: float = 0.0
    max_entropy: float = 0.0
    first_entropy: float = 0.0
    mean_top1: float = 1.0
    min_top1: float = 1.0
    first_top1: float = 1.0
    low_top1_share: float = 0.0  # share of tokens whose top-1 probability is < 0.5
    has_answer: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Signals":
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Step:
    """One reasoning step as it stands in the transcript.

    ``raw`` is the exact text the model saw (including the blank-line separator
    when there is one) and ``token_ids`` the exact tokens, so a reloaded state
    rebuilds the same context without re-tokenizing.
    """

    index: int
    author: Author
    kind: Kind
    text: str
    raw: str
    token_ids: tuple[int, ...]
    signals: Signals = field(default_factory=Signals)
    trigger: str | None = None
    finish: str = "separator"  # separator | answer | eos | length | context
    seconds: float = 0.0
    id: str | None = None

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class TriggerEvent:
    """A detector's verdict with the numbers behind it."""

    trigger: str
    fired: bool
    score: float | None = None
    threshold: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """What the policy decided for a step: accept | rewrite | intervene | plan | solve."""

    kind: Literal["accept", "rewrite", "intervene", "plan", "solve"] = "accept"
    trigger: str | None = None
    score: float | None = None
    threshold: float | None = None
    reason: str = ""


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
