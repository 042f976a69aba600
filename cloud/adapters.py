"""Provider adapters on the official SDKs. Each returns (text, usage or None, first-token top logprobs
or None); errors become CloudError."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from edge_agent.errors import CloudError, ConfigError


@dataclass(frozen=True)
class RawReply:
    text: str
    usage: dict[str, int] | None  # input_tokens (all), output_tokens, cached_tokens, cache_write_tokens
    top_logprobs: list[tuple[str, float]] | None = None  # the first output token's alternatives, when asked and given


def is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return bool(host) and (host == "localhost" or host.startswith("127.") or host == "::1")


def _key(env: str, configured: str | None, base_url: str | None) -> str:
    key = os.environ.get(env) or configured
    if key:
        return key
    if is_loopback(base_url):
        return "not-needed-on-loopback"
    raise ConfigError(f"no API key found: set the {env} environment variable or add it under [keys] in the config file")


def _connection_error(e: BaseException) -> CloudError:
    """Refused before sending costs nothing; a connection lost mid-response may have been billed."""
    cause = e.__cause__ or e.__context__
    refused = cause is not None and "Connect" in type(cause).__name__
    if refused:
        return CloudError(f"cannot reach the cloud ({cause})", "connection", opens_breaker=True)
    return CloudError(f"the connection broke mid-response ({type(cause).__name__ if cause else e})", "broken_response",
                      opens_breaker=True, billed=True)


def _sdk_error(sdk: Any, e: Exception, key_env: str) -> CloudError:
    """Map an official SDK's exception (openai and anthropic share the class names) to a CloudError."""
    if isinstance(e, sdk.APITimeoutError):
        return CloudError("the cloud did not answer in time", "timeout", opens_breaker=True, billed=True)
    if isinstance(e, sdk.APIConnectionError):
        return _connection_error(e)
    if isinstance(e, sdk.RateLimitError):
        return CloudError("the cloud is rate limiting (429) after retries", "rate_limited", opens_breaker=True)
    if isinstance(e, sdk.AuthenticationError):
        return CloudError(f"the cloud rejected the API key (401): check {key_env}", "auth", opens_breaker=True)
    if isinstance(e, sdk.APIStatusError):
        code = e.status_code
        return CloudError(f"the cloud answered HTTP {code}", f"http_{code}", opens_breaker=code >= 500 or code == 529)
    # malformed JSON, a truncated body, a response that fails validation
    return CloudError(f"the cloud sent a malformed response ({type(e).__name__})", "malformed", opens_breaker=True, billed=True)


class OpenAIAdapter:
    """Any OpenAI-compatible endpoint: OpenAI, DeepSeek, vLLM, Ollama, llama.cpp's server."""

    provider = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 2, http_client: Any = None) -> None:
        import openai

        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self._openai = openai
        self.client = openai.OpenAI(
            api_key=_key("OPENAI_API_KEY", api_key, self.base_url),
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client,
        )

    def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int, stop: Sequence[str] = (),
                 top_logprobs: int = 0) -> RawReply:
        oa = self._openai
        try:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=list(messages),
                max_tokens=max_tokens,
                temperature=0,
                **({"stop": list(stop)[:4]} if stop else {}),
                **({"logprobs": True, "top_logprobs": top_logprobs} if top_logprobs else {}),
            )
        except Exception as e:
            raise _sdk_error(oa, e, "OPENAI_API_KEY") from None
        try:
            text = resp.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise CloudError("the cloud sent a response with no message", "malformed", opens_breaker=True, billed=True) from None
        u = getattr(resp, "usage", None)
        usage = None
        if u is not None and getattr(u, "prompt_tokens", None) is not None and getattr(u, "completion_tokens", None) is not None:
            details = getattr(u, "prompt_tokens_details", None)
            cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
            usage = {
                "input_tokens": int(u.prompt_tokens),
                "output_tokens": int(u.completion_tokens),
                "cached_tokens": int(cached),
                "cache_write_tokens": 0,
            }
        return RawReply(text, usage, _first_top_logprobs(resp) if top_logprobs else None)


def _first_top_logprobs(resp: Any) -> list[tuple[str, float]] | None:
    """``choices[0].logprobs.content[0].top_logprobs`` as (token, logprob) pairs; None if absent."""
    try:
        first = resp.choices[0].logprobs.content[0]
        return [(str(t.token), float(t.logprob)) for t in first.top_logprobs or []] or None
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


class AnthropicAdapter:
    """Anthropic Messages API, with prompt caching on the long shared prefix (the first user block)."""

    provider = "anthropic"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 2, http_client: Any = None) -> None:
        import anthropic

        self.model = model
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL")
        self._anthropic = anthropic
        kwargs: dict[str, Any] = {"http_client": http_client} if http_client is not None else {}
        self.client = anthropic.Anthropic(
            api_key=_key("ANTHROPIC_API_KEY", api_key, self.base_url),
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=max_retries,
            **kwargs,
        )

    @staticmethod
    def _shape(messages: Sequence[dict[str, str]]) -> tuple[list[dict], list[dict]]:
        """System text apart; the first user message is marked cacheable (it carries problem + steps)."""
        system = [{"type": "text", "text": m["content"]} for m in messages if m["role"] == "system"]
        turns: list[dict] = []
        for m in messages:
            if m["role"] == "system":
                continue
            block: dict[str, Any] = {"type": "text", "text": m["content"]}
            if not turns and m["role"] == "user":
                block["cache_control"] = {"type": "ephemeral"}
            turns.append({"role": m["role"], "content": [block]})
        return system, turns

    def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int, stop: Sequence[str] = (),
                 top_logprobs: int = 0) -> RawReply:
        """The Messages API gives no logprobs: ``top_logprobs`` is accepted and the reply has none."""
        an = self._anthropic
        system, turns = self._shape(messages)
        # The API refuses whitespace-only stop sequences; the caller cuts at the blank line itself.
        stops = [s for s in stop if s.strip()]
        try:
            resp = self.client.messages.create(
                model=self.model,
                max_tokens=max_tokens,
                messages=turns,
                **({"system": system} if system else {}),
                **({"stop_sequences": stops} if stops else {}),
            )
        except Exception as e:
            raise _sdk_error(an, e, "ANTHROPIC_API_KEY") from None
        try:
            text = "".join(b.text for b in resp.content if getattr(b, "type", "") == "text")
        except (AttributeError, TypeError):
            raise CloudError("the cloud sent a response with no content", "malformed", opens_breaker=True, billed=True) from None
        u = getattr(resp, "usage", None)
        usage = None
        if u is not None and getattr(u, "input_tokens", None) is not None and getattr(u, "output_tokens", None) is not None:
            read = int(getattr(u, "cache_read_input_tokens", None) or 0)
            write = int(getattr(u, "cache_creation_input_tokens", None) or 0)
            usage = {
                "input_tokens": int(u.input_tokens) + read + write,
                "output_tokens": int(u.output_tokens),
                "cached_tokens": read,
                "cache_write_tokens": write,
            }
        return RawReply(text, usage)


ADAPTERS = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter}
