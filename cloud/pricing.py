"""Prices in USD per million tokens, and exact cost arithmetic in integer nano-dollars.

The table ships with the package (public list prices); config can override or add entries.
Money is summed and compared as integers (1 nUSD = 1e-9 USD), never as floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from .errors import ConfigError

NANO = 1_000_000_000
# No model costs anywhere near this (the dearest list prices are a few hundred USD per 1M tokens). A price
# above it is a typo, and a large enough one overflows the ledger's 64-bit sums: refused before anything starts.
MAX_PRICE = 10_000.0  # USD per 1M tokens


class PriceError(ConfigError, ValueError):
    """A price that is not a finite number >= 0 (a ValueError too, as it always was)."""


@dataclass(frozen=True)
class Price:
    input: float  # USD per 1M uncached input tokens
    output: float  # USD per 1M output tokens
    cached_input: float | None = None  # USD per 1M cache-read input tokens (default: input)
    cache_write: float | None = None  # USD per 1M cache-write input tokens (Anthropic; default 1.25x input)

    def __post_init__(self) -> None:
        for v in (self.input, self.output, self.cached_input, self.cache_write):
            if v is not None and (not math.isfinite(v) or not 0 <= v <= MAX_PRICE):
                raise PriceError(f"a price must be a finite number of USD per 1M tokens from 0 to {MAX_PRICE:,.0f} "
                                 f"(got {v!r}): fix --price-in/--price-out or [prices] in the config")


def _exact(tokens: int, usd_per_million: float) -> Decimal:
    """Exact cost of ``tokens`` at a per-million price, in nano-dollars (not rounded)."""
    return Decimal(int(tokens)) * Decimal(repr(float(usd_per_million))) * 1000


def _ceil(value: Decimal) -> int:
    return int(value.to_integral_value(rounding="ROUND_CEILING"))


def _nusd(tokens: int, usd_per_million: float) -> int:
    return _ceil(_exact(tokens, usd_per_million))


def cost_nusd(price: Price, *, input_tokens: int, output_tokens: int, cached_tokens: int = 0, cache_write_tokens: int = 0) -> int:
    """Cost of one call. ``input_tokens`` counts all input, cached and cache-written included."""
    plain = max(input_tokens - cached_tokens - cache_write_tokens, 0)
    cached_price = price.input if price.cached_input is None else price.cached_input
    write_price = price.input * 1.25 if price.cache_write is None else price.cache_write
    # one rounding over the exact sum, so the actual cost can never exceed the worst case
    return _ceil(
        _exact(plain, price.input)
        + _exact(cached_tokens, cached_price)
        + _exact(cache_write_tokens, write_price)
        + _exact(output_tokens, price.output)
    )


def worst_case_nusd(price: Price, *, input_tokens: int, max_tokens: int) -> int:
    """The most a call can cost: every input token at the highest input rate, max_tokens of output."""
    top_in = max(
        price.input,
        price.cached_input if price.cached_input is not None else 0.0,
        price.cache_write if price.cache_write is not None else price.input * 1.25,
    )
    return _nusd(input_tokens, top_in) + _nusd(max_tokens, price.output)


def usd(nusd: int) -> float:
    return nusd / NANO


# Public list prices (USD / 1M tokens). Keys are model names as sent to the provider.
PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00, cached_input=1.25),
    "gpt-4o-mini": Price(0.15, 0.60, cached_input=0.075),
    "gpt-4.1": Price(2.00, 8.00, cached_input=0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, cached_input=0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, cached_input=0.025),
    "o3": Price(2.00, 8.00, cached_input=0.50),
    "o3-mini": Price(1.10, 4.40, cached_input=0.55),
    "o4-mini": Price(1.10, 4.40, cached_input=0.275),
    "gpt-5": Price(1.25, 10.00, cached_input=0.125),
    "gpt-5-mini": Price(0.25, 2.00, cached_input=0.025),
    # Anthropic (cache reads 0.1x input, cache writes 1.25x input)
    "claude-opus-4-1": Price(15.00, 75.00, cached_input=1.50, cache_write=18.75),
    "claude-sonnet-4-5": Price(3.00, 15.00, cached_input=0.30, cache_write=3.75),
    "claude-sonnet-4-0": Price(3.00, 15.00, cached_input=0.30, cache_write=3.75),
    "claude-haiku-4-5": Price(1.00, 5.00, cached_input=0.10, cache_write=1.25),
    "claude-3-5-haiku-latest": Price(0.80, 4.00, cached_input=0.08, cache_write=1.00),
    # DeepSeek (OpenAI-compatible)
    "deepseek-reasoner": Price(0.55, 2.19, cached_input=0.14),
    "deepseek-chat": Price(0.27, 1.10, cached_input=0.07),
}
# The loopback stand-in ('edge-agent cloud-local') is priced like DeepSeek-R1 so costs look real.
PRICES["local"] = PRICES["deepseek-reasoner"]


def lookup(model: str, overrides: dict[str, Price] | None = None) -> Price | None:
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    # dated snapshots ("gpt-4o-2024-08-06", "claude-sonnet-4-5-20250929") price like their base name
    for name in sorted(table, key=len, reverse=True):
        if model.startswith(name + "-"):
            return table[name]
    return None
