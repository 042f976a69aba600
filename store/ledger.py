"""The money ledger: budget reservations and settled cloud calls, shared by every process on the DB.

A reservation is taken inside ``BEGIN IMMEDIATE``: the write lock is held while the caps are
checked and the reservation row is written, so two processes cannot both squeeze under one cap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from .lease import alive
from .txn import new_id, now, write_txn

SCOPES = ("session", "day", "month")

# What a settled call counts for. Settle never books below zero, but a database written before that
# rule may hold a negative row (a provider's negative usage): it counts at its reservation, never less.
BOOKED = "(CASE WHEN cost_nusd < 0 THEN MAX(COALESCE(reserved_nusd, 0), 0) ELSE cost_nusd END)"
# What the provider's usage claimed a call cost (at our prices): above the booked cost for an overrun.
# A row with no claim (no usage reported, a failed call, a row written before m007) counts as booked.
CLAIMED = f"MAX(COALESCE(claimed_nusd, 0), {BOOKED})"


@dataclass(frozen=True)
class Denial:
    scope: str
    cap_nusd: int
    committed_nusd: int
    needed_nusd: int


def _group(db: Database, session_id: str) -> tuple[str, bool]:
    """The session whose cap ``session_id`` spends under, and whether it is shared: a self-consistency
    sample (``solve --samples``) spends under its parent's, with the parent and every other sample."""
    row = db.execute("SELECT parent_id FROM sessions WHERE id = ?", [session_id]).fetchone()
    root = row[0] if row and row[0] else session_id
    shared = root != session_id or db.execute("SELECT 1 FROM sessions WHERE parent_id = ? LIMIT 1", [root]).fetchone()
    return root, bool(shared)


def _committed(db: Database, scope: str, session_id: str, ts: str) -> int:
    """Settled spend plus open reservations in a scope, in nano-USD. The session scope of a sample or a
    parent counts its whole group (``_group``): ``--max-cost`` is the cap of the command."""
    if scope == "session":
        root = _group(db, session_id)[0]
        where = "(session_id = ? OR session_id IN (SELECT id FROM sessions WHERE parent_id = ?))"
        args = [root, root]
    elif scope == "day":
        where, args = "substr(created_at, 1, 10) = ?", [ts[:10]]
    else:
        where, args = "substr(created_at, 1, 7) = ?", [ts[:7]]
    spent = db.execute(f"SELECT COALESCE(SUM({BOOKED}), 0) FROM cloud_calls WHERE {where}", args).fetchone()[0]
    held = db.execute(
        f"SELECT COALESCE(SUM(amount_nusd), 0) FROM budget_reservations WHERE status = 'open' AND {where}", args
    ).fetchone()[0]
    return int(spent) + int(held)


def _overruns(db: Database, session_id: str, provider: str, model: str) -> int | None:
    """What ``provider``/``model`` claimed for its calls this session that billed past their reservation
    (nano-USD), or None if none did."""
    n, claimed = db.execute(
        f"SELECT COUNT(*), COALESCE(SUM({CLAIMED}), 0) FROM cloud_calls WHERE session_id = ? AND provider = ?"
        " AND model = ? AND status = 'overrun'", [session_id, provider, model]).fetchone()
    return int(claimed) if n else None


def reserve(
    db: Database,
    *,
    session_id: str,
    purpose: str,
    provider: str,
    model: str,
    amount_nusd: int,
    caps_nusd: dict[str, int | None],
    ts: str | None = None,
) -> str | Denial:
    """Reserve ``amount_nusd`` unless that would break a cap. Returns the reservation id or a Denial."""
    ts = ts or now()
    with write_txn(db):  # the write lock is held from the cap check to the insert
        overrun = _overruns(db, session_id, provider, model)
        if overrun is not None:  # its bills are not bounded by a reservation: no cap can hold for it
            return Denial("overrun", 0, overrun, amount_nusd)
        for scope in SCOPES:
            cap = caps_nusd.get(scope)
            if cap is None:
                continue
            committed = _committed(db, scope, session_id, ts)
            if committed + amount_nusd > cap:
                if scope == "session" and _group(db, session_id)[1]:
                    scope = "group"  # the cap of the session and its samples together
                return Denial(scope, cap, committed, amount_nusd)  # nothing was written
        rid = new_id()
        db.conn.execute(
            "INSERT INTO budget_reservations (id, session_id, purpose, provider, model, amount_nusd, status, pid, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?)",
            [rid, session_id, purpose, provider, model, amount_nusd, os.getpid(), ts],
        )
    return rid


