"""The agent loop: local step -> policy -> (cloud action) -> one committed transaction per step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import store
from triggers import Policy, get_policy

from .answer import extract_answer
from .errors import InputError, SessionError
from .local import LocalModel
from .prompts import messages
from .values import Step

MAX_PROBLEM_BYTES = 64_000


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
        if self.n_ctx < 256:
            raise InputError("--n-ctx must be at least 256")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Settings":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class Callbacks:
    """Hooks for streaming output; all optional."""

    step_start: Callable[[int, str], None] | None = None  # (index, author)
    text: Callable[[str], None] | None = None
    step_end: Callable[[Step], None] | None = None


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
    """Solves a problem step by step on the local model; the policy decides where the cloud helps."""

    def __init__(self, model: LocalModel, db: Any, policy: Policy | str = "local-only") -> None:
        self.model = model
        self.db = db
        self.policy = get_policy(policy) if isinstance(policy, str) else policy

    def start(self, problem: str, settings: Settings) -> str:
        """Validate, check the context, and create the session. Nothing is written if this fails."""
        problem = check_problem(problem, settings.n_ctx)
        self.model.prompt_tokens(messages(problem), reserve=min(settings.max_step_tokens, settings.n_ctx // 4))
        return store.new_session(
            self.db,
            problem=problem,
            model=self.model.name,
            model_path=str(self.model.path),
            policy=self.policy.name,
            settings=asdict(settings),
        )

    def solve(self, problem: str, settings: Settings, callbacks: Callbacks | None = None) -> RunResult:
        sid = self.start(problem, settings)
        return self.run(sid, callbacks)

    def run(self, session_id: str, callbacks: Callbacks | None = None) -> RunResult:
        """Continue a session from its last committed step until it finishes."""
        cb = callbacks or Callbacks()
        state = store.load_state(self.db, session_id)
        if state.status in store.FINISHED:
            raise SessionError(
                f"session {session_id} is already finished ({state.status}): "
                "use 'edge-agent rollback' to redo steps, or start a new solve"
            )
        settings = Settings.from_dict(state.settings)
        t0 = time.perf_counter()
        self.model.reseed(settings.seed)
        prompt = self.model.prompt_tokens(messages(state.problem))
        steps = list(state.steps)
        context = list(prompt)
        for s in steps:
            context.extend(s.token_ids)
        status, answer = "running", None
        new: list[Step] = []
        while status == "running":
            if len(steps) >= settings.max_steps:
                status = "max_steps"
                store.set_status(self.db, session_id, status)
                break
            room = self.model.room(len(context))
            if room < 8:
                status = "context_full"
                store.set_status(self.db, session_id, status)
                break
            index = len(steps)
            if cb.step_start:
                cb.step_start(index, "local")
            draft = self.model.next_step(
                context,
                max_tokens=min(settings.max_step_tokens, room),
                temperature=settings.temperature,
                on_text=cb.text,
            )
            if not draft.token_ids:  # the model closed its turn with nothing more to say
                status = "ended"
                store.set_status(self.db, session_id, status)
                break
            step = Step(
                index=index,
                author="local",
                kind="step",
                text=draft.text,
                raw=draft.raw,
                token_ids=draft.token_ids,
                signals=draft.signals,
                finish=draft.finish,
                seconds=draft.seconds,
            )
            events = self.policy.check(steps, step)
            action = self.policy.decide(steps, step, events)
            answer = extract_answer(step.text)
            if answer is not None:
                status = "done"
            elif draft.finish == "eos":
                status = "ended"
            elif draft.finish == "context":
                status = "context_full"
            store.commit_step(
                self.db,
                session_id,
                step,
                evaluated=draft.evaluated,
                events=[(e, action.kind) for e in events if e.fired],
                status=status,
                answer=answer,
            )
            steps.append(step)
            new.append(step)
            context.extend(step.token_ids)
            if cb.step_end:
                cb.step_end(step)
        store.add_wall_time(self.db, session_id, time.perf_counter() - t0)
        return RunResult(session_id, status, answer, time.perf_counter() - t0, new)
