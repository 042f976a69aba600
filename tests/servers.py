"""Loopback HTTP servers for tests: an Anthropic Messages relay to the real llama.cpp server, and a
scripted fault server (used only for fault injection)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server:
    def __init__(self, handler_cls):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.requests: list[dict] = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> dict:
        n = int(self.headers.get("content-length") or 0)
        data = json.loads(self.rfile.read(n) or b"{}")
        self.server.owner.requests.append({"path": self.path, "body": data, "headers": dict(self.headers)})
        return data

    def _send(self, code: int, payload, headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class AnthropicRelay(_Server):
    """Speaks the Anthropic Messages API and forwards to an OpenAI-compatible server (llama.cpp)."""

    def __init__(self, upstream: str, upstream_model: str = "local"):
        self.upstream = upstream
        self.upstream_model = upstream_model
        super().__init__(_RelayHandler)


class _RelayHandler(_Handler):
    def do_POST(self):
        req = self._body()
        owner = self.server.owner
        msgs = []
        for s in req.get("system") or []:
            msgs.append({"role": "system", "content": s["text"]})
        for m in req["messages"]:
            content = m["content"]
            text = content if isinstance(content, str) else "".join(b["text"] for b in content)
            msgs.append({"role": m["role"], "content": text})
        payload = {"model": owner.upstream_model, "messages": msgs, "max_tokens": req["max_tokens"], "temperature": 0}
        if req.get("stop_sequences"):
            payload["stop"] = req["stop_sequences"]
        up = urllib.request.Request(owner.upstream + "/chat/completions", json.dumps(payload).encode(),
                                    {"content-type": "application/json"})
        with urllib.request.urlopen(up, timeout=60) as r:
            data = json.loads(r.read())
        u = data["usage"]
        self._send(200, {
            "id": "msg_relay", "type": "message", "role": "assistant", "model": req["model"],
            "content": [{"type": "text", "text": data["choices"][0]["message"]["content"] or ""}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": u["prompt_tokens"], "output_tokens": u["completion_tokens"],
                      "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        })


def _completion(text: str, usage: bool = True) -> dict:
    out = {
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if usage:
        out["usage"] = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}
    return out


class FaultServer(_Server):
    """An OpenAI-shaped server that fails in one scripted way: mode is set per test."""

    def __init__(self, mode: str, hang_s: float = 5.0, replies: list[str] | None = None, usage: dict | None = None,
                 location: str = "ftp://127.0.0.1/v1/chat/completions"):
        self.mode = mode
        self.hang_s = hang_s
        self.replies = list(replies or [])  # mode "script": these texts in order (the last one repeats)
        self.rules: list[tuple[str, str]] = []  # mode "by-content": (substring of the last message, reply)
        # modes "usage" (OpenAI) and "messages" (Anthropic Messages API): a good reply whose usage object is
        # exactly this, whatever it holds (negative, huge, 1.5, "12", None); set it per test
        self.usage = usage
        self.location = location  # mode "redirect": a 307 to here
        self.trickle_s = 0.5  # mode "trickle": the headers, then one byte of the body this often
        self.content: object = None  # mode "content": the message's content is exactly this (a list, 7, True...)
        super().__init__(_FaultHandler)


class _FaultHandler(_Handler):
    def do_POST(self):
        owner = self.server.owner
        body = self._body()
        mode = owner.mode
        if mode == "no-prefill":  # a provider that refuses a final assistant message, as OpenAI's own API does
            if body.get("continue_final_message") or (body.get("messages") or [{}])[-1].get("role") == "assistant":
                return self._send(400, {"error": {"message": "Expected last role to be user but got assistant",
                                                  "type": "invalid_request_error", "param": "messages"}})
            mode = "script"
        if mode == "by-content":  # a deterministic cloud: the reply is chosen by what the last message holds
            last = str((body.get("messages") or [{}])[-1].get("content", ""))
            text = next((reply for needle, reply in owner.rules if needle in last), owner.replies[0])
            out = _completion(text)
            if owner.usage is not None:  # set per test: the usage every reply reports
                out["usage"] = owner.usage
            return self._send(200, out)
        if mode == "script":
            text = owner.replies.pop(0) if len(owner.replies) > 1 else owner.replies[0]
            return self._send(200, _completion(text))
        if mode == "hang":
            time.sleep(self.server.owner.hang_s)
            return self._send(200, _completion("too late"))
        if mode == "429":
            return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "0"})
        if mode == "429-bare":  # no Retry-After: the SDK's own backoff, then give up
            return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}})
        if mode in ("500", "502", "503"):
            return self._send(int(mode), {"error": {"message": "boom", "type": "server_error"}})
        if mode == "malformed":
            return self._send(200, b'{"id": "x", "choices": [ {"message": ')
        if mode == "truncated":
            body = json.dumps(_completion("A truncated answer.")).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body) + 500))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "no_usage":
            return self._send(200, _completion("Half of 2 is 1, so 2 + 1 = 3 bolts.", usage=False))
        if mode == "usage":
            out = _completion("2 + 1 = 3, so \\boxed{3}.")
            out["usage"] = owner.usage
            return self._send(200, out)
        if mode == "messages":
            return self._send(200, {
                "id": "msg_x", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "text", "text": "2 + 1 = 3, so \\boxed{3}."}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": owner.usage,
            })
        if mode == "trickle":  # a slow cloud that never lets a read time out
            return self._trickle(json.dumps(_completion("2 + 1 = 3, so \\boxed{3}.")).rjust(200).encode())
        if mode == "content":  # content as a list of parts, a number, an object...: set it per test
            out = _completion("")
            out["choices"][0]["message"]["content"] = owner.content
            return self._send(200, out)
        if mode == "bill-50x":  # every reply (a step, not an answer) claims 50x the max_tokens it was given
            out = _completion("Half of 2 is 1, so the white fiber is 1 bolt.")
            out["usage"] = {"prompt_tokens": 50, "completion_tokens": 50 * int(body.get("max_tokens") or 16)}
            return self._send(200, out)
        if mode == "redirect":
            return self._send(307, {"error": "moved"}, {"location": owner.location})
        if mode == "bad_json_reply":
            return self._send(200, _completion("I think step 2 is wrong but here is no JSON."))
        return self._send(200, _completion("2 + 1 = 3, so \\boxed{3}."))

    def _trickle(self, body: bytes) -> None:
        """Send the headers, then the body a byte at a time until it is done or the client goes away."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        try:
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(self.server.owner.trickle_s)
        except OSError:  # the client gave up: what the test wants
            pass
        self.close_connection = True


