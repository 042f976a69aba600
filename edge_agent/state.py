"""Translation between the store's rows and the agent's values: the one place they meet."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import store

from .values import Signals, Step


def to_step(row: Any) -> Step:
    """A stored step row as the agent's ``Step``."""
    return Step(index=row.index, author=row.author, kind=row.kind, text=row.text, raw=row.raw,
                token_ids=tuple(row.token_ids), signals=Signals.from_dict(row.signals), trigger=row.trigger,
                finish=row.finish, seconds=row.seconds, id=row.id)


def load_state(db: Any, session_id: str) -> Any:
    """``store.load_state`` with its steps as ``Step`` values (what policies and the local model use)."""
    state = store.load_state(db, session_id)
    return replace(state, steps=[to_step(r) for r in state.steps])
