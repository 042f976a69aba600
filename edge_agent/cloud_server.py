"""The server behind ``edge-agent cloud-local``: llama-cpp-python's OpenAI-compatible server, plus prefill.

A chat request that ends with an assistant message and sets ``continue_final_message`` (as vLLM and
SGLang take it) asks the model to *continue* that message: the earlier turns are rendered with the
GGUF's chat template, the assistant turn is opened, the message follows verbatim, and the model goes
on from there. llama-cpp-python's own chat endpoint would close that message and start a new turn, so
such a request is answered through its completion endpoint with the prompt rendered here; every
other request passes through untouched. Run as ``python -m edge_agent.cloud_server`` with
llama-cpp-python's server options.

A **read** is a completion request with ``echo``, ``logprobs`` and ``max_tokens: 0``: the prompt (text, or
token ids as OpenAI's API accepts them) is scored by one prefill and nothing is generated. llama-cpp-python
answers logprobs only from a model built with ``logits_all=True``, which slows every decode, so reads go to a
second context on the same GGUF, built on the first read, that keeps its KV prefix between reads.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

Render = Callable[[list[dict[str, str]]], str]


def template_renderer(model_path: str) -> Render:
    """The GGUF's chat template as a function of the messages (the assistant turn left open)."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from .local import CHATML

    vocab = Llama(model_path=model_path, vocab_only=True, verbose=False)  # metadata and tokenizer, no weights
    text = vocab._model.token_get_text  # noqa: SLF001 - llama-cpp-python exposes token text only here
    bos = text(vocab.token_bos()) if vocab.token_bos() >= 0 else ""
    eos = text(vocab.token_eos()) if vocab.token_eos() >= 0 else ""
    fmt = Jinja2ChatFormatter(template=vocab.metadata.get("tokenizer.chat_template") or CHATML, eos_token=eos,
                              bos_token=bos)
    return lambda messages: fmt(messages=messages).prompt


def prefill_prompt(data: dict[str, Any], render: Render) -> str | None:
    """The prompt of a prefill request (earlier turns rendered, then the assistant's text); None if it is not one."""
    messages = data.get("messages")
    if not data.get("continue_final_message") or not isinstance(messages, list) or not messages:
        return None
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        return None
    return render(messages[:-1]) + last["content"]


