"""``verify-repair``: once the edge's draft is finished, the cloud reads it; a suspicious draft is repaired once.

The agent reads the finished draft (one prefill of its tokens through the cloud: ``triggers.reading``) and
offers the read to ``review``. If the draft's suspicion (sum of e - c) is at least ``tau``, the policy rolls
back to the step the read flags most (k < ``max_k``); the cloud writes that step by continuation and the edge
finishes. With ``keep`` the new finish is read too, and if the read trusts it less (lower mean c - e) than the
draft, the draft's own steps are restored. At most ``rounds`` repairs, each through the budget. The figures
behind the design are in BASELINES.md; the atlas's reads replay the same policy (``atlas read``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import ACCEPT, BasePolicy
from .errors import PolicyError
from .types import Action, Step

TRIGGER = "verify_repair"


@dataclass(frozen=True)
class VerifyRepairParams:
    tau: float = 8.0  # suspicion sum(e - c), in nats, at which the draft is repaired
    max_k: int = 4  # a repair is aimed at a reasoning step k < max_k
    rounds: int = 1  # repairs at most
    keep: bool = True  # read the repaired finish and keep whichever the read trusts more


class VerifyRepair(BasePolicy):
    name = "verify-repair"
    Params = VerifyRepairParams
    uses_cloud = True
    wants_read = True  # the agent reads each finished draft and passes it to review()

    def check_params(self, p: VerifyRepairParams) -> None:
        if p.max_k < 1 or p.rounds < 0:
            raise PolicyError("verify-repair needs max_k >= 1 and rounds >= 0: fix the policy's parameters")

    def reset(self, problem: str) -> None:
        self._pending: dict[str, Any] | None = None  # the draft before the last repair: its trust and its steps
        self.restore_steps: list[Step] = []  # what the agent puts back on a "restore"
        self.restore_status = "ended"

    def kept_draft(self) -> dict[str, Any] | None:
        """The draft before the last repair: its read's ``trust``, the step repaired (``at``), its ``steps`` from
        there and its ``status``. The agent stores it, so that a resumed review decides as an uninterrupted one."""
        return getattr(self, "_pending", None)

    def recall(self, draft: dict[str, Any] | None) -> None:
        """Take back what ``kept_draft`` said before the run ended."""
        self._pending = draft

    def review(self, steps: Sequence[Step], status: str, sent_back: int = 0, read: Any = None) -> Action:
        pending, self._pending = getattr(self, "_pending", None), None
        if read is None:
            return Action("accept", trigger=TRIGGER, reason="no read (offline, budget, or the cloud cannot read)")
        if pending is not None and self.cfg.keep and read.trust < pending["trust"]:
            self.restore_steps, self.restore_status = pending["steps"], pending["status"]
            return Action("restore", trigger=TRIGGER, score=read.trust, threshold=pending["trust"],
                          reason="the read trusts the draft more than the repair", at=pending["at"],
                          detail={"trust": round(read.trust, 6)})
        if sent_back >= self.cfg.rounds:
            return ACCEPT if pending is None else Action(
                "accept", trigger=TRIGGER, score=read.trust, threshold=pending["trust"],
                reason="the read trusts the repair more than the draft")
        reasoning = [s for s in steps if s.kind == "step"]
        positions = {s.index: i for i, s in enumerate(steps)}
        first = 0 if pending is None else next((i for i, s in enumerate(reasoning) if s.index == pending["at"]), -1) + 1
        k = read.flagged(self.cfg.max_k, first)
        detail = {"suspicion": round(read.suspicion, 6), "trust": round(read.trust, 6), "flagged": k}
        if read.suspicion < self.cfg.tau or k is None or k >= len(reasoning):
            return Action("accept", trigger=TRIGGER, score=read.suspicion, threshold=self.cfg.tau,
                          reason="the read finds the draft believable", detail=detail)
        at = reasoning[k].index
        self._pending = {"trust": read.trust, "at": at, "steps": list(steps[positions[at]:]), "status": status}
        return Action("rewrite", trigger=TRIGGER, score=read.suspicion, threshold=self.cfg.tau,
                      reason=f"the read flags step {k}", at=at, detail=detail)
