"""What the agent asks of the cloud: a plan, one step, a review, the rest of a solution, a rating.

Every call goes through the budget (reserve, call, settle) and, refused or failed, leaves an event
saying why; the local model then goes on. A cloud step is written by continuation of the edge's own
turn (prefill) where the provider allows it, else from a transcript prompt (docs/cloud.md, "Cloud steps").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from triggers.scorers import Score

from .answer import extract_answer
from .prompts import (cloud_step_messages, continuation_messages, handover_messages, intervene_messages,
                      plan_messages, solve_messages)
from .values import Step, TriggerEvent


def resolve_continuation(setting: str, cloud: Any) -> str:
    """``on`` or ``off`` for a ``[cloud] continuation`` setting; ``auto`` goes by provider.

    Anthropic takes a final assistant message as a prefill; OpenAI's own API has none, so it gets the
    transcript prompt; any other OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp, cloud-local) is
    asked to continue, and a refusal falls back to the transcript for the rest of the session.
    """
    if setting in ("on", "off"):
        return setting
    if cloud is None:
        return "off"
    if cloud.provider == "anthropic":
        return "on"
    base = getattr(cloud.adapter, "base_url", None)
    host = (urlsplit(base).hostname or "") if base else "api.openai.com"
    return "off" if host == "openai.com" or host.endswith(".openai.com") else "on"


def _refused_prefill(events: list) -> bool:
    """The last call failed with an HTTP 400: the provider refused the request as shaped (the prefill)."""
    if not events:
        return False
    last = events[-1][0]
    return last.trigger == "cloud_error" and last.detail.get("kind") == "http_400"


class CloudActions:
    """The cloud calls of ``Agent`` (it provides ``db``, ``caps``, ``cloud``, ``offline`` and ``model``)."""

    ledger: Any = None  # where reservations go: None is store.ledger on db (a Ray worker sets the driver's)

    def _budget(self, session_id: str) -> Any:
        from cloud.budget import Budget

        return Budget(self.db, self.caps, session_id, self.ledger)

    def _ask(self, session_id: str, msgs: list[dict[str, str]], *, purpose: str, step_idx: int,
             max_tokens: int, events: list, stop: Any = None, prefill: bool = False) -> Any:
        """One cloud call; on refusal or failure, record why and return None (the local model goes on)."""
        extra = {"prefill": True} if prefill else {}
        return self._guarded(purpose, events, lambda: self.cloud.call(
            msgs, max_tokens=max_tokens, budget=self._budget(session_id), purpose=purpose, step_idx=step_idx,
            stop=stop if stop is not None else (["\n\n"] if purpose != "intervene" else []), **extra))

    def _guarded(self, purpose: str, events: list, call: Callable[[], Any]) -> Any:
        """Run one cloud call; on no cloud, refusal or failure, record why as an event and return None."""
        from .errors import BudgetDenied, CloudError

        if self.cloud is None:
            reason = "offline" if self.offline else "no cloud configured"
            events.append((TriggerEvent("cloud_unavailable", True, detail={"purpose": purpose, "reason": reason}), "keep_local"))
            return None
        try:
            got = call()
        except BudgetDenied as e:
            events.append((TriggerEvent("budget_denied", True, score=e.committed_usd + e.needed_usd, threshold=e.cap_usd,
                                        detail={"purpose": purpose, "scope": e.scope, "message": str(e)}), "keep_local"))
            return None
        except CloudError as e:
            name = "cloud_unavailable" if (e.opens_breaker or e.kind == "circuit_open") else "cloud_error"
            detail = {"purpose": purpose, "kind": e.kind, "message": str(e)}
            if getattr(e, "detail", ""):
                detail["provider_message"] = e.detail
            events.append((TriggerEvent(name, True, detail=detail), "keep_local"))
            return None
        reply = got[0] if isinstance(got, tuple) else got  # judge returns (reply, logprobs)
        if getattr(reply, "status", "ok") == "overrun":  # the provider claimed more than was reserved
            claimed = reply.cost_usd + reply.overrun_usd
            events.append((TriggerEvent("cloud_overrun", True, score=claimed, threshold=reply.cost_usd,
                                        detail={"purpose": purpose, "reported_usd": claimed,
                                                "booked_usd": reply.cost_usd}), "accept"))
        return got

    def _as_step(self, text: str, index: int, kind: str, trigger: str | None, seconds: float, finish: str) -> Step:
        raw = text + "\n\n"
        return Step(index=index, author="cloud", kind=kind, text=text, raw=raw,
                    token_ids=tuple(self.model.tokenize(raw)), trigger=trigger, finish=finish, seconds=seconds)

    def rewrite_step(self, session_id: str, problem: str, steps: list[Step], index: int, trigger: str | None,
                     events: list, max_tokens: int = 256, *, continuation: bool = False) -> Step | None:
        """The cloud writes only step ``index``; None if it could not (the reason is in ``events``).

        ``continuation``: the cloud continues the edge's own turn from the accepted steps (prefill);
        otherwise it gets the transcript prompt. A provider that refuses the prefill (HTTP 400) gets
        the transcript prompt for this call, and a ``continuation_refused`` event says why.
        """
        if continuation:
            reply = self._ask(session_id, continuation_messages(problem, steps), purpose="rewrite_step",
                              step_idx=index, max_tokens=max_tokens, events=events, prefill=True)
            if reply is None and _refused_prefill(events):
                last = events[-1][0]
                events.append((TriggerEvent("continuation_refused", True, detail={
                    "purpose": "rewrite_step", "message": last.detail.get("provider_message") or last.detail["message"],
                    "fallback": "transcript"}), "fallback"))
                continuation = False
            elif reply is None:
                return None
        if not continuation:
            reply = self._ask(session_id, cloud_step_messages(problem, steps), purpose="rewrite_step",
                              step_idx=index, max_tokens=max_tokens, events=events)
        if reply is None:
            return None
        return self._one_step(reply, index, "step", trigger, events, "rewrite_step")

    def _one_step(self, reply: Any, index: int, kind: str, trigger: str | None, events: list, purpose: str) -> Step | None:
        """The reply's first paragraph as the cloud's step (a reply that goes on is cut at the blank line)."""
        text = reply.text.strip().split("\n\n", 1)[0].strip()
        if not text:
            events.append((TriggerEvent("cloud_error", True, detail={"purpose": purpose, "kind": "empty"}), "keep_local"))
            return None
        finish = "answer" if extract_answer(text) is not None else "separator"
        return self._as_step(text, index, kind, trigger, reply.latency_s, finish)

    def handover(self, session_id: str, problem: str, steps: list[Step], index: int, max_steps: int, events: list,
                 max_tokens: int = 768, *, trigger: str | None = None, continuation: bool = False) -> list[Step]:
        """The cloud writes the rest of the solution from step ``index`` (continuing the accepted steps
        when ``continuation``), split into steps at blank lines; [] if it could not."""
        msgs = continuation_messages(problem, steps) if continuation else handover_messages(problem, steps)
        reply = self._ask(session_id, msgs, purpose="handover", step_idx=index, max_tokens=max_tokens,
                          events=events, stop=(), prefill=continuation)
        if reply is None:
            return []
        return self._split(reply, index, max_steps, trigger or "handover", events, "handover")

    def plan(self, session_id: str, problem: str, events: list, max_tokens: int = 96) -> Step | None:
        """Strategic initiation: a short plan (no calculations) as step 0, authored by the cloud."""
        reply = self._ask(session_id, plan_messages(problem), purpose="plan", step_idx=0,
                          max_tokens=max_tokens, events=events)
        if reply is None or not reply.text.strip():
            return None
        return self._as_step("Plan:\n" + reply.text.strip(), 0, "plan", "strategic_initiation", reply.latency_s, "separator")

    def intervene(self, session_id: str, problem: str, steps: list[Step], events: list,
                  max_tokens: int = 256) -> tuple[int | None, str] | None:
        """Ask the cloud to review the trace: (first_wrong_step or None, next_step), or None on failure.

        Invalid JSON is re-asked once, then given up cleanly.
        """
        msgs = intervene_messages(problem, steps)
        for attempt in range(2):
            reply = self._ask(session_id, msgs, purpose="intervene", step_idx=len(steps), max_tokens=max_tokens, events=events)
            if reply is None:
                return None
            parsed = parse_intervention(reply.text, len(steps))
            if parsed is not None:
                return parsed
            msgs = msgs + [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": 'That was not valid. Reply with JSON only: {"first_wrong_step": K or null, "next_step": "..."}'},
            ]
        events.append((TriggerEvent("cloud_error", True, detail={"purpose": "intervene", "kind": "invalid_json"}), "keep_local"))
        return None

    def solve_in_cloud(self, session_id: str, problem: str, index: int, max_steps: int, events: list,
                       max_tokens: int = 1024) -> list[Step]:
        """The large model alone: one call for the whole solution, split into steps at blank lines."""
        reply = self._ask(session_id, solve_messages(problem), purpose="solve", step_idx=index,
                          max_tokens=max_tokens, events=events, stop=())
        if reply is None:
            return []
        return self._split(reply, index, max_steps, "cloud_only", events, "solve")

    def _split(self, reply: Any, index: int, max_steps: int, trigger: str, events: list, purpose: str) -> list[Step]:
        """A reply that writes several steps, split at blank lines, up to the first stated answer."""
        parts = [p.strip() for p in reply.text.strip().split("\n\n") if p.strip()]
        if not parts:
            events.append((TriggerEvent("cloud_error", True, detail={"purpose": purpose, "kind": "empty"}), "keep_local"))
            return []
        for n, part in enumerate(parts):  # stop at the first stated answer
            if extract_answer(part) is not None:
                parts = parts[: n + 1]
                break
        if len(parts) > max_steps:  # the step cap holds: the tail becomes one last step
            parts = parts[: max_steps - 1] + ["\n".join(parts[max_steps - 1:])]
        share = reply.latency_s / len(parts)
        return [self._as_step(part, index + n, "step", trigger, share,
                              "answer" if extract_answer(part) is not None else "separator")
                for n, part in enumerate(parts)]

    def judge_score(self, session_id: str, problem: str, steps: list[Step], step: Step, events: list) -> Score:
        """The cloud's 0-9 rating of ``step`` as a score; the logprob score if the cloud is refused or down."""
        from triggers.scorers import digit_score, judge_messages, logprob_score

        got = self._guarded("judge", events, lambda: self.cloud.judge(
            judge_messages(problem, steps, step), budget=self._budget(session_id), step_idx=step.index))
        if got is not None:
            reply, top = got
            rated = digit_score(top, reply.text)
            if rated is not None:
                value, detail = rated
                return Score(value, "cloud-judge", {**detail, "input_tokens": reply.input_tokens,
                                                    "output_tokens": reply.output_tokens, "cost_usd": reply.cost_usd})
            reason = f"judge: no digit in {reply.text[:20]!r}"
        else:
            last = events[-1][0] if events else None
            reason = f"judge: {last.trigger if last is not None else 'no reply'}"
        return Score(logprob_score(step.signals), "logprob", {"fallback": reason})

    def read_draft(self, session_id: str, problem: str, prompt: list[int], steps: list[Step], events: list) -> Any:
        """The cloud's read of the draft (a ``triggers.reading.TraceRead``), or None with an event saying why.

        A cloud that reads by prefill (``cloud.reads.read_mode`` "echo") scores the draft's tokens; one that cannot
        (OpenAI's own API, Anthropic) is asked a judge prompt instead, and a ``read_by_judge`` event says so
        (a ``triggers.reading.JudgeRead``). The ids go as they are: the read is meant for a
        cloud that shares the edge's tokenizer (``[cloud] read = "echo"`` asserts it for a remote endpoint)."""
        from cloud.reads import read, read_mode
        from triggers.reading import TraceRead, by_ids, edge_sums, step_inputs

        mode = read_mode(self.cloud, getattr(self, "read_setting", "auto")) if self.cloud is not None else "echo"
        if mode == "off":
            return None
        if mode == "judge":
            events.append((TriggerEvent("read_by_judge", True, detail={
                "purpose": "read", "reason": f"{self.cloud.provider}:{self.cloud.model} gives no prompt log-probs: "
                                             "a judge prompt names the first wrong step instead"}), "judge"))
            return self._judge_read(session_id, problem, steps, events)
        inputs = edge_sums(prompt, step_inputs(steps), None)
        ids = list(prompt) + [t for _, tok, _ in inputs for t in tok]
        reply = self._guarded("read", events, lambda: read(self.cloud, ids, budget=self._budget(session_id),
                                                           step_idx=len(steps)))
        if reply is None:
            return None
        try:
            return TraceRead(by_ids(prompt, inputs, reply.token_logprobs), reply.input_tokens, reply.cost_usd)
        except ValueError as e:
            events.append((TriggerEvent("cloud_error", True, detail={"purpose": "read", "kind": "malformed",
                                                                     "message": str(e)}), "keep_local"))
            return None

    def _judge_read(self, session_id: str, problem: str, steps: list[Step], events: list) -> Any:
        from triggers.reading import JudgeRead, parse_judge

        from .prompts import judge_read_messages

        reply = self._ask(session_id, judge_read_messages(problem, steps), purpose="read", step_idx=len(steps),
                          max_tokens=8, events=events, stop=[])
        if reply is None:
            return None
        verdict = parse_judge(reply.text, len(steps))
        if verdict == "unparsed":
            events.append((TriggerEvent("cloud_error", True, detail={"purpose": "read", "kind": "unparsed",
                                                                     "message": reply.text[:80]}), "keep_local"))
            return None
        return JudgeRead(verdict, len(steps), reply.input_tokens, reply.cost_usd)  # type: ignore[arg-type]


def parse_intervention(text: str, n_steps: int) -> tuple[int | None, str] | None:
    """Validate the cloud's ``{"first_wrong_step": k|null, "next_step": "..."}``; None if invalid."""
    import json
    import re

    m = re.search(r"\{.*\}", text, re.DOTALL)
    if not m:
        return None
    try:
        data = json.loads(m.group(0))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    k, nxt = data.get("first_wrong_step"), data.get("next_step")
    if not isinstance(nxt, str) or not nxt.strip():
        return None
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < max(n_steps, 1)):
        return None
    return k, nxt.strip()