def settle(
    db: Database,
    reservation_id: str,
    *,
    session_id: str,
    step_idx: int | None,
    purpose: str,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    cache_write_tokens: int,
    cost_nusd: int,
    latency_s: float,
    status: str,
    error: str | None = None,
    mode: str | None = None,
    claimed_nusd: int | None = None,
) -> str:
    """Replace a reservation by the call's actual cost, in one transaction. Returns the call id.

    The booked cost is never below zero nor above the reservation: a cost that is not a whole number
    of nano-dollars >= 0 is booked at the reservation, and one above it is booked at the reservation
    with status ``overrun`` (the caps hold whatever a caller or a provider claims). ``claimed_nusd``
    is what the provider's usage says the call cost, kept beside the booked cost (None: no claim).
    """
    if isinstance(claimed_nusd, bool) or not isinstance(claimed_nusd, int) or claimed_nusd < 0:
        claimed_nusd = None
    call_id = new_id()
    with write_txn(db):
        row = db.execute("SELECT amount_nusd, created_at FROM budget_reservations WHERE id = ?", [reservation_id]).fetchone()
        reserved, created = (row[0], row[1]) if row else (0, now())
        if isinstance(cost_nusd, bool) or not isinstance(cost_nusd, int) or cost_nusd < 0:
            error = error or f"cost {cost_nusd!r} is not a whole number of nano-USD >= 0: booked at the reservation"
            cost_nusd = reserved
        elif row is not None and cost_nusd > reserved:
            error = error or f"cost {cost_nusd} nUSD is more than the {reserved} reserved: booked at the reservation"
            claimed_nusd = max(claimed_nusd or 0, cost_nusd)
            cost_nusd, status = reserved, "overrun"
        db["budget_reservations"].update(reservation_id, {"status": "settled", "settled_at": now()})
        db["cloud_calls"].insert({
            "id": call_id, "session_id": session_id, "step_idx": step_idx, "purpose": purpose,
            "provider": provider, "model": model, "input_tokens": input_tokens, "output_tokens": output_tokens,
            "cached_tokens": cached_tokens, "cache_write_tokens": cache_write_tokens, "cost_nusd": cost_nusd,
            "would_be_nusd": cost_nusd, "cost_usd": cost_nusd / 1e9, "reserved_nusd": reserved,
            "reservation_id": reservation_id, "latency_s": round(latency_s, 4), "status": status, "error": error,
            "mode": mode, "claimed_nusd": claimed_nusd,
            # the call counts in the day/month its reservation was taken, so a settle after
            # midnight cannot move spend out from under yesterday's cap
            "created_at": created,
        })
    return call_id


