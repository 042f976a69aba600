"""The agent loop: local step -> policy -> (cloud action) -> one committed transaction per step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import store
from triggers import Policy, get_policy
from triggers.scorers import MODEL_SCORERS, Score, Spend, StepInputs

from .answer import extract_answer
from .errors import InputError
from .local import LocalModel
from .state import load_state
from .prompts import cloud_step_messages, intervene_messages, messages, plan_messages, solve_messages
from .values import Action, Step, TriggerEvent

MAX_PROBLEM_BYTES = 64_000
MAX_N_CTX = 1 << 20  # llama.cpp allocates the whole KV cache up front: beyond this no laptop holds it
MAX_STEPS = 10_000
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Settings:
    """Per-session knobs; stored with the session so ``resume`` continues with the same ones."""

    max_steps: int = 12
    max_step_tokens: int = 256
    temperature: float = 0.0
    n_ctx: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise InputError("--max-steps must be at least 1")
        if not 8 <= self.max_step_tokens <= self.n_ctx:
            raise InputError(f"--max-step-tokens must be between 8 and the context size ({self.n_ctx})")
        if not 0.0 <= self.temperature <= 5.0:
            raise InputError("--temperature must be between 0 and 5")
        if not 256 <= self.n_ctx <= MAX_N_CTX:
            raise InputError(f"--n-ctx must be between 256 and {MAX_N_CTX:,}")
        if self.max_steps > MAX_STEPS:
            raise InputError(f"--max-steps must be at most {MAX_STEPS:,}")
        if not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"--seed must be between 0 and {MAX_SEED}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Callbacks:
    """Hooks for streaming output; all optional."""

    step_start: Callable[[int, str], None] | None = None  # (index, author)
    text: Callable[[str], None] | None = None
    step_end: Callable[[Step], None] | None = None
    trigger: Callable[[TriggerEvent, str], None] | None = None  # (fired event, action)


def check_problem(problem: str, n_ctx: int) -> str:
    """Refuse an unusable problem before anything is loaded or written."""
    if problem is None or not problem.strip():
        raise InputError("the problem is empty: pass the problem text, or '-' to read it from stdin")
    size = len(problem.encode("utf-8"))
    if size > MAX_PROBLEM_BYTES or size > n_ctx * 8:
        raise InputError(
            f"the problem is {size:,} bytes, far more than a {n_ctx}-token context holds: shorten it or raise --n-ctx"
        )
    return problem.strip()


@dataclass
class RunResult:
    session_id: str
    status: str
    answer: str | None
    wall_s: float
    new_steps: list[Step] = field(default_factory=list)


class Agent:
    """Solves a problem step by step on the local model; the policy decides where the cloud helps.

    Control always returns to the local model after a cloud action.
    """

    def __init__(
        self,
        model: LocalModel,
        db: Any,
        policy: Policy | str = "local-only",
        *,
        cloud: Any = None,
        caps: Any = None,
        offline: bool = False,
    ) -> None:
        from cloud.budget import Caps

        self.model = model
        self.db = db
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.cloud = None if offline else cloud
        self.caps = caps or Caps()
        self.offline = offline

    def start(self, problem: str, settings: Settings, extra: dict[str, Any] | None = None) -> str:
        """Validate, check the context, and create the session. Nothing is written if this fails.

        ``extra`` settings (cost cap, cloud URL, prices, conversation) are written in the same insert
        as the session: a crash can never leave a session that ``resume`` would run without them.
        """
        problem = check_problem(problem, settings.n_ctx)
        self.model.prompt_tokens(messages(problem), reserve=min(settings.max_step_tokens, settings.n_ctx // 4))
        return store.new_session(
            self.db,
            problem=problem,
            model=self.model.name,
            model_path=str(self.model.path),
            policy=self.policy.label,
            settings={**asdict(settings), "offline": self.offline, **(extra or {})},
            cloud_provider=self.cloud.provider if self.cloud else None,
            cloud_model=self.cloud.model if self.cloud else None,
        )

    def solve(self, problem: str, settings: Settings, callbacks: Callbacks | None = None,
              extra: dict[str, Any] | None = None) -> RunResult:
        sid = self.start(problem, settings, extra)
        return self.run(sid, callbacks)

    # -- cloud actions ------------------------------------------------------------------------------
    def _budget(self, session_id: str) -> Any:
        from cloud.budget import Budget

        return Budget(self.db, self.caps, session_id)

    def _ask(self, session_id: str, msgs: list[dict[str, str]], *, purpose: str, step_idx: int,
             max_tokens: int, events: list, stop: Any = None) -> Any:
        """One cloud call; on refusal or failure, record why and return None (the local model goes on)."""
        return self._guarded(purpose, events, lambda: self.cloud.call(
            msgs, max_tokens=max_tokens, budget=self._budget(session_id), purpose=purpose, step_idx=step_idx,
            stop=stop if stop is not None else (["\n\n"] if purpose != "intervene" else [])))

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
            events.append((TriggerEvent(name, True, detail={"purpose": purpose, "kind": e.kind, "message": str(e)}), "keep_local"))
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
                     events: list, max_tokens: int = 256) -> Step | None:
        """The cloud writes only step ``index``; None if it could not (the reason is in ``events``)."""
        reply = self._ask(session_id, cloud_step_messages(problem, steps), purpose="rewrite_step",
                          step_idx=index, max_tokens=max_tokens, events=events)
        if reply is None:
            return None
        text = reply.text.strip().split("\n\n", 1)[0].strip()
        if not text:
            events.append((TriggerEvent("cloud_error", True, detail={"purpose": "rewrite_step", "kind": "empty"}), "keep_local"))
            return None
        finish = "answer" if extract_answer(text) is not None else "separator"
        return self._as_step(text, index, "step", trigger, reply.latency_s, finish)

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
        parts = [p.strip() for p in reply.text.strip().split("\n\n") if p.strip()]
        if not parts:
            events.append((TriggerEvent("cloud_error", True, detail={"purpose": "solve", "kind": "empty"}), "keep_local"))
            return []
        for n, part in enumerate(parts):  # stop at the first stated answer
            if extract_answer(part) is not None:
                parts = parts[: n + 1]
                break
        if len(parts) > max_steps:  # the step cap holds: the tail becomes one last step
            parts = parts[: max_steps - 1] + ["\n".join(parts[max_steps - 1:])]
        share = reply.latency_s / len(parts)
        return [self._as_step(part, index + n, "step", "cloud_only", share,
                              "answer" if extract_answer(part) is not None else "separator")
                for n, part in enumerate(parts)]

    # -- the loop -------------------------------------------------------------------------------------
    def run(self, session_id: str, callbacks: Callbacks | None = None) -> RunResult:
        """Continue a session from its last committed step until it finishes.

        The run holds the session (``store.session_lease``) from before its state is read until it
        ends, however it ends: another process that tries to continue or roll it back is refused.
        """
        with store.session_lease(self.db, session_id):
            return self._run_held(session_id, callbacks)

    def _run_held(self, session_id: str, callbacks: Callbacks | None) -> RunResult:
        state = load_state(self.db, session_id)
        store.ensure_resumable(state)
        settings = Settings.from_dict(state.settings)
        t0 = time.perf_counter()
        self.model.reseed(settings.seed)
        self.policy.reset(state.problem)
        r = _Run(session_id, state.problem, settings, list(state.steps), callbacks or Callbacks())
        r.prompt = self.model.prompt_tokens(messages(state.problem))
        while r.status == "running":
            if sum(1 for s in r.steps if s.kind != "plan") >= settings.max_steps:
                self._finish(r, "max_steps")
                break
            context = r.context()
            room = self.model.room(len(context))
            if room < 8:
                self._finish(r, "context_full")
                break
            events: list = []
            pre = self.policy.before_step(r.steps)
            if pre.kind != "accept":
                events.append((TriggerEvent(pre.trigger or "policy", True, pre.score, pre.threshold), pre.kind))
                if self._cloud_first(r, pre, events):
                    continue
            self._local_step(r, context, room, events, check=pre.kind == "accept")
        store.add_wall_time(self.db, session_id, time.perf_counter() - t0)
        return RunResult(session_id, r.status, r.answer, time.perf_counter() - t0, r.new)

    def _cloud_first(self, r: "_Run", pre: Action, events: list) -> bool:
        """The policy wants the cloud before any local draft. True if the cloud wrote something."""
        index = len(r.steps)
        if pre.kind == "solve":
            left = r.settings.max_steps - sum(1 for s in r.steps if s.kind != "plan")
            written = self.solve_in_cloud(r.sid, r.problem, index, left, events,
                                          max_tokens=min(r.settings.max_step_tokens * r.settings.max_steps, 768))
            for n, step in enumerate(written):
                self._commit(r, step, events if n == 0 else [])
            return bool(written)
        if pre.kind == "plan":
            step = self.plan(r.sid, r.problem, events)
        else:
            step = self.rewrite_step(r.sid, r.problem, r.steps, index, pre.trigger, events, r.settings.max_step_tokens)
        if step is None:
            return False
        self._commit(r, step, events)
        return True

    def _local_step(self, r: "_Run", context: list[int], room: int, events: list, check: bool) -> None:
        """Draft a step locally, let the policy judge it, and commit what stands."""
        index = len(r.steps)
        if r.cb.step_start:
            r.cb.step_start(index, "local")
        draft = self.model.next_step(context, max_tokens=min(r.settings.max_step_tokens, room),
                                     temperature=r.settings.temperature, on_text=r.cb.text)
        if not draft.token_ids:  # the model closed its turn with nothing more to say
            self._finish(r, "ended")
            return
        step = Step(index=index, author="local", kind="step", text=draft.text, raw=draft.raw,
                    token_ids=draft.token_ids, signals=draft.signals, finish=draft.finish, seconds=draft.seconds)
        if not check:
            self._commit(r, step, events, evaluated=draft.evaluated)
            return
        needs = tuple(getattr(self.policy, "needs", ()))
        inputs, extra_s, extra_eval = self._step_inputs(r, context, step, needs, events)
        if extra_s:  # a self-check is local work on this step
            step = replace(step, seconds=step.seconds + extra_s)
        checked = self.policy.check(r.steps, step, inputs)
        fired = [e for e in checked if e.fired]
        action = self.policy.decide(r.steps, step, fired)
        events.extend((e, action.kind) for e in fired)
        if any(n in MODEL_SCORERS for n in needs):  # a paid score is kept even when it fired nothing
            events.extend((e, "scored") for e in checked if not e.fired)
        evaluated = draft.evaluated + extra_eval
        for e in fired:
            if r.cb.trigger:
                r.cb.trigger(e, action.kind)
        if action.kind == "accept":
            self._commit(r, step, events, evaluated=evaluated)
            return
        if r.cb.step_end:
            r.cb.step_end(step)
        replaced = (TriggerEvent("local_draft", True, detail={"text": step.text[:2000], "tokens": step.tokens}), "replaced")
        if action.kind == "plan":
            plan = self.plan(r.sid, r.problem, events)
            if plan is not None:  # the draft is dropped; the local model starts again with the plan
                self._commit(r, plan, events + [replaced])
                return
        elif action.kind == "intervene":
            verdict = self.intervene(r.sid, r.problem, r.steps + [step], events, r.settings.max_step_tokens)
            if verdict is not None:
                k, text = verdict
                back = k if k is not None and k < index and r.steps[k].kind != "plan" else None
                at = index if back is None else back
                written = self._as_step(text, at, "intervention", action.trigger or "loop", 0.0,
                                        "answer" if extract_answer(text) is not None else "separator")
                self._commit(r, written, events + [replaced], rollback=back)
                return
        else:
            written = self.rewrite_step(r.sid, r.problem, r.steps, index, action.trigger, events, r.settings.max_step_tokens)
            if written is not None:
                self._commit(r, written, events + [replaced])
                return
        self._commit(r, step, events, evaluated=evaluated)

    # -- what a policy needs before check ---------------------------------------------------------------
    def _step_inputs(self, r: "_Run", context: list[int], step: Step, needs: tuple[str, ...],
                     events: list) -> tuple[StepInputs, float, int]:
        """Compute the paid scores and the spend a policy asked for in ``needs``.

        Returns (inputs, local seconds spent, local tokens evaluated). A score that cannot be had
        is replaced by the free ``logprob`` score, with the reason in its detail.
        """
        scores: dict[str, Score] = {}
        seconds, evaluated = 0.0, 0
        if "self" in needs:
            scores["self"], seconds, evaluated = self.self_score(context, step)
        if "cloud-judge" in needs:
            scores["cloud-judge"] = self.judge_score(r.sid, r.problem, r.steps, step, events)
        spend = self._spend(r.sid) if "spend" in needs else None
        return StepInputs(scores=scores, spend=spend), seconds, evaluated

    def self_score(self, context: list[int], step: Step) -> tuple[Score, float, int]:
        """The local model's P(yes) that ``step`` is right: (score, seconds, tokens evaluated)."""
        from triggers.scorers import NO, VERIFY_QUESTION, YES, logprob_score, self_score

        from .errors import ContextError

        try:
            v = self.model.verify(list(context) + list(step.token_ids), VERIFY_QUESTION, YES, NO)
        except ContextError:
            return Score(logprob_score(step.signals), "logprob", {"fallback": "self: no room in the context"}), 0.0, 0
        detail = {"p_yes": round(v.p_yes, 6), "p_no": round(v.p_no, 6), "question_tokens": v.suffix_tokens,
                  "evaluated": v.evaluated, "seconds": round(v.seconds, 4)}
        return Score(self_score(v.p_yes, v.p_no), "self", detail), v.seconds, v.evaluated

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

    def _spend(self, session_id: str) -> Spend:
        calls = store.cloud_calls(self.db, session_id)
        price = getattr(self.cloud, "price", None)
        return Spend(cost_usd=sum(c.get("cost_nusd") or 0 for c in calls) / 1e9, cap_usd=self.caps.session_usd,
                     cloud_calls=len(calls), cloud_output_tokens=sum(c["output_tokens"] or 0 for c in calls),
                     price_in=price.input if price is not None else None,
                     price_out=price.output if price is not None else None)

    def _commit(self, r: "_Run", step: Step, events: list, *, evaluated: int = 0, rollback: int | None = None) -> None:
        """One transaction: the step (the new checkpoint), its events, the session status."""
        if step.author == "cloud" and r.cb.step_start:
            r.cb.step_start(step.index, "cloud")
            if r.cb.text:
                r.cb.text(step.text)
        answer = extract_answer(step.text) if step.kind != "plan" else None  # a plan tells what to do, it never ends a solve
        status = "done" if answer is not None else {"eos": "ended", "context": "context_full"}.get(step.finish, "running")
        store.commit_step(self.db, r.sid, step, evaluated=evaluated, events=events, status=status, answer=answer,
                          rollback_reason="intervention" if rollback is not None else None)
        if rollback is not None:
            r.steps = r.steps[:rollback]
        r.steps.append(step)
        r.new.append(step)
        r.status, r.answer = status, answer
        if r.cb.step_end:
            r.cb.step_end(step)

    def _finish(self, r: "_Run", status: str) -> None:
        r.status = status
        store.set_status(self.db, r.sid, status)


@dataclass
class _Run:
    """The state of one ``run``: the accepted steps are the context the local model continues."""

    sid: str
    problem: str
    settings: Settings
    steps: list[Step]
    cb: Callbacks
    prompt: list[int] = field(default_factory=list)
    new: list[Step] = field(default_factory=list)
    status: str = "running"
    answer: str | None = None

    def context(self) -> list[int]:
        tokens = list(self.prompt)
        for s in self.steps:
            tokens.extend(s.token_ids)
        return tokens


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
