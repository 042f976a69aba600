"""The app page of ``edge-agent serve`` (GET /app): solve in a browser, watch the steps arrive, see what the cloud cost.

The page is three static files shipped in the package (``edge_agent/app/``: HTML, CSS, plain JS; no build
step, nothing from the network). It talks only to this server: the API every client uses (GET /v1/models,
POST /v1/chat/completions with ``stream``) and a few JSON endpoints under /app/api that read the same
database and ledger as the CLI:

- ``GET /app/api/state``: today's and this month's spend against the caps (what ``edge-agent cost`` says),
  the server's session cap, the cloud and its breaker, offline or not, and the unfinished sessions;
- ``GET /app/api/sessions/ID``: a session as the trace page lays it out (steps, badges, calls, rollbacks);
- ``POST /app/api/sessions/ID/resume`` and ``.../rollback`` (``{"to": STEP}``): continue a stopped or crashed
  session on this server's model, streamed exactly as a completion is.

The page's completions carry two extensions any client may send: ``max_cost`` (this session's cap, never
above the server's) and ``conversation_id`` (the turns of one conversation, tagged as ``chat`` tags them).
Stop needs no endpoint: the page drops the stream, which stops the solve at its next local token (as any
client that leaves does). The files hold no data, so they need no token; every /app/api request does, as
the API does (the page asks for it once and keeps it in the tab's sessionStorage). The browser guard
(``serve_guard``) runs before all of it. The Content-Security-Policy lets the page load script, style and
data from this origin only, and the page sets everything from a model, a problem or the cloud as text.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

import store
from store.errors import SessionError, StoreError

from .agent import Agent
from .chat import turn_reply
from .errors import InputError
from .prompts import messages
from .report import session_report, spend_summary
from .samples import is_parent
from .serve import (DEFAULT_MODEL, ApiError, Cancelled, ServeOptions, StepStream, Worker, check_auth, read_json,
                    stream_job)
from .trace_page import attach, ordered

log = logging.getLogger("edge_agent.serve")

FILES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
HEADERS = {  # this origin only, for everything; no inline script or style, no frames, no referrer
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
UNFINISHED = 5  # how many unfinished sessions the page offers to resume
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@functools.cache
def asset(name: str) -> bytes:
    """A file of the page, read from the installed package (``pip install -e .`` or a wheel alike)."""
    return resources.files(__package__).joinpath("app", name).read_bytes()


def register(app: FastAPI, worker: Worker, options: ServeOptions) -> None:
    """Add the page, its files and its endpoints (``options.open_db`` is set: the trace pages are there too)."""
    open_db = options.open_db
    assert open_db is not None

    @app.get("/app", include_in_schema=False)
    def page() -> Response:
        return Response(asset("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/app/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in FILES:
            raise ApiError(404, f"no file {name!r} here: the app is at /app", code="not_found")
        return Response(asset(name), media_type=FILES[name], headers=HEADERS)

    # plain ``def``: FastAPI runs them on its thread pool with their own connection (the worker may be busy)
    @app.get("/app/api/state")
    def state(request: Request) -> dict[str, Any]:
        check_auth(request, options.token)
        return reading(open_db, lambda db: app_state(db, options))

    @app.get("/app/api/sessions/{session_id}")
    def session(request: Request, session_id: str) -> dict[str, Any]:
        check_auth(request, options.token)
        return reading(open_db, lambda db: session_trace(db, session_id))

    @app.post("/app/api/sessions/{session_id}/resume")
    async def resume(request: Request, session_id: str) -> StreamingResponse:
        check_auth(request, options.token)
        await read_json(request, 4096)
        return await go_on(worker, options, session_id, None)

    @app.post("/app/api/sessions/{session_id}/rollback")
    async def rollback(request: Request, session_id: str) -> StreamingResponse:
        check_auth(request, options.token)
        return await go_on(worker, options, session_id, rollback_request(await read_json(request, 4096)))


def reading(open_db: Callable[[], Any], read: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """``read(db)`` on a short-lived connection; store errors as API errors."""
    try:
        db = open_db()
    except StoreError as e:
        raise ApiError(503, str(e), type_="server_error") from None
    try:
        return read(db)
    except SessionError as e:
        raise ApiError(404, str(e), code="session_not_found") from None
    except store.DamagedRow as e:
        raise ApiError(500, str(e), type_="server_error") from None
    except StoreError as e:
        raise ApiError(503, str(e), type_="server_error") from None
    finally:
        db.close()


def rollback_request(body: dict[str, Any]) -> tuple[int, float]:
    """``{"to": STEP, "temperature": T}``: the first step to supersede, and how to sample the new ones (0.7)."""
    to, temperature = body.get("to"), body.get("temperature", 0.7)
    if isinstance(to, bool) or not isinstance(to, int) or to < 0:
        raise ApiError(400, "'to' must be the index of a step (an integer >= 0)", param="to")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ApiError(400, "'temperature' must be a number between 0 and 2", param="temperature")
    return to, float(temperature)


# -- the app's request extensions (POST /v1/chat/completions) --------------------------------------------


def request_cap(body: dict[str, Any], server_cap: float | None) -> float | None:
    """``max_cost`` (extension): this session's cap in USD, never above the server's; None keeps the server's."""
    cap = body.get("max_cost")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or not math.isfinite(cap)
                            or cap < 0):
        raise ApiError(400, "'max_cost' must be a number of USD >= 0", param="max_cost")
    if cap is not None and server_cap is not None and cap > server_cap:
        raise ApiError(400, f"'max_cost' ${cap:g} is above this server's cap ${server_cap:g} (its --max-cost): "
                            "ask for at most that", param="max_cost")
    return None if cap is None else float(cap)


