// The app page of `edge-agent serve` (edge_agent/serve_app.py says what the server offers it).
// Plain JS, no build step, no library: every request goes to this server. Everything that comes from a
// model, a problem or the cloud is set with textContent (el() below), never parsed as HTML.
"use strict";

const TOKEN_KEY = "edge-agent-token";
const $ = (id) => document.getElementById(id);
const view = { running: null, state: null, conversation: newConversation() };

class AuthNeeded extends Error {}

// -- helpers ------------------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);  // strings: text
  return node;
}

const usd = (x) => "$" + Number(x || 0).toFixed(6);
const usdCap = (x) => (x === null || x === undefined ? "no cap" : "$" + Number(x).toFixed(2));
const num = (x) => (x === null || x === undefined ? "–" : String(Number(Number(x).toPrecision(3))));

function newConversation() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return { id: "app-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""), turns: [] };
}

function notice(message) {
  const box = $("notice");
  box.textContent = message ? String(message).split("\n")[0] : "";
  box.hidden = !message;
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function errorOf(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || `HTTP ${resp.status}`;
  } catch (e) {
    return `HTTP ${resp.status}`;
  }
}

// A request to this server; 401 asks for the token once, then the caller may try again.
async function request(path, body, signal) {
  const init = { method: body === undefined ? "GET" : "POST", headers: headers(body !== undefined), signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken();
    throw new AuthNeeded("this server needs its token: enter it above");
  }
  return resp;
}

async function getJson(path) {
  const resp = await request(path);
  if (!resp.ok) throw new Error(await errorOf(resp));
  return resp.json();
}

function askToken() {
  $("auth").hidden = false;
  $("token").focus();
}

// -- the money and state line ----------------------------------------------------------------------------

async function refreshState() {
  const s = await getJson("/app/api/state");
  view.state = s;
  const sp = s.spend, caps = sp.caps_usd;
  const line = (id, label, spent, cap) => {
    const node = $(id);
    node.textContent = `${label} ${usd(spent)} ` + (cap === null || cap === undefined ? "(no cap)" : `of ${usdCap(cap)}`);
    node.classList.toggle("over", cap !== null && cap !== undefined && spent >= cap);
    node.dataset.spent = spent;
  };
  line("spend-today", "today", sp.today_usd, caps.day);
  line("spend-month", "this month", sp.month_usd, caps.month);
  $("session-cap").textContent = `session cap: ${s.max_cost === null ? "none" : usdCap(s.max_cost)}`;
  $("cap").placeholder = s.max_cost === null ? "no cap" : `≤ ${s.max_cost}`;
  const cloud = $("cloud-state");
  if (s.cloud === null) {
    cloud.textContent = `offline: ${s.offline_reason}, every step is local`;
    cloud.className = "cloud-off";
  } else if (s.cloud.breaker === "open") {
    cloud.textContent = `cloud ${s.cloud.name}: paused after an error (${s.cloud.reason}), retry in ${s.cloud.retry_in_s}s`;
    cloud.className = "cloud-open";
  } else {
    cloud.textContent = `cloud ${s.cloud.name}: ` + (s.cloud.breaker === "closed" ? "reachable" : "trying again");
    cloud.className = "cloud-ok";
  }
  cloud.dataset.breaker = s.cloud ? s.cloud.breaker : "offline";
  drawUnfinished(s.unfinished);
}

function drawUnfinished(rows) {
  const shown = rows.filter((r) => !turnOf(r.id));
  $("unfinished").hidden = shown.length === 0;
  $("unfinished-list").replaceChildren(...shown.map((r) => {
    const resume = el("button", { type: "button", class: "resume", "data-session": r.id }, "Resume");
    resume.addEventListener("click", () => openSession(r.id, true));
    const problem = r.problem.length > 90 ? r.problem.slice(0, 90) + "…" : r.problem;
    return el("li", {}, el("span", { class: "id" }, r.id), ` · ${r.steps} steps · `, problem, " ", resume);
  }));
}

async function loadModels() {
  const list = await getJson("/v1/models");
  const select = $("policy");
  select.replaceChildren(...list.data.map((m) => el("option", {
    value: m.id, disabled: !m.edge_agent.available,
    textContent: m.id === "edge-agent" ? `edge-agent (${m.edge_agent.policy})` : m.id + (m.edge_agent.available ? "" : " (needs a cloud)"),
  })));
  select.value = "edge-agent";
}

