"""The cloud read: the cloud model scores a given text (the edge's own tokens) by one prefill, generating nothing.

A read is an OpenAI-style legacy completion with ``echo``, ``logprobs`` and ``max_tokens: 0``: the endpoint
returns each prompt token's log-probability under the cloud model. It costs input tokens only, and goes
through the budget like every call (``purpose = read``): reserved at its worst case (the token ids given,
or one token per UTF-8 byte of text), refused by a cap that cannot pay, settled from the reported usage.

Which endpoints can read: ``edge-agent cloud-local`` (a second context with ``logits_all``), vLLM and other
OpenAI-compatible servers that echo prompt log-probs. OpenAI's own chat API and Anthropic cannot: their
``read_mode`` is ``judge``, and a caller asks the cloud for a verdict instead (see ``edge_agent.reading``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .budget import Budget, checked_usage
from .errors import CloudError, ConfigError
from .pricing import usd

READ_MODES = ("auto", "echo", "judge", "off")


@dataclass(frozen=True)
class ReadReply:
    """Per-token log-probabilities of the prompt under the cloud model (the first token has none)."""

    tokens: tuple[str, ...]
    token_logprobs: tuple[float | None, ...]
    text_offset: tuple[int, ...]
    input_tokens: int
    cost_usd: float
    latency_s: float
    status: str = "ok"  # ok | no_usage (costed at the reservation) | overrun, as a CloudReply's
    overrun_usd: float = 0.0  # what the provider's usage claimed above the reservation (not booked)


def read_mode(cloud: Any, setting: str = "auto") -> str:
    """``echo`` (prompt log-probs by prefill) or ``judge``, for this cloud and ``[cloud] read`` setting."""
    if setting in ("echo", "judge", "off"):
        return setting
    adapter = cloud.adapter
    if getattr(adapter, "provider", "") != "openai":
        return "judge"  # Anthropic has no prompt log-probs
    base = getattr(adapter, "base_url", None) or ""
    return "judge" if (not base or "api.openai.com" in base) else "echo"  # OpenAI's own API no longer echoes


def check_read_setting(cloud: Any, setting: str) -> None:
    """Refuse ``[cloud] read = "echo"`` for a cloud that gives no prompt log-probs, before anything runs."""
    if cloud is not None and setting == "echo" and read_mode(cloud) != "echo":
        raise ConfigError(f'[cloud] read = "echo" needs prompt log-probs, which {cloud.provider}:{cloud.model} does '
                          'not give: set read = "auto" (a judge prompt reads for it), "judge" or "off" in the config')


def _raw_read(adapter: Any, prompt: str | list[int]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    from .adapters import sdk_error

    try:  # still in this process: an adapter without the openai SDK's legacy completions sends nothing
        create, sdk = adapter.client.completions.create, adapter._openai
    except AttributeError:
        raise CloudError(f"{adapter.provider}:{adapter.model} has no completions endpoint to read with: the read was "
                         'never sent; set [cloud] read = "judge" or "off"', "not_sent") from None
    try:
        resp = create(model=adapter.model, prompt=prompt, max_tokens=0, echo=True, logprobs=0, temperature=0)
    except Exception as e:
        raise sdk_error(sdk, e, "OPENAI_API_KEY", str(adapter.client.base_url)) from None
    try:
        lp = resp.choices[0].logprobs
        out = {"tokens": tuple(str(t) for t in lp.tokens),
               "token_logprobs": tuple(None if v is None else float(v) for v in lp.token_logprobs),
               "text_offset": tuple(int(v) for v in (lp.text_offset or range(len(lp.tokens))))}
        if not out["tokens"] or len(out["tokens"]) != len(out["token_logprobs"]) or \
                any(v is not None and not (math.isfinite(v) and v <= 1e-6) for v in out["token_logprobs"]):
            raise ValueError("inconsistent log-probs")
    except (AttributeError, IndexError, TypeError, ValueError):
        raise CloudError("the cloud's read sent no usable prompt log-probs (does it support echo with logprobs?)",
                         "malformed", opens_breaker=True, billed=True) from None
    u = getattr(resp, "usage", None)
    usage = None
    if u is not None and getattr(u, "prompt_tokens", None) is not None:
        usage = {"input_tokens": u.prompt_tokens, "output_tokens": getattr(u, "completion_tokens", 0) or 0,
                 "cached_tokens": 0, "cache_write_tokens": 0}
    return out, usage


def read(cloud: Any, prompt: str | Sequence[int], *, budget: Budget, step_idx: int | None = None,
         purpose: str = "read") -> ReadReply:
    """Reserve, read, settle. Raises BudgetDenied (nothing sent) or CloudError (settled and recorded)."""
    if not cloud.breaker.allow():
        raise CloudError(f"the cloud is paused after an error ({cloud.breaker.reason})", "circuit_open")
    body: str | list[int] = prompt if isinstance(prompt, str) else [int(t) for t in prompt]
    bound = len(body) if isinstance(body, list) else len(body.encode("utf-8"))
    reservation, reserved = budget.reserve(purpose=purpose, provider=cloud.provider, model=cloud.model,
                                           price=cloud.price, input_tokens=bound, max_tokens=0)
    record = {"step_idx": step_idx, "purpose": purpose, "provider": cloud.provider, "model": cloud.model,
              "mode": "echo"}
    t0 = time.perf_counter()
    try:
        out, usage = _raw_read(cloud.adapter, body)
        usage = None if usage is None else checked_usage(usage)
    except BaseException as e:
        err = e if isinstance(e, CloudError) else CloudError(f"cloud read failed ({type(e).__name__})", "error",
                                                             billed=True)
        cloud._settle_failed(err, budget, reservation, reserved, record, time.perf_counter() - t0)  # as any call
        if err is e or not isinstance(e, Exception):
            raise
        raise err from None
    latency = time.perf_counter() - t0
    cost, status, usage, claimed = cloud._settle_ok(budget, reservation, reserved, record, usage, latency)
    return ReadReply(tokens=out["tokens"], token_logprobs=out["token_logprobs"], text_offset=out["text_offset"],
                     input_tokens=usage["input_tokens"], cost_usd=usd(cost), latency_s=latency, status=status,
                     overrun_usd=usd(claimed - cost) if status == "overrun" and claimed is not None else 0.0)
