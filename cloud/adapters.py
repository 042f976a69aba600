"""Provider adapters on the official SDKs. Each returns (text, usage or None, first-token top logprobs
or None); errors become CloudError."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import CloudError, ConfigError

from .budget import token_count


@dataclass(frozen=True)
class RawReply:
    text: str
    # input_tokens (all), output_tokens, cached_tokens, cache_write_tokens, as the provider reported them:
    # the client checks them (a negative, fractional or absurd count is a malformed reply)
    usage: dict[str, Any] | None
    top_logprobs: list[tuple[str, float]] | None = None  # the first output token's alternatives, when asked and given


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a cloud base URL (http or https, a host, a valid port), or None if it can."""
    if not isinstance(url, str) or not url:
        return "it is empty"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it contains a space or a control character"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a bad or out-of-range port
    except ValueError as e:
        return f"it does not parse: {e}"
    if not parts.scheme:
        return "it does not start with http:// or https://"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "it has no host after the scheme"
    return None


def _bad_url(url: str, why: str, env: str) -> ConfigError:
    return ConfigError(f"the cloud base URL {url!r} is not usable ({why}): give an http:// or https:// URL "
                       f"with a host, e.g. https://api.deepseek.com/v1, in --cloud-base-url, {env} or [cloud] base_url")


def check_base_url(url: str | None, env: str) -> str | None:
    """``url`` if it is usable (or None); else a ConfigError naming where to fix it."""
    why = None if url is None else url_problem(url)
    if why:
        raise _bad_url(url, why, env)
    return url


def _sdk_client(make: Any, url: str | None, env: str) -> Any:
    """Build an SDK client; a URL that its HTTP library refuses (``1.2.3.999``) is a ConfigError too."""
    try:
        return make()
    except Exception as e:
        if type(e).__name__ != "InvalidURL":
            raise
        raise _bad_url(str(url), str(e), env) from None


def check_transport(timeout_s: Any, max_retries: Any) -> None:
    """SDK settings that would fail every request locally: refused before any call can be charged."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise ConfigError(f"the cloud timeout must be a finite number of seconds > 0 (got {timeout_s!r}): "
                          "fix [cloud] timeout_s in the config")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"the cloud retry count must be an integer >= 0 (got {max_retries!r}): "
                          "fix [cloud] max_retries in the config")


def is_loopback(url: str | None) -> bool:
    try:
        host = urlsplit(url).hostname if url else None
    except ValueError:
        return False
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


# raised by httpx when a URL cannot be requested at all, before a byte is sent
_UNSENDABLE = ("UnsupportedProtocol", "InvalidURL")


def _never_sent(e: BaseException, base_url: str) -> BaseException | None:
    """The error, if any, that proves the request never left the process: the URL the SDK built from
    ``base_url`` could not be requested. The same error on a redirect's URL proves nothing: the first
    request reached the server."""
    for cur in (e, e.__cause__):
        if cur is None or type(cur).__name__ not in _UNSENDABLE:
            continue
        try:
            url = str(cur.request.url)  # type: ignore[attr-defined]
        except (AttributeError, RuntimeError):  # raised while building the request: it has none yet
            return cur
        return cur if url.startswith(base_url) else None
    return None


def sdk_error(sdk: Any, e: Exception, key_env: str, base_url: str) -> CloudError:
    """Map an official SDK's exception (openai and anthropic share the class names) to a CloudError.

    ``base_url`` is the SDK client's own, to tell a request that never left from a redirect that failed.
    """
    local = _never_sent(e, base_url)
    if local is not None:
        return CloudError(f"the request was never sent ({type(local).__name__}: {local}): fix the cloud base URL",
                          "not_sent", opens_breaker=True)
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
        err = CloudError(f"the cloud answered HTTP {code}", f"http_{code}", opens_breaker=code >= 500 or code == 529)
        err.detail = str(getattr(e, "message", "") or "")[:300]  # the provider's own words (e.g. what it refused)
        return err
    # malformed JSON, a truncated body, a response that fails validation
    return CloudError(f"the cloud sent a malformed response ({type(e).__name__})", "malformed", opens_breaker=True, billed=True)


CONTINUE_FLAGS = {"continue_final_message": True, "add_generation_prompt": False}


def prefill_turns(messages: Sequence[dict[str, str]], prefill: bool) -> tuple[list[dict[str, str]], bool]:
    """The messages to send and whether they end in a prefill: an empty final assistant message is
    dropped (continuing nothing is starting the turn)."""
    messages = list(messages)
    if not prefill or not messages or messages[-1]["role"] != "assistant":
        return messages, False
    if not messages[-1]["content"].strip():
        return messages[:-1], False
    return messages, True


class OpenAIAdapter:
    """Any OpenAI-compatible endpoint: OpenAI, DeepSeek, vLLM, Ollama, llama.cpp's server."""

    provider = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 2, http_client: Any = None) -> None:
        import openai

        from .deadline import bounded_http_client

        check_transport(timeout_s, max_retries)
        self.model = model
        self.base_url = check_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or None, "OPENAI_BASE_URL")
        self._openai = openai
        key = _key("OPENAI_API_KEY", api_key, self.base_url)
        self.client = _sdk_client(lambda: openai.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client or bounded_http_client(openai),  # timeout_s bounds the whole request
        ), self.base_url, "OPENAI_BASE_URL")

    def complete(self, messages: Sequence[dict[str, str]], *, max_tokens: int, stop: Sequence[str] = (),
                 top_logprobs: int = 0, prefill: bool = False) -> RawReply:
        """``prefill``: continue the final assistant message (vLLM/SGLang ``continue_final_message``;
        llama.cpp's server and ``edge-agent cloud-local`` do the same), instead of starting a new turn."""
        oa = self._openai
        messages, prefill = prefill_turns(messages, prefill)
        try:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=list(messages),
                max_tokens=max_tokens,
                temperature=0,
                **({"stop": list(stop)[:4]} if stop else {}),
                **({"logprobs": True, "top_logprobs": top_logprobs} if top_logprobs else {}),
                **({"extra_body": CONTINUE_FLAGS} if prefill else {}),
            )
        except Exception as e:
            raise sdk_error(oa, e, "OPENAI_API_KEY", str(self.client.base_url)) from None
        usage = _openai_usage(resp)
        try:
            content = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise CloudError("the cloud sent a response with no message", "malformed", opens_breaker=True, billed=True) from None
        text = content_text(content)
        if text is None:  # paid for, but not text: booked at its usage, and the step stays local
            err = CloudError(f"the cloud sent message content that is not text ({type(content).__name__}: "
                             f"{str(content)[:60]!r})", "malformed", opens_breaker=True, billed=True)
            err.usage = usage
            raise err
        return RawReply(text, usage, _first_top_logprobs(resp) if top_logprobs else None)


