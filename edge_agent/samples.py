"""Self-consistency: N solutions of one problem, and the majority of their answers.

The first solution is the session ``solve`` starts as usual, decoded greedily: it is the *parent*.
Samples 2..N are sessions of their own (``sessions.parent_id`` names the parent), decoded at
``temperature`` with distinct seeds (the parent's seed + i). Each is committed step by step like any
session, so a crash loses nothing: ``resume PARENT`` finishes the parent if needed, then runs only the
samples that are not finished, then votes. All run one after another on one local model, so the
prompt's KV entries are evaluated once and reused by every sample.

The vote: answers are compared by ``answer.canonical`` ("3", "3.0" and "\\boxed{3}" agree); a session
with no answer (max steps, end of turn) casts no vote. The most votes win; a tie goes to the greedy
answer if it is among the tied, else to the earliest sample among them. ``agreement`` is the winner's
votes over N (no-votes included), stored on the parent and readable by a policy (``read_samples``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import store

from .agent import MAX_SEED, Agent, Callbacks, Settings
from .answer import canonical
from .config import MAX_SAMPLES, Config
from .errors import InputError

DEFAULT_TEMPERATURE = 0.7
# settings a sample does not copy from its parent: what makes it a parent, and what the agent sets itself
_NOT_COPIED = ("samples", "sample", "offline", "continuation", "temperature", "seed")


@dataclass(frozen=True)
class SampleSpec:
    """How many solutions and at what temperature the samples after the greedy one are decoded."""

    n: int = 1
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_SAMPLES:
            raise InputError(f"--samples must be an integer from 1 to {MAX_SAMPLES} (got {self.n})")
        if not 0.0 < self.temperature <= 5.0:
            raise InputError(f"--sample-temperature must be > 0 and <= 5 (got {self.temperature})")

    @classmethod
    def resolve(cls, n: int | None, temperature: float | None, cfg: Config) -> "SampleSpec":
        """The flags, else ``[solve]`` in the config, else 1 solution at 0.7."""
        return cls(n if n is not None else cfg.solve.get("samples", 1),
                   float(temperature if temperature is not None
                         else cfg.solve.get("sample_temperature", DEFAULT_TEMPERATURE)))

    def extra(self) -> dict[str, Any]:
        """What the parent stores in its settings (nothing for one solution: that is a plain solve)."""
        return {"samples": {"n": self.n, "temperature": self.temperature}} if self.n > 1 else {}


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


def read_samples(db: Any, session_id: str) -> Samples | None:
    """The samples of parent ``session_id`` and their vote so far; None if it was started without samples."""
    state = store.load_state(db, session_id)
    spec = state.settings.get("samples")
    if not spec:
        return None
    base = int(state.settings.get("seed", 0))
    found = {json.loads(r["settings"] or "{}").get("sample"): r for r in store.sample_sessions(db, session_id)}
    rows = [Sample(0, state.id, state.status, state.answer, base, float(state.settings.get("temperature", 0.0)))]
    for i in range(1, spec["n"]):
        r = found.get(i)
        rows.append(Sample(i, r["id"] if r else None, r["status"] if r else None, r["answer"] if r else None,
                           sample_seed(base, i), spec["temperature"]))
    answers = [s.answer if s.status == "done" else None for s in rows]
    return Samples(state.id, spec["n"], spec["temperature"], tuple(rows), vote(answers))


def is_parent(db: Any, session_id: str) -> bool:
    """Whether the session was started with samples (``solve --samples N``, N > 1)."""
    return bool(store.load_state(db, session_id).settings.get("samples"))


def ensure_resumable(db: Any, session_id: str) -> None:
    """Refuse ``resume`` of a parent whose samples are all finished and whose vote is stored."""
    s = read_samples(db, session_id)
    if s is not None and s.complete and store.sample_links(db, session_id)["agreement"] is not None:
        raise store.SessionError(
            f"session {session_id} and its {s.n - 1} samples are already finished (vote {s.winner!r}, "
            f"agreement {s.agreement:.2f}): start a new solve"
        )


SampleStart = Callable[[int, int, str], Callbacks]  # (index, n, session id) -> the callbacks for that run


def run_samples(agent: Agent, parent_id: str, start: SampleStart) -> Samples:
    """Finish the parent, then every sample not finished yet (creating the missing ones), then vote.

    Holds the parent's lease throughout, so two processes never create the same sample twice.
    """
    db = agent.db
    with store.session_lease(db, parent_id, purpose="samples"):
        state = store.load_state(db, parent_id)
        spec = state.settings["samples"]
        if state.status not in store.FINISHED:
            agent.run(parent_id, start(0, spec["n"], parent_id))
        for sample in read_samples(db, parent_id).samples[1:]:
            if sample.status in store.FINISHED:
                continue  # committed and finished: never redone
            sid = sample.session_id or _new_sample(agent, state, sample)
            agent.run(sid, start(sample.index, spec["n"], sid))
        result = read_samples(db, parent_id)
        store.set_vote(db, parent_id, result.winner, result.agreement)
        return result


def _new_sample(agent: Agent, parent: Any, sample: Sample) -> str:
    """Create sample ``sample.index`` of ``parent``: its settings, at the sample's temperature and seed."""
    settings = Settings.from_dict({**parent.settings, "temperature": sample.temperature, "seed": sample.seed})
    extra = {k: v for k, v in parent.settings.items()
             if k not in Settings.__dataclass_fields__ and k not in _NOT_COPIED}
    return agent.start(parent.problem, settings, {**extra, "sample": sample.index}, parent_id=parent.id)


def samples_block(db: Any, state: Any) -> dict[str, Any]:
    """What a session's report adds: a parent's vote (its answer) and samples, or a sample's parent."""
    if "sample" in state.settings:
        parent = store.sample_links(db, state.id)["parent_id"]
        return {"sample_of": {"session_id": parent, "index": state.settings["sample"]}}
    s = read_samples(db, state.id) if state.settings.get("samples") else None
    if s is None:
        return {}
    return {"answer": s.winner,
            "samples": {**s.to_dict(), "greedy_answer": state.answer, "total": store.sample_totals(db, state.id)}}
