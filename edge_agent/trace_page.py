"""The trace pages of ``edge-agent serve``: ``GET /`` lists sessions, ``GET /sessions/{id}`` shows one.

Plain server-rendered HTML with inline CSS and no script. Problems and steps are untrusted text (a
user's problem, a model's output), so every string read from the database goes through ``esc``, and
the Content-Security-Policy forbids scripts besides.

A page reads the database on FastAPI's thread pool with its own short-lived connection (``open_db``),
not on the worker thread: the worker may be busy with a solve for minutes, and a trace page should
load meanwhile (WAL lets it read while the solve writes).

The token rule is the API's (``serve.check_auth``), plus ``?token=`` so a URL can be opened in a
browser. The token is then carried on the page's links, and ``RedactToken`` keeps it out of the
access log.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from html import escape
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

import store
from store.errors import SessionError, StoreError

from .report import session_report

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
TOKEN_QUERY = re.compile(r"([?&]token=)[^&\s#]*", re.IGNORECASE)
HEADERS = {  # no script, no outside resource, no referrer (a URL may carry the token), no caching
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:70rem;padding:0 1rem;color:#1d232b}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:1.6rem}a{color:#1a56a8}
code,pre,.id{font-family:ui-monospace,monospace;font-size:13px}
pre{white-space:pre-wrap;word-wrap:break-word;margin:.3rem 0}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #dde2e8;padding:.3rem .5rem;text-align:left;
vertical-align:top}td.num,th.num{text-align:right}
.meta{color:#555}.usage span{margin-right:1.2rem;white-space:nowrap}
.problem,.plan{background:#f5f6f8;border-radius:4px;padding:.6rem .8rem}.plan{border-left:4px solid #a2369a}
ol.steps{list-style:none;padding:0}
.step{border-left:5px solid #999;background:#fafbfc;margin:.55rem 0;padding:.45rem .75rem;border-radius:3px}
.step.local{border-color:#1f8fbf;background:#eef7fb}.step.cloud{border-color:#a2369a;background:#f8eef7}
.step.superseded{opacity:.6}.step.superseded pre.text{text-decoration:line-through;text-decoration-color:#b33}
.head{font-size:13px;color:#444}.head b{color:#1d232b}
.author{font-weight:600;text-transform:uppercase;font-size:11px;padding:0 .35rem;border-radius:3px;color:#fff}
.local .author{background:#1f8fbf}.cloud .author{background:#a2369a}
.badge{display:inline-block;font-size:12px;background:#ffe680;border:1px solid #d9b800;border-radius:10px;
padding:0 .55rem;margin:.15rem .3rem .15rem 0}.badge .cmp{font-family:ui-monospace,monospace}
.call{font-size:12px;color:#5a2456;margin:.1rem 0}
.rollback{margin:.7rem 0;padding:.4rem .75rem;border:1px dashed #b33;border-radius:3px;background:#fff6f5}
.rollback summary{cursor:pointer;color:#b33;font-weight:600}
details.draft summary{font-size:12px;color:#666;cursor:pointer}
.status-done{color:#17803d}.status-error,.status-budget{color:#b33}
"""