// -- a turn: the problem, its steps, its answer and usage ---------------------------------------------------

function turnOf(sid) {
  return view.conversation.turns.find((t) => t.sid === sid);
}

function newTurn(problem, sid) {
  const turn = { sid, problem, live: [], seq: 0, shown: 0, trace: null };
  turn.steps = el("ol", { class: "steps" });
  turn.result = el("div", { class: "result" });
  turn.node = el("section", { class: "turn", "data-session": sid },
    el("div", { class: "you" }, el("span", { class: "who" }, "you"), el("pre", { class: "problem" }, problem)),
    turn.steps, turn.result);
  $("conversation").append(turn.node);
  turn.node.scrollIntoView({ block: "nearest" });
  view.conversation.turns.push(turn);
  return turn;
}

function stepNode(s) {
  const head = el("div", { class: "head" }, el("span", { class: "author" }, s.author), " ", el("b", {}, `step ${s.idx}`),
    ` · ${s.kind}`, s.trigger ? ` · ⚑ ${s.trigger}` : "",
    s.tokens !== undefined ? ` · ${s.tokens} tok · ${Number(s.seconds).toFixed(2)}s` : "",
    s.superseded ? " · superseded" : "");
  if (!s.superseded) {
    const back = el("button", { type: "button", class: "back", title: "Roll back to this step and continue from it",
      "data-idx": s.idx }, "↺ from here");
    back.disabled = view.running !== null;
    head.append(back);
  }
  const node = el("li", { class: `step ${s.author === "cloud" ? "cloud" : "local"}${s.superseded ? " superseded" : ""}`,
    "data-idx": s.idx, "data-author": s.author, "data-kind": s.kind }, head);
  for (const e of s.events || []) node.append(badge(e));
  node.append(el("pre", { class: "text" }, s.text));
  if (s.draft) node.append(el("details", { class: "draft" }, el("summary", {}, "replaced local draft"), el("pre", {}, s.draft)));
  for (const c of s.calls || []) node.append(callNode(c));
  return node;
}

function badge(e) {
  const refused = e.trigger === "budget_denied" || e.trigger === "cloud_unavailable" || e.trigger === "cloud_error";
  const cmp = e.score === null ? "" : e.threshold === null ? num(e.score) : `${num(e.score)} vs threshold ${num(e.threshold)}`;
  const node = el("span", { class: refused ? "badge refused" : "badge", "data-trigger": e.trigger,
    "data-score": e.score, "data-threshold": e.threshold, "data-action": e.action },
    refused ? `⛔ refused: ${e.trigger} ` : `⚑ ${e.trigger} `, cmp ? el("span", { class: "cmp" }, cmp) : null,
    ` → ${e.action}`);
  if (refused && e.message) node.append(` (${e.message})`);
  return node;
}

function callNode(c) {
  return el("div", { class: "call", "data-cost": c.cost_usd, "data-status": c.status },
    `☁ cloud call · ${c.purpose} · ${c.provider}:${c.model} · ${c.input_tokens} in / ${c.output_tokens} out` +
    ` (${c.cached_tokens} cached) · ${usd(c.cost_usd)} · ${Number(c.latency_s).toFixed(2)}s · ${c.status}` +
    (c.error ? ` · ${c.error}` : ""));
}

function rollbackNode(to, reason, steps) {
  const n = steps.length;
  return el("li", { class: "rollback", "data-to": to }, el("details", {},
    el("summary", {}, `⟲ rollback to step ${to} (${reason}): ${n} superseded step${n === 1 ? "" : "s"}`),
    el("ol", { class: "steps superseded" }, ...steps)));
}

// Fold the shown steps from index `to` on under a rollback, as the trace page does.
function fold(turn, to, reason) {
  const gone = [...turn.steps.children].filter((li) => li.classList.contains("step") && Number(li.dataset.idx) >= to);
  if (gone.length === 0) return;
  for (const li of gone) {
    li.classList.add("superseded");
    li.querySelectorAll("button.back").forEach((b) => b.remove());
  }
  turn.steps.append(rollbackNode(to, reason, gone));
}

function activeStep(turn, idx) {
  return [...turn.steps.children].find((li) => li.classList.contains("step") && Number(li.dataset.idx) === idx);
}

