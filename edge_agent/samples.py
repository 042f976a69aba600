"""Self-consistency: N solutions of one problem, and the majority of their answers.

The first solution is the session ``solve`` starts as usual, decoded greedily: it is the *parent*.
Samples 2..N are sessions of their own (``sessions.parent_id`` names the parent), decoded at
``temperature`` with distinct seeds (the parent's seed + i). Each is committed step by step like any
session, so a crash loses nothing: ``resume PARENT`` runs only the sessions that are not finished (all
the samples' sessions are created before any decoding), then votes. On a llama.cpp model they run
together, as sequences of one batch that share the prompt's KV entries (edge_agent/batch.py); on a
model that cannot batch, one after another on one model, reusing the prompt's KV entries too.

The vote: answers are compared by ``answer.canonical`` ("3", "3.0" and "\\boxed{3}" agree); a session
with no answer (max steps, end of turn) casts no vote. The most votes win; a tie goes to the greedy
answer if it is among the tied, else to the earliest sample among them. ``agreement`` is the winner's
votes over N (no-votes included), stored on the parent and readable by a policy (``read_samples``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import store

from .agent import MAX_SEED, Agent, Callbacks, Settings
from .answer import canonical
from .config import MAX_SAMPLES, Config
from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .model import Parallel, StepModel

DEFAULT_TEMPERATURE = 0.7
# "auto" decodes the solutions together from this many on: below it llama.cpp's CPU kernels run a batch of a
# Q4_K model hardly faster than one sequence, and a batch whose sequences end one by one loses (docs/speed.md)
BATCH_AUTO_MIN = 8
BATCH_MODES = ("auto", "on", "off")
# settings a sample does not copy from its parent: what makes it a parent, and what the agent sets itself
_NOT_COPIED = ("samples", "sample", "offline", "continuation", "temperature", "seed")


@dataclass(frozen=True)
class SampleSpec:
    """How many solutions and at what temperature the samples after the greedy one are decoded."""

    n: int = 1
    temperature: float = DEFAULT_TEMPERATURE
    batch: str = "auto"  # decode the solutions together (edge_agent/batch.py): auto | on | off
    handover_below: float | None = None  # the cloud alone solves a problem whose vote agrees less (handover.py)

    def __post_init__(self) -> None:
        from .handover import check_threshold

        object.__setattr__(self, "handover_below", check_threshold(self.handover_below))
        if self.handover_below is not None and self.n < 2:
            raise InputError("--handover-below needs a vote: add --samples N with N >= 2")
        if self.batch not in BATCH_MODES:
            raise InputError(f"--batch must be auto, on or off (got {str(self.batch)[:40]!r})")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_SAMPLES:
            raise InputError(f"--samples must be an integer from 1 to {MAX_SAMPLES} (got {self.n})")
        if not 0.0 < self.temperature <= 5.0:
            raise InputError(f"--sample-temperature must be > 0 and <= 5 (got {self.temperature})")

    @classmethod
    def resolve(cls, n: int | None, temperature: float | None, cfg: Config, batch: str | None = None,
                handover_below: float | None = None) -> "SampleSpec":
        """The flags, else ``[solve]`` in the config, else 1 solution at 0.7, batched from 8 on, no handover."""
        return cls(n if n is not None else cfg.solve.get("samples", 1),
                   float(temperature if temperature is not None
                         else cfg.solve.get("sample_temperature", DEFAULT_TEMPERATURE)),
                   batch if batch is not None else cfg.solve.get("batch", "auto"),
                   handover_below if handover_below is not None else cfg.solve.get("handover_below"))

    def check_context(self, n_ctx: int) -> None:
        """Refuse, before anything loads, N solutions whose batch (N contexts of ``n_ctx``) is too large."""
        if self.n > 1 and (self.batch == "on" or (self.batch == "auto" and self.n >= BATCH_AUTO_MIN)):
            from .batch import batch_cells

            batch_cells(self.n, n_ctx)

    def extra(self) -> dict[str, Any]:
        """What the parent stores in its settings (nothing for one solution: that is a plain solve)."""
        if self.n == 1:
            return {}
        below = {} if self.handover_below is None else {"handover_below": self.handover_below}
        return {"samples": {"n": self.n, "temperature": self.temperature, "batch": self.batch, **below}}


@dataclass(frozen=True)
class Vote:
    """The majority of ``answers`` (greedy first; None is no vote)."""

    answers: tuple[str | None, ...]
    winner: str | None  # as the first session in the winning group wrote it
    votes: int
    agreement: float  # votes / len(answers)


def vote(answers: Sequence[str | None]) -> Vote:
    """Most votes win; a tie goes to the greedy answer (``answers[0]``) if tied, else to the earliest."""
    keys = [canonical(a) if a is not None else None for a in answers]
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return Vote(tuple(answers), None, 0, 0.0)
    top = max(counts.values())
    first = next(i for i, k in enumerate(keys) if k is not None and counts[k] == top)  # greedy is index 0
    return Vote(tuple(answers), answers[first], top, round(top / len(answers), 6))


@dataclass(frozen=True)
class Sample:
    index: int  # 0: the greedy parent
    session_id: str | None  # None: not started yet
    status: str | None
    answer: str | None
    seed: int
    temperature: float


@dataclass(frozen=True)
class Samples:
    """A parent's samples and their vote, read from the database: what ``show`` prints and a policy reads."""

    parent_id: str
    n: int
    temperature: float
    samples: tuple[Sample, ...]
    vote: Vote

    @property
    def answers(self) -> tuple[str | None, ...]:
        return self.vote.answers

    @property
    def winner(self) -> str | None:
        return self.vote.winner

    @property
    def agreement(self) -> float:
        return self.vote.agreement

    @property
    def complete(self) -> bool:
        return all(s.status in store.FINISHED for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "temperature": self.temperature, "answers": list(self.answers),
                "winner": self.winner, "votes": self.vote.votes, "agreement": self.agreement,
                "complete": self.complete,
                "sessions": [{"index": s.index, "session_id": s.session_id, "status": s.status, "answer": s.answer,
                              "seed": s.seed, "temperature": s.temperature} for s in self.samples]}


