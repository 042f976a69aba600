"""``edge-agent serve``: the agent behind an OpenAI-compatible HTTP API, so any OpenAI client can use it.

Model ids are policies: ``edge-agent`` runs the server's ``--policy``; ``local-only``, ``trim-thr``,
``trim-thr(tau=0.6)`` ... run that policy. The conversation becomes one problem (``chat.conversation_problem``)
and every request is a persisted session, named in the ``X-Edge-Agent-Session`` response header. What a
hostile web page could send (a foreign Host or Origin, a non-JSON body) is refused first (``serve_guard``).

There is one local model (one llama.cpp context) and sqlite3 connections belong to the thread that opened
them, so a single worker thread owns both: it is the lock that serializes requests. ``Worker.admit``
bounds how many may wait for it; beyond that the answer is 429, so a burst cannot pile up unbounded work.

Streaming sends one chunk per committed step. A local draft the policy replaces is not committed, so a
step is sent only once the next step starts (or the run ends); a chunk never carries text that was undone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from triggers import POLICIES, parse_spec

from .agent import Agent, Callbacks, Settings
from .chat import conversation_problem
from .errors import USER_ERRORS
from .factory import uses_cloud
from .prompts import messages
from .report import session_report
from .serve_guard import BrowserGuard, HostRule
from .serve_wire import StrictJSONResponse, chunk, completion, finish_reason, sse, summary, usage
from .trace_page import register as register_trace_pages
from .values import Step

log = logging.getLogger("edge_agent.serve")

DEFAULT_MODEL = "edge-agent"
LEARNED_VERSION = re.compile(r"latest|v[0-9]{1,6}")
MAX_BODY_BYTES = 1 << 20  # a problem is capped at 64 kB; a whole conversation gets some headroom
SESSION_HEADER = "X-Edge-Agent-Session"


@dataclass(frozen=True)
class ServeOptions:
    """What the app needs besides the agent factory; the CLI fills it from flags and config."""

    default_policy: str  # the policy label that model id ``edge-agent`` runs
    resolve_policy: Callable[[str], str]  # model id -> policy label (config defaults baked in); raises InputError
    settings: Settings  # per-request defaults; a request may lower max_steps and the step token cap
    has_cloud: bool = False
    token: str | None = None  # if set, every request needs ``Authorization: Bearer <token>``
    max_body_bytes: int = MAX_BODY_BYTES
    max_queue: int = 4  # requests that may wait while one runs; more are refused with 429
    session_meta: dict[str, Any] = field(default_factory=dict)  # stored in each session's settings (resume needs it)
    open_db: Callable[[], Any] | None = None  # a new DB connection for the trace pages (GET /, /sessions/ID)
    host: str = "127.0.0.1"  # the bound address: with ``allow_hosts``, the Host values served (serve_guard)
    allow_hosts: tuple[str, ...] = ()
    max_cost: float | None = None  # the server's session cap (USD, --max-cost or [budget]); a request may only lower it
    budget: dict[str, Any] = field(default_factory=dict)  # [budget] of the config: the day and month caps the app shows
    cloud: Any = None  # the cloud every agent shares (the app shows its name and its breaker), None without one
    offline: bool = False  # started with --offline


class ApiError(Exception):
    """An OpenAI-style error response: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.code, self.param, self.headers = status, type_, code, param, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}
        return StrictJSONResponse(body, status_code=self.status, headers=self.headers)


class Cancelled(Exception):
    """The client went away mid-stream: stop at the next token; committed steps stay (the session resumes)."""


