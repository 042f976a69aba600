"""The ``solve --json`` object (DESIGN.md), built from the database so ``show`` prints the same thing."""

from __future__ import annotations

from typing import Any

import store
from store import ledger

from .samples import samples_block  # a parent's vote replaces its own answer; a sample names its parent
from .state import load_state
from .values import Step, Usage


def usage_of(state: store.SessionState, calls: list[dict[str, Any]]) -> Usage:
    local = [s for s in state.steps if s.author == "local"]
    local_s = sum(s.seconds for s in local)
    cloud = [s for s in state.steps if s.author == "cloud" and s.kind == "step"]
    return Usage(
        local_steps=sum(1 for s in local if s.kind == "step"),
        cloud_steps=len(cloud),
        local_tokens=sum(s.tokens for s in local),
        cloud_input_tokens=sum(c["input_tokens"] or 0 for c in calls),
        cloud_output_tokens=sum(c["output_tokens"] or 0 for c in calls),
        cloud_cached_tokens=sum(c["cached_tokens"] or 0 for c in calls),
        cost_usd=sum(c.get("cost_nusd") or 0 for c in calls) / 1e9,
        local_s=local_s,
        cloud_s=sum(c["latency_s"] or 0.0 for c in calls),
    )


def session_report(db: Any, session_id: str, *, verbose: bool = True) -> dict[str, Any]:
    state = load_state(db, session_id)
    calls = store.cloud_calls(db, session_id)
    evs = store.events(db, session_id)
    available = (
        state.cloud_provider is not None
        and not state.settings.get("offline")
        and not any(e["trigger"] == "cloud_unavailable" for e in evs)
    )
    return {
        "session_id": state.id,
        "status": state.status,
        "answer": state.answer,
        "problem": state.problem,
        "model": state.model,
        "policy": state.policy,
        "created_at": state.created_at,
        "steps": [_step(s, verbose) for s in state.steps],
        "events": [_event(e) for e in evs],
        "usage": _usage(state, calls, store.step_cache_stats(db, [session_id])),
        "cloud": {"provider": state.cloud_provider, "model": state.cloud_model, "available": available},
        **samples_block(db, state),
    }


def _step(s: Step, verbose: bool) -> dict[str, Any]:
    return {
        "index": s.index,
        "author": s.author,
        "kind": s.kind,
        "text": s.text,
        "tokens": s.tokens,
        "finish": s.finish,
        "seconds": round(s.seconds, 3),
        **({"signals": s.signals.to_dict()} if verbose else {}),
        "trigger": s.trigger,
    }


def _event(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": e["step_idx"],
        "trigger": e["trigger"],
        "action": e["action"],
        "score": e["score"],
        "threshold": e["threshold"],
        "detail": store.event_detail(e),
    }


def _usage(state: store.SessionState, calls: list[dict[str, Any]], replay: dict[str, Any]) -> dict[str, Any]:
    u = usage_of(state, calls)
    ratio = u.offload_ratio
    return {
        "cache_hits": sum(1 for c in calls if c["status"] == "cache_hit"),
        "local_steps": u.local_steps,
        "cloud_steps": u.cloud_steps,
        "offload_ratio": round(ratio, 4) if ratio is not None else None,
        "local_tokens": u.local_tokens,
        "cloud_input_tokens": u.cloud_input_tokens,
        "cloud_output_tokens": u.cloud_output_tokens,
        "cost_usd": round(u.cost_usd, 8),  # money actually spent
        # what the same calls cost without the response cache (equal to cost_usd when it is off)
        "would_be_cost_usd": round(sum(c.get("would_be_nusd") if c.get("would_be_nusd") is not None
                                       else (c.get("cost_nusd") or 0) for c in calls) / 1e9, 8),
        "wall_s": round(state.wall_s, 3),
        "local_s": round(u.local_s, 3),
        "cloud_s": round(u.cloud_s, 3),
        # local steps replayed from the step cache, and the local seconds the run would have taken without it
        "replayed_steps": replay["replayed"],
        "would_be_local_s": replay["would_be_local_s"],
    }


def spend_summary(db: Any, budget: dict[str, Any], days: int) -> dict[str, Any]:
    """Spend today, this month and in all, the caps of ``budget`` ([budget] in the config) and what they leave,
    and the rows of the last ``days`` (``edge-agent cost``, and the app's money line)."""
    s = ledger.spend(db)
    caps = {"day": budget.get("max_cost_day"), "month": budget.get("max_cost_month"),
            "session": budget.get("max_cost_session")}
    days_seen = sorted({r["day"] for r in s["rows"]}, reverse=True)[:days]
    left = lambda cap, spent: None if cap is None else max(cap - (spent + s["open_nusd"]) / 1e9, 0.0)  # noqa: E731
    return {
        "today_usd": s["today_nusd"] / 1e9,
        "month_usd": s["month_nusd"] / 1e9,
        "total_usd": s["total_nusd"] / 1e9,
        "open_reservations_usd": s["open_nusd"] / 1e9,
        # what the providers' usage claimed: above the booked figures only when an endpoint billed past a reservation
        "claimed_usd": {"today": s["today_claimed_nusd"] / 1e9, "month": s["month_claimed_nusd"] / 1e9,
                        "total": s["total_claimed_nusd"] / 1e9},
        "overrun_calls": s["overrun_calls"],
        "caps_usd": caps,
        "remaining_usd": {"day": left(caps["day"], s["today_nusd"]), "month": left(caps["month"], s["month_nusd"])},
        "rows": [r for r in s["rows"] if r["day"] in days_seen],
    }