class PageError(Exception):
    """A page that cannot be shown: rendered as a small HTML page with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class RedactToken(logging.Filter):
    """Blank ``?token=…`` in access-log lines: a URL opened in a browser carries the secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(TOKEN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = TOKEN_QUERY.sub(r"\1***", record.msg)
        return True


def register(app: FastAPI, token: str | None, open_db: Callable[[], Any]) -> None:
    """Add ``GET /`` and ``GET /sessions/{session_id}`` to the app. ``open_db()`` opens a new connection."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactToken) for f in access.filters):
        access.addFilter(RedactToken())

    # plain ``def``: FastAPI runs these on its thread pool, so the blocking reads leave the event loop free
    @app.get("/", include_in_schema=False)
    def index(request: Request) -> HTMLResponse:
        limit = request.query_params.get("limit")
        return respond(request, token, open_db, lambda db, carry: index_page(db, page_limit(limit), carry))

    @app.get("/sessions/{session_id}", include_in_schema=False)
    def session(request: Request, session_id: str) -> HTMLResponse:
        return respond(request, token, open_db, lambda db, carry: session_page(db, session_id, carry))


def page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise PageError(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def page_auth(request: Request, token: str | None) -> str:
    """The query to carry on links ('' or '?token=…'); PageError 401 without the right token."""
    if token is None:
        return ""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
        return ""
    given = request.query_params.get("token")
    if given is not None and hmac.compare_digest(given.encode(), token.encode()):
        return "?token=" + quote(given, safe="")
    raise PageError(401, "this server needs its token: open the URL with ?token=TOKEN appended, or send "
                         "'Authorization: Bearer TOKEN' (the --token given to serve)",
                    {"WWW-Authenticate": "Bearer"})


def respond(request: Request, token: str | None, open_db: Callable[[], Any],
            build: Callable[[Any, str], str]) -> HTMLResponse:
    """Check the token, open the database, build the page; every failure becomes a one-line HTML page."""
    try:
        carry = page_auth(request, token)
        db = open_db()
        try:
            return HTMLResponse(build(db, carry), headers=HEADERS)
        finally:
            db.close()
    except PageError as e:
        return error_page(e.status, str(e), e.headers)
    except SessionError as e:
        return error_page(404, str(e))
    except store.DamagedRow as e:  # this session's page only: the others, and the list, still show
        return error_page(500, str(e))
    except StoreError as e:
        return error_page(503, str(e))


def error_page(status: int, message: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    body = f"<h1>{status}</h1><p class=\"error\">{esc(message)}</p><p><a href=\"/\">all sessions</a></p>"
    return HTMLResponse(layout(f"{status} · edge-agent", body), status_code=status, headers={**HEADERS, **(headers or {})})


# -- formatting ---------------------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def usd(nusd: float | None) -> str:
    return f"${(nusd or 0) / 1e9:.6f}"


def num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def layout(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


# -- GET / ----------------------------------------------------------------------------------------------------


def index_page(db: Any, limit: int, carry: str) -> str:
    """Sessions newest first: status, answer, local and cloud steps, cost, problem."""
    head = ("<tr><th>session</th><th>created</th><th>status</th><th>answer</th><th class=\"num\">local steps</th>"
            "<th class=\"num\">cloud steps</th><th class=\"num\">cost</th><th>policy</th><th>problem</th></tr>")
    rows = []
    for s in store.list_sessions(db, limit):
        link = f"<a class=\"id\" href=\"/sessions/{quote(s['id'])}{esc(carry)}\">{esc(s['id'])}</a>"
        problem = " ".join((s["problem"] or "").split())
        short = problem[:90] + ("…" if len(problem) > 90 else "")
        try:
            store.check_session(db, s["id"])
            u = session_report(db, s["id"], verbose=False)["usage"]
        except store.DamagedRow as e:  # marked, and the list goes on
            rows.append(f"<tr class=\"session damaged\" data-session=\"{esc(s['id'])}\"><td>{link}</td>"
                        f"<td>{esc((s['created_at'] or '')[:19])}</td><td class=\"status-error\">damaged</td>"
                        f"<td colspan=\"5\" class=\"error\">{esc(e)}</td><td>{esc(short)}</td></tr>")
            continue
        rows.append(
            f"<tr class=\"session\" data-session=\"{esc(s['id'])}\"><td>{link}</td>"
            f"<td>{esc(s['created_at'][:19])}</td><td class=\"status-{esc(s['status'])}\">{esc(s['status'])}</td>"
            f"<td>{esc(s['answer'] or '')}</td><td class=\"num local-steps\">{u['local_steps']}</td>"
            f"<td class=\"num cloud-steps\">{u['cloud_steps']}</td><td class=\"num cost\">${u['cost_usd']:.6f}</td>"
            f"<td>{esc(s['policy'])}</td><td>{esc(short)}</td></tr>")
    table = f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No sessions yet: run a solve.</p>"
    return layout("edge-agent sessions", f"<h1>Sessions</h1><p class=\"meta\">newest first, at most {limit} · "
                  f"<a class=\"app\" href=\"/app\">solve a problem in the app</a></p>{table}")


# -- GET /sessions/{id} ---------------------------------------------------------------------------------------


def session_page(db: Any, session_id: str, carry: str) -> str:
    sid = store.resolve_id(db, session_id)
    store.check_session(db, sid)  # a damaged row makes this an error page that names it
    report = session_report(db, sid, verbose=False)
    rows = store.load_steps(db, sid, include_superseded=True)
    rollbacks = store.rollbacks(db, sid)
    events, rest_events = attach(store.events(db, sid), rows)
    calls, rest_calls = attach(store.cloud_calls(db, sid), rows)
    plan = next((r for r in rows if r["kind"] == "plan" and not r["superseded_by"]), None)
    body = [
        f"<p><a href=\"/{esc(carry)}\">← all sessions</a></p>",
        f"<h1>Session <span class=\"id\">{esc(sid)}</span></h1>",
        summary_html(report),
        f"<h2>Problem</h2><pre class=\"problem\">{esc(report['problem'])}</pre>",
        f"<h2>Plan</h2><pre class=\"plan\">{esc(plan['text'])}</pre>" if plan else "",
        "<h2>Steps</h2><ol class=\"steps\">",
        *timeline(rows, rollbacks, events, calls),
        "</ol>",
    ]
    if rest_events or rest_calls:
        body.append("<h2>Not tied to a step</h2>" + badges(rest_events) + "".join(call_html(c) for c in rest_calls))
    return layout(f"session {sid} · edge-agent", "\n".join(body))


def summary_html(report: dict[str, Any]) -> str:
    u, cloud = report["usage"], report["cloud"]
    where = f"{cloud['provider']}:{cloud['model']}" if cloud["provider"] else "none"
    answer = report["answer"]
    return (
        f"<p class=\"meta\"><span class=\"status-{esc(report['status'])}\">{esc(report['status'])}</span> · "
        f"answer <b class=\"answer\">{esc(answer) if answer is not None else '–'}</b> · model {esc(report['model'])} · "
        f"policy {esc(report['policy'])} · cloud {esc(where)} · {esc((report['created_at'] or '')[:19])}</p>"
        f"<p class=\"usage\"><span>local steps {u['local_steps']}</span><span>cloud steps {u['cloud_steps']}</span>"
        f"<span>local tokens {u['local_tokens']}</span>"
        f"<span>cloud {u['cloud_input_tokens']} in / {u['cloud_output_tokens']} out</span>"
        f"<span class=\"total-cost\">cost ${u['cost_usd']:.6f}</span><span>wall {u['wall_s']:.1f}s</span></p>"
    )


def attach(items: Iterable[dict[str, Any]], rows: list[dict[str, Any]]
           ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Events or cloud calls by the id of the step they belong to, and those that belong to none.

    Ids sort by time. An item recorded at index i belongs to the step at i that was current then:
    the one superseded by the first rollback after the item, or else the active one.
    """
    at: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        at.setdefault(r["idx"], []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    rest = []
    for item in items:
        candidates = at.get(item["step_idx"], [])
        later = [r for r in candidates if r["superseded_by"] and r["superseded_by"] > item["id"]]
        if later:
            owner = min(later, key=lambda r: r["superseded_by"])
        else:
            owner = next((r for r in candidates if not r["superseded_by"]), None)
        if owner is None:
            rest.append(item)
        else:
            out.setdefault(owner["id"], []).append(item)
    return out, rest


def ordered(rows: list[dict[str, Any]], rollbacks: list[dict[str, Any]]
            ) -> Iterable[tuple[dict[str, Any], list[dict[str, Any]] | None]]:
    """Active steps in order as (step, None); each rollback as (rollback, the steps it superseded), just before
    the steps that replaced them. The trace page and the app page (``serve_app``) both lay a session out so."""
    gone: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["superseded_by"]:
            gone.setdefault(r["superseded_by"], []).append(r)
    active = sorted((r for r in rows if not r["superseded_by"]), key=lambda r: r["idx"])
    pending = list(rollbacks)
    for r in active:
        due = [rb for rb in pending if rb["to_idx"] <= r["idx"]]
        pending = [rb for rb in pending if rb["to_idx"] > r["idx"]]
        yield from ((rb, gone.get(rb["id"], [])) for rb in due)
        yield r, None
    yield from ((rb, gone.get(rb["id"], [])) for rb in pending)


def timeline(rows: list[dict[str, Any]], rollbacks: list[dict[str, Any]], events: dict[str, list[dict[str, Any]]],
             calls: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Active steps in order; each rollback, its superseded steps folded, just before the steps that replaced them."""
    return [step_html(item, events.get(item["id"], []), calls.get(item["id"], [])) if gone is None
            else rollback_html(item, gone, events, calls) for item, gone in ordered(rows, rollbacks)]


def rollback_html(rb: dict[str, Any], steps: list[dict[str, Any]], events: dict[str, list[dict[str, Any]]],
                  calls: dict[str, list[dict[str, Any]]]) -> str:
    inner = "".join(step_html(r, events.get(r["id"], []), calls.get(r["id"], [])) for r in steps)
    return (f"<li class=\"rollback\" data-to=\"{rb['to_idx']}\" data-rollback=\"{esc(rb['id'])}\"><details>"
            f"<summary>⟲ rollback to step {rb['to_idx']} ({esc(rb['reason'])}): {len(steps)} superseded "
            f"step{'s' if len(steps) != 1 else ''}, {esc((rb['created_at'] or '')[:19])}</summary>"
            f"<ol class=\"steps superseded\">{inner}</ol></details></li>")


def step_html(r: dict[str, Any], events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> str:
    author, kind = r["author"], r["kind"]
    classes = f"step {esc(author)} kind-{esc(kind)}" + (" superseded" if r["superseded_by"] else "")
    anchor = "" if r["superseded_by"] else f" id=\"step-{r['idx']}\""
    trigger = f" · ⚑ {esc(r['trigger'])}" if r["trigger"] else ""
    mark = " · <b>superseded</b>" if r["superseded_by"] else ""
    drafts = [e for e in events if e["trigger"] == "local_draft"]
    shown = [e for e in events if e["trigger"] != "local_draft"]
    return (
        f"<li class=\"{classes}\"{anchor} data-idx=\"{r['idx']}\" data-step=\"{esc(r['id'])}\" data-author=\"{esc(author)}\" data-kind=\"{esc(kind)}\">"
        f"<div class=\"head\"><span class=\"author\">{esc(author)}</span> <b>step {r['idx']}</b> · {esc(kind)}{trigger} · "
        f"{r['tokens']} tok · {r['seconds'] or 0:.2f}s{mark}</div>"
        f"{badges(shown)}<pre class=\"text\">{esc(r['text'])}</pre>"
        + "".join(draft_html(e) for e in drafts)
        + "".join(call_html(c) for c in calls)
        + "</li>"
    )


def badges(events: list[dict[str, Any]]) -> str:
    return "".join(badge_html(e) for e in events)


def badge_html(e: dict[str, Any]) -> str:
    """A trigger that fired: its name, score against threshold, and what the policy did."""
    score, threshold = e["score"], e["threshold"]
    if score is None:
        numbers = ""
    elif threshold is None:
        numbers = f" <span class=\"cmp\">{num(score)}</span>"
    else:
        numbers = f" <span class=\"cmp\">{num(score)} vs threshold {num(threshold)}</span>"
    data = "".join(f" data-{k}=\"{esc(v)}\"" for k, v in (("score", score), ("threshold", threshold)) if v is not None)
    return (f"<span class=\"badge\" data-trigger=\"{esc(e['trigger'])}\"{data}>⚑ {esc(e['trigger'])}{numbers} "
            f"→ {esc(e['action'])}</span>")


def draft_html(e: dict[str, Any]) -> str:
    """The local draft a cloud step replaced (kept in the event's detail)."""
    text = json.loads(e["detail"] or "{}").get("text")
    if text is None:
        return ""
    return f"<details class=\"draft\"><summary>replaced local draft</summary><pre>{esc(text)}</pre></details>"


def call_html(c: dict[str, Any]) -> str:
    error = f" · {esc(c['error'])}" if c.get("error") else ""
    return (f"<div class=\"call\" data-cost-nusd=\"{c.get('cost_nusd') or 0}\">☁ cloud call · {esc(c['purpose'])} · "
            f"{esc(c['provider'])}:{esc(c['model'])} · {c['input_tokens'] or 0} in / {c['output_tokens'] or 0} out"
            f" ({c['cached_tokens'] or 0} cached) · <span class=\"call-cost\">{usd(c.get('cost_nusd'))}</span> · "
            f"{c['latency_s'] or 0:.2f}s · {esc(c['status'])}{error}</div>")
