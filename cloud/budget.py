"""Hard spending caps: reserve the worst case before a call, settle to the actual cost after it."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import BudgetDenied, CloudError, ConfigError

from .pricing import NANO, Price, cost_nusd, usd, worst_case_nusd


@dataclass(frozen=True)
class Caps:
    session_usd: float | None = None
    day_usd: float | None = None
    month_usd: float | None = None

    def __post_init__(self) -> None:
        for scope in ("session", "day", "month"):
            v = getattr(self, f"{scope}_usd")
            if v is not None and not is_amount(v):
                raise ConfigError(f"the {scope} cost cap must be a finite number of USD >= 0 (got {v!r}): "
                                  f"fix --max-cost or [budget] max_cost_{scope} in the config")

    def nusd(self) -> dict[str, int | None]:
        # caps round down: a cap of $0.001 allows at most 1,000,000 nUSD (exact: a float product can overflow)
        conv = lambda v: None if v is None else int(Decimal(repr(v)) * NANO)  # noqa: E731
        return {"session": conv(self.session_usd), "day": conv(self.day_usd), "month": conv(self.month_usd)}


def is_amount(v: Any) -> bool:
    """A finite real number >= 0 (a bool is not a number here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# No call reads or writes this many tokens (context windows are a few million at most): a larger
# count is garbage, not usage.
MAX_TOKENS = 100_000_000
USAGE_KEYS = ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens")


def token_count(name: str, value: Any) -> int:
    """One token count as the provider reported it, if it is possible; else a malformed reply (billed)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        raise CloudError(f"the cloud reported impossible usage ({name}={value!r}): costed at the reservation",
                         "malformed", opens_breaker=True, billed=True)
    return value


def checked_usage(usage: Mapping[str, Any]) -> dict[str, int]:
    """The four counts of a reply's usage, each a possible token count, with the cached and cache-written
    input inside the input. Anything else is a malformed reply: CloudError, costed at the reservation."""
    optional = ("cached_tokens", "cache_write_tokens")  # absent or None: none cached
    out = {k: token_count(k, 0 if k in optional and usage.get(k) is None else usage.get(k)) for k in USAGE_KEYS}
    if out["cached_tokens"] + out["cache_write_tokens"] > out["input_tokens"]:
        raise CloudError(f"the cloud reported impossible usage (cached {out['cached_tokens']} + cache-written "
                         f"{out['cache_write_tokens']} > input {out['input_tokens']}): costed at the reservation",
                         "malformed", opens_breaker=True, billed=True)
    return out


def estimate_input_tokens(messages: list[dict[str, Any]]) -> int:
    """An upper bound on input tokens without the provider's tokenizer: one per UTF-8 byte, plus framing.

    No BPE token is shorter than one byte, so this never under-reserves.
    """
    body = json.dumps(messages, ensure_ascii=False).encode("utf-8")
    return len(body) + 16 * len(messages) + 16


class Budget:
    """Caps in force for one session, over a store shared with every other process."""

    def __init__(self, db: Any, caps: Caps, session_id: str, ledger: Any = None) -> None:
        self.db = db
        self.caps = caps
        self.session_id = session_id
        # where reservations are taken and settled: ``store.ledger`` on ``db``, or a stand-in with the same
        # ``reserve`` and ``settle`` (a Ray worker's, which takes them on the driver's database)
        self.ledger = ledger

    def reserve(self, *, purpose: str, provider: str, model: str, price: Price, input_tokens: int, max_tokens: int) -> tuple[str, int]:
        from store import ledger

        amount = worst_case_nusd(price, input_tokens=input_tokens, max_tokens=max_tokens)
        got = (self.ledger or ledger).reserve(
            self.db,
            session_id=self.session_id,
            purpose=purpose,
            provider=provider,
            model=model,
            amount_nusd=amount,
            caps_nusd=self.caps.nusd(),
        )
        if isinstance(got, ledger.Denial) and got.scope == "overrun":
            raise BudgetDenied(
                f"{provider}:{model} billed past its reservation earlier in this session (it claimed "
                f"${usd(got.committed_nusd):.6f}): no reservation bounds what it charges, so it is not called again "
                "in this session", got.scope, usd(got.cap_nusd), usd(got.committed_nusd), usd(got.needed_nusd),
            )
        if isinstance(got, ledger.Denial):
            cap = "cap the session shares with its samples" if got.scope == "group" else f"{got.scope} cap"
            raise BudgetDenied(
                f"{purpose} needs up to ${usd(got.needed_nusd):.6f} but the {cap} ${usd(got.cap_nusd):.6f} "
                f"has ${usd(max(got.cap_nusd - got.committed_nusd, 0)):.6f} left",
                got.scope, usd(got.cap_nusd), usd(got.committed_nusd), usd(got.needed_nusd),
            )
        return got, amount

    def settle(self, reservation_id: str, **call: Any) -> str:
        from store import ledger

        return (self.ledger or ledger).settle(self.db, reservation_id, session_id=self.session_id, **call)


    def cache_get(self, key: str) -> dict[str, Any] | None:
        from store import ledger

        return ledger.cache_get(self.db, key)

    def cache_put(self, key: str, **entry: Any) -> None:
        from store import ledger

        ledger.cache_put(self.db, key, **entry)

    def record_cache_hit(self, **call: Any) -> str:
        from store import ledger

        return ledger.record_cache_hit(self.db, session_id=self.session_id, **call)


def actual_cost(price: Price, usage: dict[str, int]) -> int:
    return cost_nusd(
        price,
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        cached_tokens=usage.get("cached_tokens", 0),
        cache_write_tokens=usage.get("cache_write_tokens", 0),
    )