def as_chat_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A ``text_completion`` answer reshaped as the ``chat.completion`` the client asked for."""
    choice = (completion.get("choices") or [{}])[0]
    return {
        "id": str(completion.get("id", "")).replace("cmpl-", "chatcmpl-", 1),
        "object": "chat.completion",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": choice.get("text", "")},
                     "finish_reason": choice.get("finish_reason"), "logprobs": None}],
        "usage": completion.get("usage"),
    }


class PrefillMiddleware:
    """ASGI middleware: prefill chat requests go to ``/v1/completions`` with the rendered prompt."""

    KEYS = ("model", "max_tokens", "temperature", "top_p", "stop", "seed")

    def __init__(self, app: Any, render: Render) -> None:
        self.app = app
        self.render = render

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        try:
            data = json.loads(body)
            prompt = prefill_prompt(data, self.render) if isinstance(data, dict) else None
        except ValueError:
            prompt = None
        if prompt is None:  # not a prefill: the chat endpoint as it is
            return await self.app(scope, _replay(body, receive), send)
        request = {k: data[k] for k in self.KEYS if data.get(k) is not None}
        request["prompt"] = prompt
        path = scope["path"][: -len("/chat/completions")] + "/completions"
        inner = {**scope, "path": path, "raw_path": path.encode()}
        status, headers, answer = await _capture(self.app, inner, _replay(json.dumps(request).encode(), receive))
        if status == 200:
            answer = json.dumps(as_chat_completion(json.loads(answer))).encode()
            headers = [(k, v) for k, v in headers if k.lower() not in (b"content-length",)]
            headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class Reader:
    """Prompt log-probs by one prefill: the context built with ``logits_all``, its KV prefix kept between reads."""

    def __init__(self, model_path: str, n_ctx: int, n_threads: int | None) -> None:
        self.model_path, self.n_ctx, self.n_threads = model_path, n_ctx, n_threads
        self._llm: Any = None
        self._ids: list[int] = []
        self.lock = threading.Lock()

    def _load(self) -> Any:
        if self._llm is None:
            from llama_cpp import Llama

            self._llm = Llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                              n_threads_batch=self.n_threads, logits_all=True, verbose=False)
        return self._llm

    def read(self, prompt: str | list[int]) -> dict[str, Any]:
        """``tokens``, ``token_logprobs`` (None for the first), ``text_offset`` and ``ids`` of ``prompt``."""
        import numpy as np

        with self.lock:
            llm = self._load()
            ids = list(prompt) if isinstance(prompt, list) else llm.tokenize(prompt.encode("utf-8"), add_bos=False,
                                                                             special=True)
            if not ids or len(ids) > self.n_ctx:
                raise ValueError(f"a read takes 1 to {self.n_ctx} tokens, got {len(ids)}")
            if any(not isinstance(t, int) or not 0 <= t < llm.n_vocab() for t in ids):
                raise ValueError("a token id is out of the model's vocabulary")
            keep = 0
            while keep < min(len(self._ids), len(ids)) and self._ids[keep] == ids[keep]:
                keep += 1
            keep = min(keep, len(ids) - 1)  # at least the last token is evaluated
            llm.n_tokens = keep
            llm.eval(ids[keep:])
            self._ids = list(ids)
            scores = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        top = scores.max(axis=1, keepdims=True)
        log_z = (top + np.log(np.exp(scores - top).sum(axis=1, keepdims=True)))[:, 0]
        picked = scores[np.arange(len(ids) - 1), ids[1:]]
        logprobs = [None, *(float(v) for v in picked - log_z)]
        pieces = [llm.detokenize([t]).decode("utf-8", errors="replace") for t in ids]
        offsets, at = [], 0
        for piece in pieces:
            offsets.append(at)
            at += len(piece)
        return {"ids": ids, "tokens": pieces, "token_logprobs": logprobs, "text_offset": offsets}


def is_read(data: Any) -> bool:
    """A completion request that only scores its prompt: echo, logprobs, and nothing to generate."""
    return (isinstance(data, dict) and data.get("echo") is True and data.get("logprobs") is not None
            and data.get("max_tokens") == 0 and isinstance(data.get("prompt"), (str, list)))


def read_completion(data: dict[str, Any], reader: Reader) -> dict[str, Any]:
    """A read answered in the shape of OpenAI's legacy completion with ``echo`` and ``logprobs``."""
    out = reader.read(data["prompt"])
    n = len(out["ids"])
    return {
        "id": f"cmpl-read-{int(time.time() * 1000)}", "object": "text_completion", "created": int(time.time()),
        "model": data.get("model"),
        "choices": [{"index": 0, "text": "".join(out["tokens"]), "finish_reason": "length",
                     "logprobs": {"tokens": out["tokens"], "token_logprobs": out["token_logprobs"],
                                  "top_logprobs": None, "text_offset": out["text_offset"]}}],
        "usage": {"prompt_tokens": n, "completion_tokens": 0, "total_tokens": n},
    }


class ReadMiddleware:
    """ASGI middleware: read requests on ``/v1/completions`` are scored by the ``Reader``; others pass."""

    def __init__(self, app: Any, reader: Reader) -> None:
        self.app = app
        self.reader = reader

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/completions") \
                or scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not is_read(data):
            return await self.app(scope, _replay(body, receive), send)
        import asyncio

        try:
            status, answer = 200, await asyncio.to_thread(read_completion, data, self.reader)
        except ValueError as e:
            status, answer = 400, {"error": {"message": str(e), "type": "invalid_request_error", "param": "prompt",
                                             "code": None}}
        payload = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Callable) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that yields ``body`` once, then listens to the real client (for its disconnect)."""
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _capture(app: Any, scope: dict[str, Any], receive: Callable) -> tuple[int, list, bytes]:
    out: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["headers"], bytes(out["body"])


def main(argv: list[str] | None = None) -> None:
    import argparse

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(description="An OpenAI-compatible server for a GGUF, with assistant prefill.")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    from . import runtime

    runtime.apply()  # the same compute mode as the edge: on some CPUs the weight repack crashes the first decode
    server = parse_model_from_args(ServerSettings, args)
    model = parse_model_from_args(ModelSettings, args)
    app = PrefillMiddleware(create_app(server_settings=server, model_settings=[model]), template_renderer(model.model))
    app = ReadMiddleware(app, Reader(model.model, model.n_ctx, model.n_threads_batch or model.n_threads))
    uvicorn.run(app, host=server.host, port=server.port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