def sample_seed(base: int, index: int) -> int:
    return (base + index) % (MAX_SEED + 1)


def _damaged(session_id: str, what: str) -> store.DamagedRow:
    return store.DamagedRow("sessions", f"id {session_id!r}", "settings", what)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stored_spec(state: Any) -> tuple[int, float, int]:
    """A parent's stored ``samples`` setting (and seed), checked as ``SampleSpec`` checks the flags: (n, temperature,
    seed). A hand-edited or damaged value is a DamagedRow naming the parent's row, never a hang or a crash."""
    spec, sid = state.settings.get("samples"), state.id
    if not isinstance(spec, dict):
        raise _damaged(sid, f"holds samples {str(spec)[:40]!r}, not an object with n and temperature")
    n, batch = spec.get("n"), spec.get("batch", "auto")
    temperature: Any = spec.get("temperature")
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_SAMPLES:
        raise _damaged(sid, f"holds samples.n {str(n)[:40]!r}, not a whole number from 2 to {MAX_SAMPLES}")
    if not _number(temperature) or not 0.0 < temperature <= 5.0:
        raise _damaged(sid, f"holds samples.temperature {str(temperature)[:40]!r}, not a number > 0 and <= 5")
    if batch not in BATCH_MODES:
        raise _damaged(sid, f"holds samples.batch {str(batch)[:40]!r}, not one of {', '.join(BATCH_MODES)}")
    seed, greedy_t = state.settings.get("seed", 0), state.settings.get("temperature", 0.0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _damaged(sid, f"holds seed {str(seed)[:40]!r}, not a whole number")
    if not _number(greedy_t):
        raise _damaged(sid, f"holds temperature {str(greedy_t)[:40]!r}, not a number")
    return n, float(temperature), seed


def _stored_samples(db: Any, parent_id: str, n: int) -> dict[int, dict[str, Any]]:
    """The parent's sample sessions by index, each row's settings and index checked."""
    found: dict[int, dict[str, Any]] = {}
    for r in store.sample_sessions(db, parent_id):
        settings = store.session_settings(r["id"], r["settings"])  # DamagedRow: not a JSON object
        if "sample" not in settings:  # another session linked to the parent (a handover): not a sample
            continue
        index = settings["sample"]
        if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index < n:
            raise _damaged(r["id"], f"holds sample index {str(index)[:40]!r} of parent {parent_id}, not a whole "
                                    f"number from 1 to {n - 1}")
        if index in found:
            raise _damaged(r["id"], f"holds sample index {index} of parent {parent_id}, as session "
                                    f"{found[index]['id']} does")
        found[index] = r
    return found


def read_samples(db: Any, session_id: str) -> Samples | None:
    """The samples of parent ``session_id`` and their vote so far; None if it was started without samples."""
    state = store.load_state(db, session_id)
    if not state.settings.get("samples"):
        return None
    n, temperature, base = _stored_spec(state)
    found = _stored_samples(db, session_id, n)
    rows = [Sample(0, state.id, state.status, state.answer, base, float(state.settings.get("temperature", 0.0)))]
    for i in range(1, n):
        r = found.get(i)
        rows.append(Sample(i, r["id"] if r else None, r["status"] if r else None, r["answer"] if r else None,
                           sample_seed(base, i), temperature))
    answers = [s.answer if s.status == "done" else None for s in rows]
    return Samples(state.id, n, temperature, tuple(rows), vote(answers))


def is_parent(db: Any, session_id: str) -> bool:
    """Whether the session was started with samples (``solve --samples N``, N > 1)."""
    return bool(store.load_state(db, session_id).settings.get("samples"))


def ensure_resumable(db: Any, session_id: str) -> None:
    """Refuse ``resume`` of a parent whose samples are all finished and whose vote is stored."""
    from .handover import pending

    s = read_samples(db, session_id)
    agreement = store.sample_links(db, session_id)["agreement"]
    if s is not None and s.complete and agreement is not None and not pending(db, session_id, agreement):
        raise store.SessionError(
            f"session {session_id} and its {s.n - 1} samples are already finished (vote {s.winner!r}, "
            f"agreement {s.agreement:.2f}): start a new solve"
        )


SampleStart = Callable[[int, int, str], Callbacks]  # (index, n, session id) -> the callbacks for that run
SampleDone = Callable[[int, int, str, Any], None]  # (index, n, session id, its RunResult): a quiet sample ended


def run_samples(agent: Agent, parent_id: str, start: SampleStart, *, done: SampleDone | None = None) -> Samples:
    """Finish the parent and every sample not finished yet (creating the missing ones first), then vote.

    When the parent's ``batch`` mode says so (``on``, or ``auto`` with at least ``BATCH_AUTO_MIN`` sessions
    to run) and the model can (``StepModel.parallel``), the unfinished sessions run together:
    one thread each, their steps decoded as sequences of one llama.cpp batch (edge_agent/batch.py); the
    parent in this thread, streamed through ``start``, the samples quietly (``done`` hears as each one
    ends). Otherwise one after another, each streamed through ``start``.
    Holds the parent's lease throughout, so two processes never create the same sample twice.
    """
    db = agent.db
    with store.session_lease(db, parent_id, purpose="samples"):
        state = store.load_state(db, parent_id)
        n, mode = state.settings["samples"]["n"], state.settings["samples"].get("batch", "auto")
        todo: list[tuple[int, str]] = [] if state.status in store.FINISHED else [(0, parent_id)]
        for sample in read_samples(db, parent_id).samples[1:]:
            if sample.status not in store.FINISHED:  # committed and finished: never redone
                todo.append((sample.index, sample.session_id or _new_sample(agent, state, sample)))
        batch = len(todo) > 1 and (mode == "on" or (mode == "auto" and len(todo) >= BATCH_AUTO_MIN))
        together = agent.model.parallel(len(todo)) if batch else None
        if together is None:
            for index, sid in todo:
                agent.run(sid, start(index, n, sid))
        else:
            _run_together(agent, together, todo, start, n, done)
        result = read_samples(db, parent_id)
        store.set_vote(db, parent_id, result.winner, result.agreement)
        return result


def _run_together(agent: Agent, together: Parallel, todo: list[tuple[int, str]], start: SampleStart, n: int,
                  done: SampleDone | None) -> None:
    """Run each (index, session) on its own sequence of ``together``, each sample in a thread of its own."""
    failures: list[BaseException] = []
    path = store.db_file(agent.db)  # a SQLite connection belongs to its thread: each opens its own

    def work(view: StepModel, index: int, sid: str) -> None:
        db = None
        try:
            db = store.open_db(path, create=False)
            result = _twin(agent, view, db).run(sid, Callbacks())
            if done:
                done(index, n, sid, result)
        except BaseException as e:  # noqa: BLE001 - re-raised by the caller once every thread has ended
            failures.append(e)
        finally:
            if db is not None:
                db.close()

    threads = [threading.Thread(target=work, args=(together.seqs[i], index, sid), name=f"sample-{index}", daemon=True)
               for i, (index, sid) in enumerate(todo) if index != 0]
    try:
        if todo[0][0] == 0:  # the parent: this thread holds its lease, and its steps are shown as they come
            cb = start(0, n, todo[0][1])
            _twin(agent, together.seqs[0], agent.db).run(todo[0][1], _then_start(cb, threads))
        for t in threads:
            if t.ident is None:
                t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # a short wait, so that Ctrl-C reaches this thread
    finally:
        together.close()  # threads still waiting for a step (an interrupt) get Interrupted and end
        for t in threads:
            if t.ident is not None:
                t.join()
    if failures:
        raise failures[0]


def _then_start(cb: Callbacks, threads: list[threading.Thread]) -> Callbacks:
    """``cb``, and the samples' threads start once the parent's first step is in: they share its prompt's KV."""

    def step_end(step: Any) -> None:
        for t in threads:
            if t.ident is None:
                t.start()
        if cb.step_end:
            cb.step_end(step)

    return Callbacks(cb.step_start, cb.text, step_end, cb.trigger)


def _twin(agent: Agent, model: StepModel, db: Any) -> Agent:
    """An agent like ``agent`` (policy, cloud, caps, modes) on another model and database connection."""
    twin = Agent(model, db, agent.policy.label, cloud=agent.cloud, caps=agent.caps, offline=agent.offline,
                 continuation=agent.continuation)
    twin.read_setting = getattr(agent, "read_setting", "auto")  # type: ignore[attr-defined]
    return twin


def _new_sample(agent: Agent, parent: Any, sample: Sample) -> str:
    """Create sample ``sample.index`` of ``parent``: its settings, at the sample's temperature and seed."""
    settings = Settings.from_dict({**parent.settings, "temperature": sample.temperature, "seed": sample.seed})
    extra = {k: v for k, v in parent.settings.items()
             if k not in Settings.__dataclass_fields__ and k not in _NOT_COPIED}
    return agent.start(parent.problem, settings, {**extra, "sample": sample.index}, parent_id=parent.id)


def samples_block(db: Any, state: Any) -> dict[str, Any]:
    """What a session's report adds: a parent's vote (its answer) and samples, or a sample's parent."""
    from . import handover

    if "sample" in state.settings:
        parent = store.sample_links(db, state.id)["parent_id"]
        return {"sample_of": {"session_id": parent, "index": state.settings["sample"]}}
    if state.settings.get("handover") is True:
        return {"handover_of": {"session_id": store.sample_links(db, state.id)["parent_id"]}}
    s = read_samples(db, state.id) if state.settings.get("samples") else None
    if s is None:
        return {}
    voted = store.sample_links(db, state.id)["agreement"] is not None
    return {"answer": s.winner,
            "samples": {**s.to_dict(), "greedy_answer": state.answer, "total": store.sample_totals(db, state.id)},
            **(handover.block(db, state.id, s.winner, s.agreement if voted else None))}