def _openai_usage(resp: Any) -> dict[str, Any] | None:
    """A chat completion's usage as reported (the client refuses impossible counts), or None if it has none."""
    u = getattr(resp, "usage", None)
    if u is None or getattr(u, "prompt_tokens", None) is None or getattr(u, "completion_tokens", None) is None:
        return None
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details else None
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens,
            "cached_tokens": 0 if cached is None else cached, "cache_write_tokens": 0}


def _part(part: Any, name: str) -> Any:
    return part.get(name) if isinstance(part, dict) else getattr(part, name, None)


def content_text(content: Any) -> str | None:
    """A message's content as text: a string, nothing (""), or a list of parts whose text parts are
    joined (other typed parts, e.g. reasoning, are skipped); None for any other shape."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        kind = _part(part, "type")
        if not isinstance(kind, str):
            return None
        if kind == "text":
            text = _part(part, "text")
            if not isinstance(text, str):
                return None
            texts.append(text)
    return "".join(texts)


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

        from .deadline import bounded_http_client

        check_transport(timeout_s, max_retries)
        self.model = model
        self.base_url = check_base_url(base_url or os.environ.get("ANTHROPIC_BASE_URL") or None, "ANTHROPIC_BASE_URL")
        self._anthropic = anthropic
        key = _key("ANTHROPIC_API_KEY", api_key, self.base_url)
        self.client = _sdk_client(lambda: anthropic.Anthropic(
            api_key=key,
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client or bounded_http_client(anthropic),  # timeout_s bounds the whole request
        ), self.base_url, "ANTHROPIC_BASE_URL")

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
                 top_logprobs: int = 0, prefill: bool = False) -> RawReply:
        """The Messages API gives no logprobs: ``top_logprobs`` is accepted and the reply has none.

        A final assistant message is a prefill: the reply continues it. The API refuses trailing
        whitespace there, so the prefix is sent without it (the reply is cut at the blank line anyway)."""
        an = self._anthropic
        messages, prefill = prefill_turns(messages, prefill)
        if prefill:
            messages = [*messages[:-1], {"role": "assistant", "content": messages[-1]["content"].rstrip()}]
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
            raise sdk_error(an, e, "ANTHROPIC_API_KEY", str(self.client.base_url)) from None
        usage = _anthropic_usage(resp)
        try:
            text = "".join(b.text for b in resp.content if getattr(b, "type", "") == "text")
        except (AttributeError, TypeError):
            err = CloudError("the cloud sent a response with no text content", "malformed", opens_breaker=True,
                             billed=True)
            err.usage = usage  # paid for: booked at its usage
            raise err from None
        return RawReply(text, usage)


def _anthropic_usage(resp: Any) -> dict[str, Any] | None:
    """A message's usage with the cache reads and writes inside the input; None if it has none."""
    u = getattr(resp, "usage", None)
    if u is None or getattr(u, "input_tokens", None) is None or getattr(u, "output_tokens", None) is None:
        return None
    # the parts are summed, so each is checked first (a string or a negative count is malformed)
    read = getattr(u, "cache_read_input_tokens", None)
    read = 0 if read is None else token_count("cache_read_input_tokens", read)
    write = getattr(u, "cache_creation_input_tokens", None)
    write = 0 if write is None else token_count("cache_creation_input_tokens", write)
    return {"input_tokens": token_count("input_tokens", u.input_tokens) + read + write,
            "output_tokens": u.output_tokens, "cached_tokens": read, "cache_write_tokens": write}


ADAPTERS = {"openai": OpenAIAdapter, "anthropic": AnthropicAdapter}