class ReadingCloud(_Server):
    """A deterministic cloud that reads as well as writes (``verify-repair`` against a scripted local model).

    A read (``/completions`` with ``echo``) gets one log-prob per token id, chosen by the text the ids spell
    (the scripted model's ids are UTF-8 bytes + 3): a token in a paragraph holding a ``marks`` key gets its
    value, a token after a paragraph holding ``after[0]`` gets ``after[1]``, any other token -0.01. A chat call
    gets ``reply``. ``hold_at("read" | "chat", n)``: the n-th such request from now on (1-based) waits until
    ``release`` is set, so a test can kill its client while the call holds an open reservation.
    """

    def __init__(self, reply: str, marks: dict[str, float] | None = None, after: tuple[str, float] | None = None):
        self.reply, self.marks, self.after = reply, dict(marks or {}), after
        self.hold: set[tuple[str, int]] = set()
        self.release = threading.Event()
        self.counts = {"read": 0, "chat": 0}
        self.status = 200  # a chat call answers this (500: a failing cloud)
        self._lock = threading.Lock()
        super().__init__(_ReadingHandler)

    def hold_at(self, kind: str, n: int) -> None:
        with self._lock:
            self.counts = {"read": 0, "chat": 0}
            self.hold = {(kind, n)}
            self.release.clear()

    def logprobs(self, ids: list[int]) -> list[float | None]:
        out: list[float | None] = []
        seen_after = False
        for para in bytes(max(t - 3, 0) for t in ids).split(b"\n\n"):
            text = para.decode("utf-8", errors="replace")
            lp = next((v for k, v in self.marks.items() if k in text), None)
            if lp is None:
                lp = self.after[1] if seen_after else -0.01
            out.extend([lp] * len(para) + [-0.01, -0.01])  # the paragraph, then its blank line
            seen_after = seen_after or (self.after is not None and self.after[0] in text)
        out = out[: len(ids)]
        out[0] = None
        return out


class _ReadingHandler(_Handler):
    def do_POST(self):
        owner = self.server.owner
        body = self._body()
        kind = "chat" if self.path.endswith("/chat/completions") else "read"
        with owner._lock:
            owner.counts[kind] += 1
            held = (kind, owner.counts[kind]) in owner.hold
        if held:
            owner.release.wait(120)
        try:
            if kind == "chat":
                if owner.status != 200:
                    return self._send(owner.status, {"error": {"message": "boom", "type": "server_error"}})
                return self._send(200, _completion(owner.reply))
            if not isinstance(body.get("prompt"), list):
                return self._send(400, {"error": {"message": "a read sends token ids", "type": "invalid_request_error"}})
            ids = [int(t) for t in body["prompt"]]
            lps = owner.logprobs(ids)
            self._send(200, {
                "id": "cmpl-read", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": {
                    "tokens": [chr(max(t - 3, 32)) for t in ids], "token_logprobs": lps,
                    "text_offset": list(range(len(ids))), "top_logprobs": None}}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)},
            })
        except OSError:  # the client was killed while the call was held: what the test wanted
            pass