// A step as the stream sent it: shown at once; badges and calls come with the next read of the session.
function liveStep(turn, ext, content) {
  const text = content.replace(/^\n\n/, "");
  if (ext.rollback_to !== undefined && ext.rollback_to !== null) fold(turn, ext.rollback_to, ext.trigger || "intervention");
  const shown = activeStep(turn, ext.step);
  if (shown) {
    if (shown.querySelector("pre.text").textContent === text) return;
    fold(turn, ext.step, ext.trigger || "rollback");
  }
  const s = { idx: ext.step, author: ext.author, kind: ext.kind, trigger: ext.trigger, text };
  turn.live.push(s);
  const node = stepNode(s);
  turn.steps.append(node);
  node.scrollIntoView({ block: "nearest" });
  refreshSoon(turn);
}

// Redraw a turn from the database: the timeline (rollbacks folded), then the steps the stream sent since.
function drawTrace(turn, t) {
  turn.trace = t;
  const items = t.timeline.map((item) => item.type === "step" ? stepNode(item)
    : rollbackNode(item.to, item.reason, item.steps.map(stepNode)));
  turn.steps.replaceChildren(...items);
  const last = Math.max(-1, ...t.timeline.filter((i) => i.type === "step").map((i) => i.idx));
  for (const s of turn.live) if (s.idx > last && !activeStep(turn, s.idx)) turn.steps.append(stepNode(s));
  for (const e of t.loose.events) turn.steps.append(el("li", { class: "loose" }, badge(e)));
  drawResult(turn);
}

function drawResult(turn) {
  const t = turn.trace, running = view.running && view.running.turn === turn;
  if (!t) {
    turn.result.replaceChildren(el("p", {}, el("span", { class: "status status-running" }, "running…")));
    return;
  }
  const u = t.usage;
  const item = (key, label, value) => el("span", { "data-usage": key, "data-value": u[key] }, `${label} ${value}`);
  const token = sessionStorage.getItem(TOKEN_KEY);
  const link = el("a", { class: "trace", href: `/sessions/${encodeURIComponent(t.session_id)}` +
    (token ? `?token=${encodeURIComponent(token)}` : "") }, `trace of session ${t.session_id}`);
  const status = running ? "running…" : t.status === "running" ? "stopped" : t.status;
  const parts = [
    el("p", {}, el("span", { class: `status status-${t.status}` }, status), " · ",
      t.answer !== null ? el("span", {}, "Answer: ", el("b", { class: "answer" }, t.answer)) : "no answer yet", " · ", link),
    el("p", { class: "usage" }, item("local_steps", "local steps", u.local_steps), item("cloud_steps", "cloud steps", u.cloud_steps),
      item("local_tokens", "local tokens", u.local_tokens),
      el("span", { "data-usage": "cloud_tokens", "data-value": `${u.cloud_input_tokens}/${u.cloud_output_tokens}` },
        `cloud ${u.cloud_input_tokens} in / ${u.cloud_output_tokens} out`),
      item("cost_usd", "cost", usd(u.cost_usd)), item("wall_s", "wall", `${Number(u.wall_s).toFixed(1)}s`)),
  ];
  if (!running && t.status === "running") {
    const resume = el("button", { type: "button", class: "resume" }, "Resume");
    resume.disabled = view.running !== null;
    resume.addEventListener("click", () => resumeTurn(turn));
    parts.push(el("p", {}, "Stopped: its committed steps are kept. ", resume));
  }
  turn.result.replaceChildren(...parts);
}

async function refresh(turn) {
  const seq = ++turn.seq;
  const t = await getJson(`/app/api/sessions/${encodeURIComponent(turn.sid)}`);
  if (seq > turn.shown) {  // an older answer that arrives late never overwrites a newer one
    turn.shown = seq;
    drawTrace(turn, t);
  }
}

function refreshSoon(turn) {
  if (turn.pending) return;
  turn.pending = setTimeout(() => {
    turn.pending = null;
    refresh(turn).catch((e) => notice(e.message));
    refreshState().catch(() => {});
  }, 150);
}

// -- running: send, stream, stop, resume, roll back -----------------------------------------------------------

function setRunning(run) {
  view.running = run;
  $("send").disabled = run !== null;
  $("stop").disabled = run === null;
  document.querySelectorAll("button.back, button.resume").forEach((b) => { b.disabled = run !== null; });
}

