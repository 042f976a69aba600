"""The agent loop: local step -> policy -> (cloud action) -> one committed transaction per step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import store
from triggers import Policy, get_policy
from triggers.scorers import MODEL_SCORERS, Score, Spend, StepInputs

from .answer import extract_answer
from .cloud_steps import CloudActions, parse_intervention, resolve_continuation
from .errors import InputError
from .prompts import messages
from .review import Reviews
from .state import load_state
from .values import Action, Step, TriggerEvent

if TYPE_CHECKING:  # pragma: no cover
    from store import Database

    from .model import StepModel

__all__ = ["Agent", "Callbacks", "RunResult", "Settings", "check_problem", "parse_intervention"]

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


class Agent(CloudActions, Reviews):
    """Solves a problem step by step on the local model; the policy decides where the cloud helps.

    Control always returns to the local model after a cloud action.
    """

    def __init__(
        self,
        model: StepModel,
        db: Database,
        policy: Policy | str = "local-only",
        *,
        cloud: Any = None,
        caps: Any = None,
        offline: bool = False,
        continuation: str = "auto",
    ) -> None:
        from cloud.budget import Caps

        self.model = model
        self.db = db
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.cloud = None if offline else cloud
        self.caps = caps or Caps()
        self.offline = offline
        # how cloud steps are asked for; a session keeps the mode it started with (resume uses it)
        self.continuation = resolve_continuation(continuation, self.cloud)

    def start(self, problem: str, settings: Settings, extra: dict[str, Any] | None = None, *,
              parent_id: str | None = None) -> str:
        """Validate, check the context, and create the session. Nothing is written if this fails.

        ``extra`` settings (cost cap, cloud URL, prices, conversation) are written in the same insert
        as the session: a crash can never leave a session that ``resume`` would run without them.
        ``parent_id``: the session is a self-consistency sample for that one (``edge_agent.samples``).
        """
        problem = check_problem(problem, settings.n_ctx)
        self.model.prompt_tokens(messages(problem), reserve=min(settings.max_step_tokens, settings.n_ctx // 4))
        return store.new_session(
            self.db,
            problem=problem,
            model=self.model.name,
            model_path=str(self.model.path),
            policy=self.policy.label,
            settings={**asdict(settings), "offline": self.offline, "continuation": self.continuation,
                      "read": getattr(self, "read_setting", "auto"), **(extra or {})},  # resume keeps [cloud] read
            cloud_provider=self.cloud.provider if self.cloud else None,
            cloud_model=self.cloud.model if self.cloud else None,
            parent_id=parent_id,
        )

    def solve(self, problem: str, settings: Settings, callbacks: Callbacks | None = None,
              extra: dict[str, Any] | None = None) -> RunResult:
        sid = self.start(problem, settings, extra)
        return self.run(sid, callbacks)

    # -- cloud actions ------------------------------------------------------------------------------

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
        r = _Run(session_id, state.problem, settings, list(state.steps), callbacks or Callbacks(),
                 continuation=state.settings.get("continuation") == "on")
        r.prompt = self.model.prompt_tokens(messages(state.problem))
        self._resume_review(r, state.settings)
        self._steps_until_done(r)
        while self._review(r):  # a policy that reviews the finished draft sent it back to a step
            self._steps_until_done(r)
        store.add_wall_time(self.db, session_id, time.perf_counter() - t0)
        return RunResult(session_id, r.status, r.answer, time.perf_counter() - t0, r.new)

    def _steps_until_done(self, r: "_Run") -> None:
        settings = r.settings
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
        if pre.kind == "handover":
            return self._handover(r, index, pre.trigger, events, events)
        if pre.kind == "plan":
            step = self.plan(r.sid, r.problem, events)
        else:
            step = self._cloud_step(r, index, pre.trigger, events)
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
            self._commit(r, step, events, evaluated=draft.evaluated, would_be_s=draft.would_be_s)
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
            self._commit(r, step, events, evaluated=evaluated, would_be_s=draft.would_be_s)
            return
        if r.cb.step_end:
            r.cb.step_end(step)
        replaced = (TriggerEvent("local_draft", True, detail={"text": step.text[:2000], "tokens": step.tokens}), "replaced")
        if not self._act(r, step, action, events, replaced):
            # the cloud could not act: the draft stands
            self._commit(r, step, events, evaluated=evaluated, would_be_s=draft.would_be_s)

    def _act(self, r: "_Run", step: Step, action: Action, events: list, replaced: tuple) -> bool:
        """Carry out a cloud action in place of the local draft ``step``; False if the cloud could not."""
        index = step.index
        if action.kind == "plan":
            plan = self.plan(r.sid, r.problem, events)
            if plan is not None:  # the draft is dropped; the local model starts again with the plan
                self._commit(r, plan, events + [replaced])
            return plan is not None
        if action.kind == "intervene":
            verdict = self.intervene(r.sid, r.problem, r.steps + [step], events, r.settings.max_step_tokens)
            if verdict is None:
                return False
            k, text = verdict
            back = k if k is not None and k < index and r.steps[k].kind != "plan" else None
            written = self._as_step(text, index if back is None else back, "intervention", action.trigger or "loop",
                                    0.0, "answer" if extract_answer(text) is not None else "separator")
            self._commit(r, written, events + [replaced], rollback=back)
            return True
        if action.kind == "handover":
            return self._handover(r, index, action.trigger, events, events + [replaced])
        written = self._cloud_step(r, index, action.trigger, events)
        if written is not None:
            self._commit(r, written, events + [replaced])
        return written is not None

    def _handover(self, r: "_Run", index: int, trigger: str | None, events: list, first_events: list) -> bool:
        """The cloud writes the rest from step ``index``; its first step carries ``first_events``."""
        left = r.settings.max_steps - sum(1 for s in r.steps if s.kind != "plan")
        steps = self.handover(r.sid, r.problem, r.steps, index, left, events,
                              max_tokens=min(r.settings.max_step_tokens * left, 768), trigger=trigger,
                              continuation=r.continuation)
        for n, written in enumerate(steps):
            self._commit(r, written, first_events if n == 0 else [])
        return bool(steps)

    def _cloud_step(self, r: "_Run", index: int, trigger: str | None, events: list) -> Step | None:
        """The cloud writes step ``index`` in the session's mode; a refused prefill turns the mode off for good."""
        written = self.rewrite_step(r.sid, r.problem, r.steps, index, trigger, events, r.settings.max_step_tokens,
                                    continuation=r.continuation)
        if r.continuation and any(e.trigger == "continuation_refused" for e, _ in events):
            r.continuation = False
            store.update_settings(self.db, r.sid, {"continuation": "off", "continuation_refused": True})
        return written

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


    def _spend(self, session_id: str) -> Spend:
        calls = store.cloud_calls(self.db, session_id)
        price = getattr(self.cloud, "price", None)
        return Spend(cost_usd=sum(c.get("cost_nusd") or 0 for c in calls) / 1e9, cap_usd=self.caps.session_usd,
                     cloud_calls=len(calls), cloud_output_tokens=sum(c["output_tokens"] or 0 for c in calls),
                     price_in=price.input if price is not None else None,
                     price_out=price.output if price is not None else None)

    def _commit(self, r: "_Run", step: Step, events: list, *, evaluated: int = 0, rollback: int | None = None,
                would_be_s: float | None = None, rollback_reason: str = "intervention",
                review: dict[str, Any] | None = None, final: bool = False, notify: bool = True) -> None:
        """One transaction: the step (the new checkpoint), its events, the session status.

        ``review``: the review's new state; ``final``: the step ends the review (see ``_stored``)."""
        if notify and step.author == "cloud" and r.cb.step_start:
            r.cb.step_start(step.index, "cloud")
            if r.cb.text:
                r.cb.text(step.text)
        answer = extract_answer(step.text) if step.kind != "plan" else None  # a plan tells what to do, it never ends a solve
        status = "done" if answer is not None else {"eos": "ended", "context": "context_full"}.get(step.finish, "running")
        shown, shown_answer, changes = self._stored(r, status, answer, review, final)
        step_id = store.commit_step(self.db, r.sid, step, evaluated=evaluated, events=events, status=shown,
                                    answer=shown_answer, rollback_reason=rollback_reason if rollback is not None else None,
                                    would_be_s=would_be_s, settings=changes)
        step = replace(step, id=step_id)  # a review may keep it, and a resumed review finds it by its id
        if rollback is not None:
            r.steps = r.steps[:rollback]
        r.steps.append(step)
        r.new.append(step)
        r.status, r.answer = status, answer
        if changes:
            r.review = changes["review"]
        if notify and r.cb.step_end:
            r.cb.step_end(step)

    def _finish(self, r: "_Run", status: str, *, final: bool = False) -> None:
        shown, answer, changes = self._stored(r, status, r.answer, None, final)
        store.set_status(self.db, r.sid, shown, answer, settings=changes)
        r.status = status
        if changes:
            r.review = changes["review"]


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
    continuation: bool = False  # cloud steps continue the edge's turn (off after a provider refused it)
    review: dict[str, Any] | None = None  # a review in progress, as stored (edge_agent.review)

    def context(self) -> list[int]:
        tokens = list(self.prompt)
        for s in self.steps:
            tokens.extend(s.token_ids)
        return tokens