def conversation_meta(body: dict[str, Any]) -> dict[str, Any]:
    """``conversation_id`` (extension): the turns of one conversation are tagged as ``chat`` tags them."""
    cid = body.get("conversation_id")
    if cid is not None and not (isinstance(cid, str) and CONVERSATION_ID.fullmatch(cid)):
        raise ApiError(400, "'conversation_id' must be 1 to 64 letters, digits, '-' or '_'", param="conversation_id")
    turns = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return {} if cid is None else {"conversation_id": cid, "turn": max(len(turns) - 1, 0)}


# -- reading ----------------------------------------------------------------------------------------------


def app_state(db: Any, options: ServeOptions) -> dict[str, Any]:
    """The money and state line: spend against the caps (as ``cost``), the cloud and its breaker, unfinished work."""
    spend = spend_summary(db, options.budget, 1)
    spend.pop("rows")
    cloud = options.cloud
    unfinished = [{"id": s["id"], "problem": s["problem"], "created_at": s["created_at"], "steps": s["steps"]}
                  for s in store.list_sessions(db, 50) if s["status"] == "running"][:UNFINISHED]
    return {
        "policy": options.default_policy,
        "max_cost": options.max_cost,
        "token": options.token is not None,
        "offline": cloud is None,
        "offline_reason": "--offline" if options.offline else "no cloud configured" if cloud is None else None,
        "cloud": None if cloud is None else {"name": f"{cloud.provider}:{cloud.model}", **breaker_state(cloud.breaker)},
        "spend": spend,
        "unfinished": unfinished,
    }


def breaker_state(breaker: Any) -> dict[str, Any]:
    """closed (calls go out), open (paused after an error, for ``retry_in_s``) or half-open (the next call tries)."""
    if breaker.opened_at is None:
        return {"breaker": "closed", "reason": None, "retry_in_s": None, "trips": breaker.trips}
    left = breaker.cooldown_s - (breaker.clock() - breaker.opened_at)
    return {"breaker": "open" if left > 0 else "half-open", "reason": breaker.reason,
            "retry_in_s": round(max(left, 0.0), 1), "trips": breaker.trips}


def session_trace(db: Any, session_id: str) -> dict[str, Any]:
    """A session as its trace page shows it, as data: the report, and the timeline of steps and rollbacks."""
    sid = store.resolve_id(db, session_id)
    store.check_session(db, sid)
    report = session_report(db, sid, verbose=False)
    rows = store.load_steps(db, sid, include_superseded=True)
    events, loose_events = attach(store.events(db, sid), rows)
    calls, loose_calls = attach(store.cloud_calls(db, sid), rows)
    timeline = []
    for item, gone in ordered(rows, store.rollbacks(db, sid)):
        if gone is None:
            timeline.append(step_item(item, events, calls))
        else:
            timeline.append({"type": "rollback", "id": item["id"], "to": item["to_idx"], "reason": item["reason"],
                             "created_at": item["created_at"], "steps": [step_item(r, events, calls) for r in gone]})
    report.pop("events")
    return {**report, "reply": turn_reply(report), "timeline": timeline,
            "loose": {"events": [event_item(e) for e in loose_events], "calls": [call_item(c) for c in loose_calls]}}