def cache_get(db: Database, key: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM response_cache WHERE key = ?", [key]))
    return rows[0] if rows else None


def cache_put(db: Database, key: str, *, provider: str, model: str, text: str, usage: dict[str, int]) -> None:
    with write_txn(db):
        db["response_cache"].insert(
            {"key": key, "provider": provider, "model": model, "text": text, **usage, "created_at": now()}, replace=True
        )


def record_cache_hit(
    db: Database,
    *,
    session_id: str,
    step_idx: int | None,
    purpose: str,
    provider: str,
    model: str,
    usage: dict[str, int],
    would_be_nusd: int,
) -> str:
    """A reply served from the response cache: nothing spent (cost 0), its would-be cost kept apart."""
    call_id = new_id()
    with write_txn(db):
        db["cloud_calls"].insert(
            {
                "id": call_id, "session_id": session_id, "step_idx": step_idx, "purpose": purpose,
                "provider": provider, "model": model, **usage,
                "cost_nusd": 0, "would_be_nusd": would_be_nusd, "cost_usd": 0.0, "reserved_nusd": 0,
                "reservation_id": None, "latency_s": 0.0, "status": "cache_hit", "error": None, "created_at": now(),
            }
        )
    return call_id


def reclaim_stale(db: Database) -> int:
    """Settle open reservations of processes that no longer exist, at their full amount (never under-count)."""
    rows = db.execute("SELECT id, pid FROM budget_reservations WHERE status = 'open'").fetchall()
    stale = [rid for rid, pid in rows if pid != os.getpid() and not alive(pid)]
    for rid in stale:
        r = db.execute(
            "SELECT session_id, purpose, provider, model, amount_nusd FROM budget_reservations WHERE id = ?", [rid]
        ).fetchone()
        settle(
            db, rid, session_id=r[0], step_idx=None, purpose=r[1], provider=r[2], model=r[3],
            input_tokens=0, output_tokens=0, cached_tokens=0, cache_write_tokens=0,
            cost_nusd=int(r[4]), latency_s=0.0, status="reclaimed", error="process died before settling",
        )
    return len(stale)


def spend(db: Database, ts: str | None = None) -> dict[str, Any]:
    """Totals for ``edge-agent cost``: today, this month, all time, and by day/provider/model; each booked
    (what counts against the caps) and as the providers claimed it (above booked only for overruns)."""
    ts = ts or now()
    q = lambda sql, args=(): db.execute(sql, list(args)).fetchone()[0] or 0  # noqa: E731
    rows = db.execute(
        "SELECT substr(created_at, 1, 10) AS day, provider, model, COUNT(*), SUM(input_tokens), SUM(output_tokens),"
        f" SUM(cached_tokens), SUM({BOOKED}), SUM({CLAIMED}), SUM(status = 'overrun') FROM cloud_calls"
        " GROUP BY day, provider, model ORDER BY day DESC, provider, model"
    ).fetchall()
    out: dict[str, Any] = {}
    for name, where, args in (("today", "WHERE substr(created_at, 1, 10) = ?", [ts[:10]]),
                              ("month", "WHERE substr(created_at, 1, 7) = ?", [ts[:7]]), ("total", "", [])):
        out[f"{name}_nusd"] = q(f"SELECT SUM({BOOKED}) FROM cloud_calls {where}", args)
        out[f"{name}_claimed_nusd"] = q(f"SELECT SUM({CLAIMED}) FROM cloud_calls {where}", args)
    out["open_nusd"] = q("SELECT SUM(amount_nusd) FROM budget_reservations WHERE status = 'open'")
    out["overrun_calls"] = q("SELECT COUNT(*) FROM cloud_calls WHERE status = 'overrun'")
    out["rows"] = [
        {
            "day": r[0], "provider": r[1], "model": r[2], "calls": r[3], "input_tokens": r[4] or 0,
            "output_tokens": r[5] or 0, "cached_tokens": r[6] or 0, "cost_usd": (r[7] or 0) / 1e9,
            "claimed_usd": (r[8] or 0) / 1e9, "overrun_calls": r[9] or 0,
        }
        for r in rows
    ]
    return out


def overrun_endpoints(db: Database) -> list[dict[str, Any]]:
    """Each provider/model that billed past a reservation: its overrun calls, what it claimed and what was booked."""
    rows = db.execute(
        f"SELECT provider, model, COUNT(*), SUM({CLAIMED}), SUM({BOOKED}), COUNT(DISTINCT session_id),"
        " MAX(created_at) FROM cloud_calls WHERE status = 'overrun' GROUP BY provider, model ORDER BY provider, model"
    ).fetchall()
    return [{"provider": r[0], "model": r[1], "calls": r[2], "claimed_usd": (r[3] or 0) / 1e9,
             "booked_usd": (r[4] or 0) / 1e9, "sessions": r[5], "last": r[6]} for r in rows]
