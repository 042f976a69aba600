"""A whole-request deadline under the official SDKs: ``[cloud] timeout_s`` bounds each HTTP request
from connect to last byte.

httpx's timeouts bound each socket operation, so a server that sends a byte every half second holds
a read timeout of 2 s open for as long as it likes. The SDKs' HTTP client here gets a transport whose
sockets read, write and connect with at most the time left until the request's deadline (its own
timeout, as the SDK set it, counted from the moment the request is sent); past it the next socket
operation raises the library's own timeout, which the SDK reports as ``APITimeoutError`` as for any
timeout. Nothing runs in the background and nothing is left reading.

Imported by the adapters when they build a client (httpx is not loaded for ``--help``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpcore2
import httpx2

_deadline: ContextVar[float | None] = ContextVar("edge_agent_cloud_deadline", default=None)


def _left(timeout: float | None, exc: type[Exception]) -> float | None:
    """The socket timeout to use now: the operation's own, cut to what is left of the request's deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise exc("the request's deadline passed (timeout_s bounds the whole request)")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore2.NetworkStream):
    """A connection whose every socket operation ends by the current request's deadline."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname,
                                                   _left(timeout, httpcore2.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class DeadlineBackend(httpcore2.NetworkBackend):
    """``inner`` (an httpcore network backend) with every connection bounded by the current deadline."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> Any:
        return DeadlineStream(self.inner.connect_tcp(host, port, _left(timeout, httpcore2.ConnectTimeout),
                                                     local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        return DeadlineStream(self.inner.connect_unix_socket(path, _left(timeout, httpcore2.ConnectTimeout),
                                                             socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _request_budget(request: Any) -> float | None:
    """The request's timeout as the SDK set it (its read timeout, else the largest one), for the whole request."""
    t = request.extensions.get("timeout") or {}
    if t.get("read") is not None:
        return float(t["read"])
    given = [float(v) for v in t.values() if v is not None]
    return max(given) if given else None


class _Body(httpx2.SyncByteStream):
    """A response body read under its request's deadline (the SDK reads it after the headers came)."""

    def __init__(self, inner: Any, deadline: float | None) -> None:
        self.inner, self.deadline = inner, deadline

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.inner)
        while True:
            token = _deadline.set(self.deadline)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            finally:
                _deadline.reset(token)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class DeadlineTransport(httpx2.HTTPTransport):
    """An ``httpx2`` transport whose every request is bounded, connect to last byte, by its own timeout."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pool = self._pool  # httpx builds its pool with no way to pass a network backend
        if not isinstance(pool, httpcore2.ConnectionPool) or not hasattr(pool, "_network_backend"):
            raise RuntimeError("this httpx2/httpcore2 cannot bound a request's total time: "
                               "pin a version whose ConnectionPool has _network_backend")
        pool._network_backend = DeadlineBackend(pool._network_backend)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        budget = _request_budget(request)
        deadline = None if budget is None else time.monotonic() + budget
        token = _deadline.set(deadline)
        try:
            resp = super().handle_request(request)
        finally:
            _deadline.reset(token)
        return httpx2.Response(status_code=resp.status_code, headers=resp.headers,
                               stream=_Body(resp.stream, deadline), extensions=resp.extensions)


def bounded_http_client(sdk: Any) -> Any:
    """The SDK's own default HTTP client (its limits, redirects and timeouts) on a deadline transport."""
    return sdk.DefaultHttpxClient(transport=DeadlineTransport())