def step_item(r: dict[str, Any], events: dict[str, list[dict[str, Any]]],
              calls: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    mine = events.get(r["id"], [])
    draft = next((store.event_detail(e).get("text") for e in mine if e["trigger"] == "local_draft"), None)
    return {"type": "step", "idx": r["idx"], "id": r["id"], "author": r["author"], "kind": r["kind"], "text": r["text"],
            "tokens": r["tokens"], "seconds": r["seconds"] or 0.0, "trigger": r["trigger"],
            "superseded": bool(r["superseded_by"]), "draft": draft,
            "events": [event_item(e) for e in mine if e["trigger"] != "local_draft"],
            "calls": [call_item(c) for c in calls.get(r["id"], [])]}


def event_item(e: dict[str, Any]) -> dict[str, Any]:
    """A trigger that fired: its score against its threshold, what the policy did, and why a call was refused."""
    detail = store.event_detail(e)
    return {"trigger": e["trigger"], "score": e["score"], "threshold": e["threshold"], "action": e["action"],
            "message": detail.get("message") or detail.get("reason")}


def call_item(c: dict[str, Any]) -> dict[str, Any]:
    return {"purpose": c["purpose"], "provider": c["provider"], "model": c["model"],
            "input_tokens": c["input_tokens"] or 0, "output_tokens": c["output_tokens"] or 0,
            "cached_tokens": c["cached_tokens"] or 0, "cost_usd": (c.get("cost_nusd") or 0) / 1e9,
            "latency_s": c["latency_s"] or 0.0, "status": c["status"], "error": c.get("error")}


# -- resume and roll back ---------------------------------------------------------------------------------


async def go_on(worker: Worker, options: ServeOptions, session_id: str,
                rollback: tuple[int, float] | None) -> StreamingResponse:
    """Continue a session (after a rollback to a step, if given), streamed as a completion is."""
    if not worker.admit():
        raise ApiError(429, "the local model is busy and the waiting line is full: retry later",
                       type_="rate_limit_exceeded", code="rate_limit_exceeded", headers={"Retry-After": "5"})
    return await stream_job(worker, lambda on_start, stream: continue_job(worker, options, session_id, rollback,
                                                                          on_start, stream),
                            DEFAULT_MODEL, int(time.time()))


def continue_job(worker: Worker, options: ServeOptions, session_id: str, rollback: tuple[int, float] | None,
                 started: Callable[[str], None], stream: StepStream) -> tuple[dict[str, Any], int]:
    """On the worker thread: hold the session, roll it back if asked, run it on; read back (report, prompt tokens)."""
    try:
        db = worker.make_agent(options.default_policy).db  # the worker's one connection
        sid = store.resolve_id(db, session_id)
        state = store.load_state(db, sid)
        if is_parent(db, sid):
            raise InputError(f"session {sid} is the vote of several samples: continue it with "
                             f"'edge-agent resume {sid}'")
        agent = session_agent(worker, options, state)
        with store.session_lease(db, sid, purpose="rollback" if rollback else "run"):
            if rollback is None:
                store.ensure_resumable(state)
                stream.next_index = len(state.steps)
            else:
                to, temperature = rollback
                store.check_rollback(state, to)
                store.rollback_to(db, sid, to, reason="user")
                store.update_settings(db, sid, {"temperature": temperature, "seed": secrets.randbelow(2**31)})
                stream.next_index = to
            started(sid)
            try:
                agent.run(sid, stream.callbacks())
            except Cancelled:
                log.info("session %s: stopped (client gone or shutdown); committed steps kept", sid)
        stream.flush()
        return session_report(db, sid), len(agent.model.prompt_tokens(messages(state.problem)))
    finally:
        worker.release()


def session_agent(worker: Worker, options: ServeOptions, state: store.SessionState) -> Agent:
    """The agent that continues ``state`` here: its policy on this server's model and cloud, under its own cap
    (never above the server's). A session another model or cloud wrote is for ``edge-agent resume``."""
    agent = worker.make_agent(state.policy)
    elsewhere = f"continue it with 'edge-agent resume {state.id}'"
    if str(agent.model.path) != state.model_path:
        raise InputError(f"session {state.id} was written by model {state.model}, and this server runs "
                         f"{agent.model.name}: {elsewhere}")
    cloud = options.cloud
    if state.cloud_provider and (cloud is None or (cloud.provider, cloud.model) != (state.cloud_provider,
                                                                                   state.cloud_model)):
        here = f"{cloud.provider}:{cloud.model}" if cloud is not None else "none"
        raise InputError(f"session {state.id} was started with cloud {state.cloud_provider}:{state.cloud_model}, "
                         f"and this server's is {here}: {elsewhere}")
    if not state.cloud_provider or state.settings.get("offline"):  # as the session began: on the local model alone
        agent.cloud, agent.offline = None, bool(state.settings.get("offline"))
    agent.read_setting = state.settings.get("read", getattr(agent, "read_setting", "auto"))  # type: ignore[attr-defined]
    caps = [c for c in (state.settings.get("max_cost"), options.max_cost) if c is not None and math.isfinite(c)]
    if caps:
        agent.caps = replace(agent.caps, session_usd=min(caps))
    return agent
