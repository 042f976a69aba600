"""The reasoning value types triggers work on: a step, its signals, a detector's event, a decision.

Owned here, at the bottom: ``edge_agent`` and ``store`` read these shapes; nothing here imports them.
"""

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
    # the edge's own log-probability (nats) of each token it chose: what a cloud read is compared with
    sum_logprob: float = 0.0
    mean_logprob: float = 0.0
    min_logprob: float = 0.0

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
    """What the policy decided for a step: accept | rewrite | intervene | plan | solve | handover | restore.

    ``restore`` (a review's): put the draft's own steps back from ``at`` on, undoing a repair the read trusts less.

    ``handover``: the cloud writes the rest of the solution from this step, continuing the accepted ones."""

    kind: Literal["accept", "rewrite", "intervene", "plan", "solve", "handover", "restore"] = "accept"
    trigger: str | None = None
    score: float | None = None
    threshold: float | None = None
    reason: str = ""
    at: int | None = None  # a review's rewrite: the step to roll back to and let the cloud write
    detail: dict[str, Any] | None = None  # what the decision read (kept with its event)