// Read the SSE body: one chunk per committed step, then the usage; then the session as stored.
async function follow(turn, resp, controller) {
  setRunning({ turn, controller });
  turn.live = [];
  drawResult(turn);
  const reader = resp.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handle(turn, buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") notice(`the stream broke off: ${e.message}`);
  } finally {
    setRunning(null);
    turn.live = [];
    await refresh(turn).catch((e) => notice(e.message));
    turn.result.scrollIntoView({ block: "nearest" });
    refreshState().catch(() => {});
    // stopped: a paid cloud step may still commit after the stream is dropped, so look once more
    if (controller.signal.aborted) setTimeout(() => refresh(turn).catch(() => {}), 1000);
  }
}

function handle(turn, event) {
  for (const line of event.split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const chunk = JSON.parse(line.slice(6));
    if (chunk.error) {
      notice(chunk.error.message);
      continue;
    }
    const ext = chunk.edge_agent;
    if (ext && ext.author !== undefined) liveStep(turn, ext, chunk.choices[0].delta.content || "");
  }
}

// POST and follow the stream; a refusal (a bad cap, a busy server) is one line, and nothing starts.
async function start(path, body, onStarted) {
  const controller = new AbortController();
  let resp;
  try {
    resp = await request(path, body, controller.signal);
  } catch (e) {
    notice(e.message);
    return false;
  }
  if (!resp.ok) {
    notice(await errorOf(resp));
    return false;
  }
  notice("");
  const turn = onStarted(resp.headers.get("X-Edge-Agent-Session"));
  await follow(turn, resp, controller);
  return true;
}

function messagesFor(text) {
  const out = [];
  for (const t of view.conversation.turns) {
    if (t.trace && t.trace.status !== "running") out.push({ role: "user", content: t.problem }, { role: "assistant", content: t.trace.reply });
  }
  out.push({ role: "user", content: text });
  return out;
}

async function send() {
  const box = $("problem"), text = box.value.trim();
  if (!text || view.running) return;
  const body = { model: $("policy").value || "edge-agent", stream: true, messages: messagesFor(text),
    conversation_id: view.conversation.id };
  const cap = $("cap").value.trim();
  if (cap !== "") {
    const value = Number(cap);
    if (!Number.isFinite(value) || value < 0) {
      notice("the cap must be a number of USD >= 0, such as 0.01 (or empty for the server's)");
      return;
    }
    body.max_cost = value;
  }
  await start("/v1/chat/completions", body, (sid) => {
    box.value = "";
    return newTurn(text, sid);
  });
  box.focus();
}

function stop() {
  if (view.running) view.running.controller.abort();  // the server stops at the next local token
}

async function resumeTurn(turn) {
  if (view.running) return;
  await start(`/app/api/sessions/${encodeURIComponent(turn.sid)}/resume`, {}, () => turn);
}

async function rollbackTo(turn, idx) {
  if (view.running) return;
  await start(`/app/api/sessions/${encodeURIComponent(turn.sid)}/rollback`, { to: idx }, () => {
    fold(turn, idx, "user");
    return turn;
  });
}

// A stored session (an unfinished one, or ?session=ID): shown as a turn, and resumed if asked.
async function openSession(sid, resume) {
  let turn = turnOf(sid);
  if (!turn) {
    const t = await getJson(`/app/api/sessions/${encodeURIComponent(sid)}`);
    turn = newTurn(t.problem, t.session_id);
    drawTrace(turn, t);
  }
  if (resume) await resumeTurn(turn);
}

// -- wiring ---------------------------------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("problem").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && view.running) { e.preventDefault(); stop(); } });
  $("stop").addEventListener("click", stop);
  $("new").addEventListener("click", () => {
    if (view.running) return;
    view.conversation = newConversation();
    $("conversation").replaceChildren();
    $("problem").focus();
  });
  $("conversation").addEventListener("click", (e) => {
    const button = e.target.closest("button.back");
    if (!button) return;
    const turn = turnOf(button.closest("section.turn").dataset.session);
    if (turn) rollbackTo(turn, Number(button.dataset.idx));
  });
  $("auth").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);  // this tab only: never a cookie
    $("token").value = "";
    $("auth").hidden = true;
    boot();
  });
}

async function boot() {
  try {
    await loadModels();
    await refreshState();
    const sid = new URLSearchParams(location.search).get("session");
    if (sid) await openSession(sid, false);
    notice("");
    $("problem").focus();
  } catch (e) {
    notice(e.message);
  }
}

wire();
boot();