class Worker:
    """The one thread that owns the local model and the DB connection, with a bounded waiting line."""

    def __init__(self, make_agent: Callable[[str], Agent], max_queue: int) -> None:
        self.make_agent = make_agent  # called on the worker thread only
        self.limit = max_queue + 1  # the running request plus those waiting
        self.busy = 0
        self.stopping = threading.Event()  # set at shutdown: a running solve stops at its next token
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edge-agent-model")

    def admit(self) -> bool:
        with self._lock:
            if self.busy >= self.limit:
                return False
            self.busy += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.busy -= 1

    def run(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the worker thread and wait (outside the event loop: warm-up before serving)."""
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self.stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- request parsing ------------------------------------------------------------------------------------


def check_auth(request: Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <the --token given to serve>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing more than ``limit`` bytes before reading them all."""
    too_big = ApiError(413, f"request body over {limit:,} bytes: shorten the conversation", code="request_too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_big
    except ClientDisconnect:  # nobody is left to answer: one line for the operator, no traceback
        log.info("client hung up after %d bytes of the body of %s %s; nothing was done", len(body),
                 request.method, request.url.path)
        raise ApiError(400, "the client hung up before sending the whole body") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise ApiError(400, "the body is not valid JSON (or nests too deeply): send a chat completion request "
                            "object") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate such as "\udcff" parses, but is not text
        raise ApiError(400, "the body holds a string that is not valid Unicode (a lone surrogate): send UTF-8 "
                            "text") from None
    return data


def _int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(400, f"'{key}' must be an integer", param=key)
    return v


def request_settings(body: dict[str, Any], base: Settings) -> Settings:
    """Per-request knobs. ``max_tokens`` caps each step's tokens; ``max_steps`` (extension) the step count.

    Both may only lower the server's limits: a client cannot buy more local time than the operator allowed.
    """
    changes: dict[str, Any] = {}
    cap = _int(body, "max_completion_tokens") or _int(body, "max_tokens")
    if cap is not None:
        if cap < 8:
            raise ApiError(400, "'max_tokens' must be at least 8 (it caps each step's tokens)", param="max_tokens")
        changes["max_step_tokens"] = min(cap, base.max_step_tokens)
    steps = _int(body, "max_steps")
    if steps is not None:
        if not 1 <= steps <= base.max_steps:
            raise ApiError(400, f"'max_steps' must be between 1 and {base.max_steps} (the server's --max-steps)",
                           param="max_steps")
        changes["max_steps"] = steps
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ApiError(400, "'temperature' must be a number between 0 and 2", param="temperature")
        changes["temperature"] = float(temperature)
    seed = _int(body, "seed")
    if seed is not None:
        if not 0 <= seed < 2**32:
            raise ApiError(400, "'seed' must be between 0 and 4294967295", param="seed")
        changes["seed"] = seed
    try:
        return replace(base, **changes)
    except USER_ERRORS as e:
        raise ApiError(400, str(e)) from None


def check_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "'n' must be 1: the agent writes one solution per request", param="n")
    for key in ("tools", "functions"):
        if body.get(key):
            raise ApiError(400, f"'{key}' are not supported: send the problem as a plain user message", param=key)
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")


# -- running on the worker thread ------------------------------------------------------------------------


class StepStream:
    """Agent callbacks -> one ``emit(step, rollback_to)`` per committed step, held until the next step starts."""

    def __init__(self, emit: Callable[[Step, int | None], None], *cancel: threading.Event) -> None:
        self.emit = emit
        self.cancel = cancel  # any of these set: stop at the next token (client gone, server stopping)
        self.pending: Step | None = None
        self.next_index = 0  # the index after the last step sent
        self.local = False  # inside a local draft: the only place a stop loses nothing paid for

    def _check(self) -> None:
        if any(e.is_set() for e in self.cancel):
            raise Cancelled()

    def step_start(self, index: int, author: str) -> None:
        # a cloud step's start comes after its (paid) call and just before its commit: never stop there
        self.local = author == "local"
        if self.local:
            self._check()
        if self.pending is not None and index > self.pending.index:
            self.flush()

    def text(self, piece: str) -> None:
        if self.local:
            self._check()

    def step_end(self, step: Step) -> None:
        # the same index again means the draft was replaced (or kept after a failed cloud call)
        if self.pending is not None and step.index > self.pending.index:
            self.flush()
        self.pending = step

    def flush(self) -> None:
        step, self.pending = self.pending, None
        if step is None:
            return
        # a step below one already sent replaces what was sent from there on (an intervention's rollback, a
        # review's repair or restore): the client is told, so it shows what the whole response would
        back = step.index if step.index < self.next_index else None
        self.next_index = step.index + 1
        self.emit(step, back)

    def callbacks(self) -> Callbacks:
        return Callbacks(self.step_start, self.text, self.step_end)


def solve_job(worker: Worker, policy: str, problem: str, settings: Settings, meta: dict[str, Any],
              started: Callable[[str], None], stream: StepStream | None) -> tuple[dict[str, Any], int]:
    """On the worker thread: start the session, run it, and read back (report, prompt tokens)."""
    stream = stream or StepStream(lambda step, back: None, worker.stopping)
    try:
        agent = worker.make_agent(policy)
        if meta.get("max_cost") is not None:  # this session's cap (a request's max_cost; stored, so resume keeps it)
            agent.caps = replace(agent.caps, session_usd=meta["max_cost"])
        sid = agent.start(problem, settings, meta)  # the session and its settings in one transaction
        started(sid)
        try:
            agent.run(sid, stream.callbacks())
        except Cancelled:
            log.info("session %s: stopped (client gone or shutdown); committed steps kept", sid)
        stream.flush()
        return session_report(agent.db, sid), len(agent.model.prompt_tokens(messages(problem)))
    finally:
        worker.release()


# -- the app ------------------------------------------------------------------------------------------------


def create_app(make_agent: Callable[[str], Agent], options: ServeOptions) -> FastAPI:
    """The ASGI app. ``make_agent(policy_label)`` is called on the worker thread and may share one model."""
    worker = Worker(make_agent, options.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()  # lets a running request finish its step and commit

    app = FastAPI(title="edge-agent", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan,
                  default_response_class=StrictJSONResponse)  # a dict an endpoint returns: strict JSON too
    app.state.worker = worker
    app.add_middleware(BrowserGuard, hosts=HostRule.bound_to(options.host, options.allow_hosts))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        check_auth(request, options.token)
        return model_list(options)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        check_auth(request, options.token)
        return await complete(worker, options, await read_json(request, options.max_body_bytes))

    if options.open_db is not None:
        register_trace_pages(app, options.token, options.open_db)
        from .serve_app import register as register_app  # it builds on this module: imported once both exist

        register_app(app, worker, options)
    return app


def policy_for(model: Any, options: ServeOptions) -> str:
    """The policy label a request's model id names: 'edge-agent' is the server's; any other is a policy spec."""
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' is required: use 'edge-agent' or a policy name (GET /v1/models)",
                       param="model")
    if model == DEFAULT_MODEL:
        return options.default_policy
    unknown = ApiError(404, f"unknown model {model!r}: use 'edge-agent' or one of {', '.join(POLICIES)}",
                       param="model", code="model_not_found")
    try:
        name, params = parse_spec(model)
    except USER_ERRORS as e:
        raise ApiError(400, str(e), param="model") from None
    if name not in POLICIES:
        raise unknown
    # a client names a policy, never a file: a learned model is one the operator saved (latest or vN)
    if "model" in params and not LEARNED_VERSION.fullmatch(params["model"]):
        raise unknown
    try:
        label = options.resolve_policy(model)
    except USER_ERRORS as e:
        raise ApiError(400, str(e), param="model") from None
    if uses_cloud(label) and not options.has_cloud:
        raise ApiError(400, f"model {model!r} needs a cloud and this server has none: restart serve with "
                            "--cloud PROVIDER:MODEL, or use 'local-only'", param="model")
    return label


def model_list(options: ServeOptions) -> dict[str, Any]:
    """GET /v1/models: 'edge-agent', then every policy by name, each saying whether it can run here."""
    rows = [(DEFAULT_MODEL, options.default_policy)] + [(name, name) for name in POLICIES]
    data = []
    for model_id, policy in rows:
        cloud = POLICIES[parse_spec(policy)[0]].uses_cloud  # the class says; building one may need files
        data.append({"id": model_id, "object": "model", "created": 0, "owned_by": "edge-agent",
                     "edge_agent": {"policy": policy, "uses_cloud": cloud,
                                    "available": options.has_cloud or not cloud}})
    return {"object": "list", "data": data}


async def complete(worker: Worker, options: ServeOptions, body: dict[str, Any]) -> Any:
    """POST /v1/chat/completions: check the request, wait for the worker, answer whole or as a stream."""
    check_unsupported(body)
    model = body.get("model")
    policy = policy_for(model, options)
    settings = request_settings(body, options.settings)
    try:
        problem = conversation_problem(body.get("messages"))
    except USER_ERRORS as e:
        raise ApiError(400, str(e), param="messages") from None
    from .serve_app import conversation_meta, request_cap  # the app's extensions; that module builds on this one

    cap = request_cap(body, options.max_cost)
    meta = {**options.session_meta, "source": "serve", "model_id": model, **conversation_meta(body),
            **({"max_cost": cap} if cap is not None else {})}
    if not worker.admit():  # the last check: from here on the job releases what this takes
        raise ApiError(429, f"the local model is busy and {worker.limit - 1} request(s) already wait: retry "
                            "later, or start serve with a larger --queue", type_="rate_limit_exceeded",
                       code="rate_limit_exceeded", headers={"Retry-After": "5"})
    created = int(time.time())
    if body.get("stream"):
        return await _stream(worker, policy, problem, settings, meta, model, created)
    sid_box: list[str] = []
    try:
        report, prompt_tokens = await worker.run(solve_job, worker, policy, problem, settings, meta,
                                                 sid_box.append, None)
    except USER_ERRORS as e:
        status = 500 if sid_box else 400  # before the session existed it is the request's fault
        raise ApiError(status, str(e), type_="server_error" if sid_box else "invalid_request_error") from None
    return StrictJSONResponse(completion(report, prompt_tokens, model, created),
                        headers={SESSION_HEADER: report["session_id"]})


async def _stream(worker: Worker, policy: str, problem: str, settings: Settings, meta: dict[str, Any],
                  model: str, created: int) -> StreamingResponse:
    return await stream_job(worker, lambda on_start, stream: solve_job(worker, policy, problem, settings, meta,
                                                                       on_start, stream), model, created)


async def stream_job(worker: Worker, run: Callable[[Callable[[str], None], StepStream], tuple[dict[str, Any], int]],
                     model: str, created: int) -> StreamingResponse:
    """Start ``run(on_start, stream)`` on the worker (a solve, or the app's resume), wait for its session id (so
    it can go in the header), then relay steps as SSE. The caller has admitted it; the run releases the worker."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    started: asyncio.Future[str] = loop.create_future()
    cancel = threading.Event()

    def put(kind: str, payload: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

    def on_start(sid: str) -> None:
        loop.call_soon_threadsafe(lambda: started.done() or started.set_result(sid))

    stream = StepStream(lambda step, back: put("step", (step, back)), cancel, worker.stopping)
    job = worker.run(run, on_start, stream)
    job.add_done_callback(lambda f: put("done", f))
    await asyncio.wait([started, job], return_when=asyncio.FIRST_COMPLETED)
    if not started.done():  # the job ended before the session existed: a bad problem, or a load failure
        e = job.exception()
        if isinstance(e, USER_ERRORS):
            raise ApiError(400, str(e))
        log.error("the agent failed before starting", exc_info=e)
        raise ApiError(500, "the agent failed before starting: see the server log", type_="server_error")
    sid = started.result()

    async def events() -> AsyncIterator[str]:
        try:
            yield sse(chunk(sid, model, created, {"role": "assistant", "content": ""}))
            while True:
                kind, payload = await queue.get()
                if kind == "step":
                    step, back = payload
                    ext = {"author": step.author, "kind": step.kind, "trigger": step.trigger, "step": step.index}
                    if back is not None:
                        ext["rollback_to"] = back
                    sep = "" if step.index == 0 or back is not None else "\n\n"
                    yield sse(chunk(sid, model, created, {"content": sep + step.text}, edge_agent=ext))
                    continue
                err = payload.exception()
                if err is not None:
                    log.error("session %s failed: %s", sid, err, exc_info=err)
                    msg = str(err) if isinstance(err, USER_ERRORS) else "the agent failed: see the server log"
                    yield sse({"error": {"message": msg, "type": "server_error", "param": None, "code": None}})
                else:
                    report, prompt_tokens = payload.result()
                    yield sse(chunk(sid, model, created, {}, finish_reason(report["status"]),
                                    usage=usage(report, prompt_tokens), edge_agent=summary(report)))
                break
            yield sse("[DONE]")
        finally:
            cancel.set()  # harmless after the end; if the client left early the worker stops at the next token

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={SESSION_HEADER: sid, "Cache-Control": "no-cache"})


def run_server(app: FastAPI, host: str, port: int, on_ready: Callable[[], None] | None = None) -> None:
    """uvicorn, except that Ctrl-C also stops a running solve at its next token (its steps are committed):
    uvicorn waits for open requests before shutdown, and a solve can take minutes. ``on_ready`` runs on its own
    thread once the socket listens (``serve --open`` opens the browser then)."""
    worker: Worker = app.state.worker

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            worker.stopping.set()
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if on_ready is not None and self.started:
                threading.Thread(target=on_ready, name="edge-agent-open", daemon=True).start()

    Server(uvicorn.Config(app, host=host, port=port, log_level="info")).run()
