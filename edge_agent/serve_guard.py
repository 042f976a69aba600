"""``serve``'s guard against web pages: what only a browser on a hostile page would send is refused first.

Without ``--token`` anything that can reach the port can use the agent, and a browser can be made to reach
it: a page on another site may POST a "simple" request (``Content-Type: text/plain``, no preflight), and a
page whose DNS name is rebound to 127.0.0.1 becomes same-origin with the server and may read its answers.
Non-browser clients (the openai SDK, llm, curl) send neither Origin nor Sec-Fetch-Site and a JSON body, so
the three rules below cost them nothing:

1. Host must name this server: a loopback name (127.0.0.1, localhost, [::1]), the address it is bound to,
   or a name the operator gave with ``--allow-host``; on a wildcard bind (0.0.0.0, ::) any IP literal too,
   since a rebinding attack needs a DNS name. Else 403: this is the DNS-rebinding defence.
2. A cross-site request is refused with 403: an Origin other than the server's own, or ``Sec-Fetch-Site``
   ``cross-site`` / ``same-site`` (another port of 127.0.0.1 is same-site, not same-origin).
3. A POST body must be ``application/json``, else 415: the type a cross-site page cannot send unasked.

It is ASGI middleware, so it runs before routing and before any body is read, for the API and the trace
pages alike. Refusals use OpenAI's error shape, as the rest of ``serve`` does.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import InputError

log = logging.getLogger("edge_agent.serve")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
# a Host header: a name or an IPv4 literal, or a bracketed IPv6 literal, then an optional port; nothing else
HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::[0-9]{1,5})?", re.IGNORECASE)
NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.IGNORECASE)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def host_name(value: str) -> str | None:
    """The lower-case host of a Host header ('[::1]:8088' -> '::1'), or None if it is not one."""
    m = HOST.fullmatch(value)
    return (m["v6"] or m["name"]).lower() if m else None


def allowed_name(name: str) -> str:
    """An ``--allow-host`` value as stored: a DNS name or an IP address, without scheme or port."""
    bare = name.strip().lower()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not NAME.fullmatch(bare):
        raise InputError(f"--allow-host {name!r} is not a host name: pass the bare name, such as "
                         "'--allow-host mybox.lan' (no scheme, no port)")
    return bare


@dataclass(frozen=True)
class HostRule:
    """Which Host values the server answers to (rule 1)."""

    names: frozenset[str]
    any_ip: bool = False  # bound to every interface: an IP literal names this machine

    @classmethod
    def bound_to(cls, host: str, allow: Iterable[str] = ()) -> HostRule:
        bound = host.strip("[]").lower()
        wildcard = bound in WILDCARDS
        names = LOOPBACK_NAMES | {allowed_name(n) for n in allow} | (set() if wildcard else {bound})
        return cls(frozenset(names), wildcard)

    def allows(self, name: str) -> bool:
        if name in self.names:
            return True
        if not self.any_ip:
            return False
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names the origin whose Host header this request carries."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.path or parts.query or "@" in parts.netloc:
        return False  # 'null' (a sandboxed frame, a file:// page) and anything malformed
    netloc = parts.netloc.lower()
    default = ":80" if parts.scheme == "http" else ":443"
    return netloc.removesuffix(default) == host.lower().removesuffix(default)


def refusal(method: str, headers: Headers, hosts: HostRule) -> JSONResponse | None:
    """The error answer for a request a hostile page could have sent, or None to let it through."""
    host = headers.get("host", "")
    name = host_name(host)
    if name is None or not hosts.allows(name):
        hint = f"restart serve with --allow-host {name}" if name else "send a Host header naming this server"
        return error(403, f"Host {host!r} is not a name this server answers to (a guard against DNS rebinding): "
                          f"use http://127.0.0.1:PORT, or {hint}", "host_not_allowed")
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site in ("cross-site", "same-site") or (origin is not None and not same_origin(origin, host)):
        sent = f"Sec-Fetch-Site: {site}" if site in ("cross-site", "same-site") else f"Origin: {origin}"
        return error(403, f"cross-origin requests are refused ({sent}): a web page of another origin may not "
                          "use this server; call it from a program (the openai SDK, llm, curl)",
                     "cross_origin_request")
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    if method in BODY_METHODS and media != "application/json":
        return error(415, f"the body must be JSON: send 'Content-Type: application/json' (got {media or 'none'!r})",
                     "unsupported_media_type")
    return None


def error(status: int, message: str, code: str) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


class BrowserGuard:
    """ASGI middleware: answer ``refusal(...)`` instead of the app when there is one (HTTP only)."""

    def __init__(self, app: ASGIApp, hosts: HostRule) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = refusal(scope["method"], Headers(scope=scope), self.hosts)
            if refused is not None:
                log.warning("refused %s %s: %s", scope["method"], scope["path"], refused.body.decode()[:300])
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)
