"""``Cloud``: one adapter behind the budget and the circuit breaker. Every call leaves a ledger row."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from .errors import CloudError, ConfigError
from .types import CloudReply

from .adapters import ADAPTERS
from .breaker import CircuitBreaker
from .budget import Budget, actual_cost, checked_usage, estimate_input_tokens
from .pricing import Price, lookup, usd


class Cloud:
    def __init__(self, adapter: Any, price: Price, breaker: CircuitBreaker | None = None, *, cache: bool = False) -> None:
        self.adapter = adapter
        self.price = price
        self.breaker = breaker or CircuitBreaker()
        self.cache = cache  # opt-in: replay identical requests (for sweeps); hits cost 0 and keep a would-be cost

    @property
    def provider(self) -> str:
        return self.adapter.provider

    @property
    def model(self) -> str:
        return self.adapter.model

    def call(
        self,
        messages: Sequence[dict[str, str]],
        *,
        max_tokens: int,
        budget: Budget,
        purpose: str,
        step_idx: int | None = None,
        stop: Sequence[str] = (),
        prefill: bool = False,
    ) -> CloudReply:
        """Reserve, call, settle. Raises BudgetDenied (nothing sent) or CloudError (settled and recorded).

        ``prefill``: the reply continues the final assistant message (continuation mode)."""
        return self._call(messages, max_tokens=max_tokens, budget=budget, purpose=purpose, step_idx=step_idx,
                          stop=stop, prefill=prefill)[0]

    def judge(self, messages: Sequence[dict[str, str]], *, budget: Budget, purpose: str = "judge",
              step_idx: int | None = None, top_logprobs: int = 10) -> tuple[CloudReply, list[tuple[str, float]] | None]:
        """One output token (a rating), with its top alternatives' logprobs where the provider gives them.

        Budgeted and recorded like every call. Never served from the response cache: the cache
        keeps text only, and a replayed rating without its logprobs would score differently.
        """
        return self._call(messages, max_tokens=1, budget=budget, purpose=purpose, step_idx=step_idx, stop=(),
                          top_logprobs=top_logprobs, cacheable=False)

    def _call(self, messages: Sequence[dict[str, str]], *, max_tokens: int, budget: Budget, purpose: str,
              step_idx: int | None, stop: Sequence[str], top_logprobs: int = 0,
              cacheable: bool = True, prefill: bool = False) -> tuple[CloudReply, list[tuple[str, float]] | None]:
        key = None
        if self.cache and cacheable:
            key = request_key(self.provider, self.model, getattr(self.adapter, "base_url", None), messages, max_tokens,
                              stop, prefill)
            hit = budget.cache_get(key)
            if hit is not None:
                return self._replay(hit, budget, purpose, step_idx), None
        if not self.breaker.allow():
            raise CloudError(f"the cloud is paused after an error ({self.breaker.reason})", "circuit_open")
        reservation, reserved = budget.reserve(
            purpose=purpose, provider=self.provider, model=self.model, price=self.price,
            input_tokens=estimate_input_tokens(list(messages)), max_tokens=max_tokens,
        )
        record = {"step_idx": step_idx, "purpose": purpose, "provider": self.provider, "model": self.model,
                  "mode": "continuation" if prefill else None}
        t0 = time.perf_counter()
        try:
            extra = {"top_logprobs": top_logprobs} if top_logprobs else {}
            if prefill:
                extra["prefill"] = True
            raw = self.adapter.complete(messages, max_tokens=max_tokens, stop=stop, **extra)
            if not isinstance(raw.text, str):  # whatever the adapter: the steps read text, and a crash would re-pay on resume
                raise _not_text(raw)
            usage = None if raw.usage is None else checked_usage(raw.usage)  # impossible counts: malformed, billed
        except BaseException as e:
            err = e if isinstance(e, CloudError) else CloudError(f"cloud call failed ({type(e).__name__})", "error", billed=True)
            self._settle_failed(err, budget, reservation, reserved, record, time.perf_counter() - t0)
            if err is e:
                raise
            if isinstance(e, Exception):
                raise err from None
            raise
        latency = time.perf_counter() - t0
        cost, status, usage, claimed = self._settle_ok(budget, reservation, reserved, record, usage, latency)
        if key is not None and status == "ok":
            budget.cache_put(key, provider=self.provider, model=self.model, text=raw.text, usage=_usage4(usage))
        return CloudReply(
            text=raw.text, input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
            cached_tokens=usage["cached_tokens"], cost_usd=usd(cost), latency_s=latency, provider=self.provider,
            model=self.model, status=status, overrun_usd=usd(claimed - cost) if status == "overrun" else 0.0,
        ), raw.top_logprobs

    def _settle_ok(self, budget: Budget, reservation: str, reserved: int, record: dict[str, Any],
                   usage: dict[str, int] | None, latency: float) -> tuple[int, str, dict[str, int], int | None]:
        """Book a call that came back (a reply or a read) and let the breaker hear of it: (cost, status, usage, claimed)."""
        cost, status, usage4, claimed, note = self._booked(usage, reserved)
        budget.settle(reservation, **record, **usage4, cost_nusd=cost, claimed_nusd=claimed, latency_s=latency,
                      status=status, error=note)
        if status == "overrun":  # the endpoint bills past max_tokens: a fault of it (the ledger refuses it for the session)
            self.breaker.trip(status)
        else:
            self.breaker.reset()
        return cost, status, usage4, claimed

    def _booked(self, usage: dict[str, int] | None, reserved: int) -> tuple[int, str, dict[str, int], int | None, str | None]:
        """(cost to book, status, usage, cost the provider's usage claims or None, note)."""
        if usage is None:
            return reserved, "no_usage", _usage4({}), None, None
        cost = actual_cost(self.price, usage)
        if cost <= reserved:
            return cost, "ok", usage, cost, None
        # more than the worst case is possible only if the usage is wrong: the caps count the
        # reservation, and the row says what the provider claimed
        note = (f"the cloud reported usage costing ${usd(cost):.9f}, more than the ${usd(reserved):.9f} "
                "reserved for the call: booked at the reservation")
        return reserved, "overrun", usage, cost, note

    def _replay(self, hit: dict[str, Any], budget: Budget, purpose: str, step_idx: int | None) -> CloudReply:
        usage = _usage4(hit)
        would_be = actual_cost(self.price, usage)
        budget.record_cache_hit(step_idx=step_idx, purpose=purpose, provider=self.provider, model=self.model,
                                usage=usage, would_be_nusd=would_be)
        return CloudReply(text=hit["text"], input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"],
                          cached_tokens=usage["cached_tokens"], cost_usd=0.0, latency_s=0.0,
                          provider=self.provider, model=self.model, status="cache_hit")


    def _settle_failed(self, err: CloudError, budget: Budget, reservation: str, reserved: int, record: dict[str, Any],
                       latency: float) -> None:
        """Book a failed call and let the breaker count it. A request the provider may have processed is
        costed at its reservation (never under-count), or at its usage when a paid reply came back unusable."""
        cost, usage, claimed = (reserved if err.billed else 0), _usage4({}), None
        if err.billed and err.usage is not None:
            try:
                usage = checked_usage(err.usage)
            except CloudError:  # impossible counts too: the reservation stands
                usage = _usage4({})
            else:
                claimed = actual_cost(self.price, usage)
                cost = min(claimed, reserved)
        budget.settle(reservation, **record, **usage, cost_nusd=cost, claimed_nusd=claimed, latency_s=latency,
                      status=err.kind, error=str(err))
        if err.opens_breaker:
            self.breaker.trip(err.kind)


def _not_text(raw: Any) -> CloudError:
    err = CloudError(f"the cloud's reply is not text ({type(raw.text).__name__})", "malformed", opens_breaker=True,
                     billed=True)
    err.usage = raw.usage  # paid for: booked at its usage
    return err


def _usage4(u: dict[str, Any]) -> dict[str, int]:
    return {k: int(u.get(k) or 0) for k in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens")}


def request_key(provider: str, model: str, base_url: str | None, messages: Sequence[dict[str, str]],
                max_tokens: int, stop: Sequence[str], prefill: bool = False) -> str:
    """The response-cache key: a hash of the exact request."""
    import hashlib
    import json

    body = json.dumps({"provider": provider, "model": model, "base_url": base_url, "messages": list(messages),
                       "max_tokens": max_tokens, "stop": list(stop), **({"prefill": True} if prefill else {})},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def parse_spec(spec: str) -> tuple[str, str]:
    """``openai:gpt-4o-mini`` -> (provider, model)."""
    provider, sep, model = spec.partition(":")
    if not sep or not model or provider not in ADAPTERS:
        raise ConfigError(f"--cloud must be PROVIDER:MODEL with PROVIDER one of {', '.join(ADAPTERS)} (got {spec!r})")
    return provider, model


def make_cloud(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    prices: dict[str, Price] | None = None,
    price: Price | None = None,
    timeout_s: float = 60.0,
    max_retries: int = 2,
    cooldown_s: float = 60.0,
    http_client: Any = None,
    cache: bool = False,
) -> Cloud:
    provider, model = parse_spec(spec)
    if isinstance(cooldown_s, bool) or not isinstance(cooldown_s, (int, float)) or not math.isfinite(cooldown_s) \
            or cooldown_s < 0:
        raise ConfigError(f"the cloud cooldown must be a finite number of seconds >= 0 (got {cooldown_s!r}): "
                          "fix [cloud] cooldown_s in the config")
    chosen = price or lookup(model, prices)
    if chosen is None:
        raise ConfigError(
            f"no price known for model {model!r}: pass --price-in and --price-out (USD per 1M tokens) "
            "or add it under [prices] in the config file; edge-agent never spends blind"
        )
    adapter = ADAPTERS[provider](
        model, base_url=base_url, api_key=api_key, timeout_s=timeout_s, max_retries=max_retries, http_client=http_client
    )
    return Cloud(adapter, chosen, CircuitBreaker(cooldown_s), cache=cache)
