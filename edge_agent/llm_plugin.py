"""edge-agent as a model of simonw's ``llm`` CLI: ``llm -m edge-agent "What is 17 * 23?"`` runs a solve.

llm imports every installed plugin at startup, even for ``llm --help``, so at import this module adds
only llm, pydantic and the light ``edge_agent`` package; the config, the store's database, the agent, the
local model (llama_cpp) and the cloud SDKs are imported inside option validation and ``execute``.

One prompt is one edge-agent session, built as ``solve`` builds it (``edge_agent.factory``: the same
config, cloud, caps and policy labels) and stored in edge-agent's own database. llm then logs the
response as it logs any model's, with the session id, the usage split by side and the cost in
``response_json``. Options map to solve's flags: ``-o policy trim-thr``, ``-o max_cost 0.01`` ...

The agent's loop is synchronous and reports through callbacks, while llm pulls text from a generator, so
the session runs on a worker thread that owns the database connection and the local model, and its steps
come back through a queue. As in ``serve``, a step is passed on only once it is committed: a local draft
that the policy replaces never reaches llm's output or log.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
from collections.abc import Iterator
from typing import Any

import llm
from pydantic import Field, ValidationInfo, field_validator

MODEL_ID = "edge-agent"
# as solve's flags: an unset option falls back to the same environment variable
ENV = {"model": "EDGE_AGENT_MODEL", "cloud": "EDGE_AGENT_CLOUD", "cloud_base_url": "OPENAI_BASE_URL"}
RUN_FIELDS = ("model", "policy", "max_steps", "max_step_tokens", "n_ctx", "temperature")
SETTINGS_FIELDS = ("n_ctx", "max_steps", "max_step_tokens", "temperature")  # validated together, in this order
STOP_WAIT_S = 5.0  # how long an interrupted run may take to reach its next local token
MAX_REPLY_CHARS = 500  # an earlier turn's reply, as the next turn's problem sees it (the context is small)


@llm.hookimpl
def register_models(register: Any) -> None:
    register(EdgeAgentModel())


def for_llm(message: str) -> str:
    """A message written for the edge-agent CLI, with its flags named as llm options (``--max-cost`` -> ``-o max_cost``)."""

    def swap(m: re.Match[str]) -> str:
        name = m[1].replace("-", "_")
        return f"-o {name}" if name in EdgeAgentOptions.model_fields else m[0]

    return re.sub(r"--([a-z][a-z-]*[a-z])", swap, message)


@contextlib.contextmanager
def translated(into: type[Exception]) -> Iterator[None]:
    """Turn edge-agent's user errors into ``into`` (pydantic's ValueError, or llm's ModelError), worded for llm."""
    from .errors import USER_ERRORS

    try:
        yield
    except USER_ERRORS as e:
        raise into(for_llm(str(e))) from None


class EdgeAgentOptions(llm.Options):
    """solve's flags as llm options; each unset one takes solve's default."""

    model: str | None = Field(None, description="Local model: preset name, GGUF path or script:FILE.json "
                                                "(env EDGE_AGENT_MODEL; default: the best preset installed)")
    policy: str | None = Field(None, description="Escalation policy, e.g. trim-thr or 'trim-thr(tau=0.6)' "
                                                 "(default local-only; see 'edge-agent policies')")
    n_ctx: int | None = Field(None, description="Local model context size in tokens (default 4096)")
    max_steps: int | None = Field(None, description="Stop after this many steps (default 12)")
    max_step_tokens: int | None = Field(None, description="Token cap for one step (default 256)")
    temperature: float | None = Field(None, description="Local sampling temperature; 0 decodes greedily (default 0)")
    cloud: str | None = Field(None, description="Cloud model PROVIDER:MODEL, e.g. openai:gpt-4o-mini "
                                                "(env EDGE_AGENT_CLOUD; default [cloud] in edge-agent's config)")
    cloud_base_url: str | None = Field(None, description="OpenAI-compatible endpoint of the cloud (env OPENAI_BASE_URL)")
    offline: bool | None = Field(None, description="Never call the cloud: solve on the local model alone")
    max_cost: float | None = Field(None, ge=0, allow_inf_nan=False,
                                   description="Cap on this session's cloud spend, in USD (default [budget] in config)")
    db: str | None = Field(None, description="edge-agent's session database (env EDGE_AGENT_DB; default in its app dir)")

    @field_validator("model", "db")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty: leave the option out for the default")
        return v if v is None else v.strip()

    @field_validator("policy")
    @classmethod
    def _policy(cls, v: str | None) -> str | None:
        if v is not None:
            from triggers import get_policy

            with translated(ValueError):
                get_policy(v)
        return v

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, v: str | None) -> str | None:
        if v is not None:
            from cloud.client import parse_spec

            with translated(ValueError):
                parse_spec(v)
        return v

    @field_validator("cloud_base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        from cloud.adapters import url_problem

        problem = None if v is None else url_problem(v)
        if problem:
            raise ValueError(f"not a cloud base URL ({problem}): use an http:// or https:// URL with a host, "
                             "e.g. https://api.deepseek.com/v1")
        return v

    @field_validator(*SETTINGS_FIELDS)
    @classmethod
    def _settings(cls, v: Any, info: ValidationInfo) -> Any:
        """The per-session knobs, checked by ``agent.Settings`` itself (with the fields validated before this one)."""
        if v is not None:
            from .agent import Settings

            given = {k: info.data[k] for k in SETTINGS_FIELDS if info.data.get(k) is not None}
            if info.field_name == "n_ctx":
                given["max_step_tokens"] = 8  # the smallest legal cap: only n_ctx's own range is checked here
            with translated(ValueError):
                Settings(**{**given, info.field_name: v})
        return v


class EdgeAgentModel(llm.Model):
    """``llm -m edge-agent``: each prompt is one edge-agent session; earlier turns of a conversation are context."""

    model_id = MODEL_ID
    can_stream = True
    Options = EdgeAgentOptions

    def execute(self, prompt: Any, stream: bool, response: Any, conversation: Any) -> Iterator[str]:
        messages = chat_messages(prompt)
        solve = Solve.prepare(prompt.options, messages, conversation_meta(conversation, messages))
        said = False
        for text in solve.chunks():
            said = True
            yield text
        report, prompt_tokens = solve.report, solve.prompt_tokens
        yield ("\n\n" if said else "") + answer_line(report)
        from .serve_wire import summary, usage

        used = usage(report, prompt_tokens)
        response.set_usage(input=used["prompt_tokens"], output=used["completion_tokens"],
                           details={k: used[k] for k in ("local_tokens", "cloud_input_tokens", "cloud_output_tokens")})
        response.response_json = {**summary(report), "model": report["model"], "cost_usd": used["cost_usd"],
                                  "usage": report["usage"]}


def answer_line(report: dict[str, Any]) -> str:
    if report["answer"] is not None:
        return f"Answer: {report['answer']}"
    return f"No final answer ({report['status']}); the steps are in session {report['session_id']}."


def chat_messages(prompt: Any) -> list[dict[str, str]]:
    """The conversation so far as role/content dicts; an earlier reply is cut to its last paragraph (the answer)."""
    chain = getattr(prompt, "messages", None)  # the whole chain, earlier turns included (llm 0.3x)
    if chain is None:
        return ([{"role": "system", "content": prompt.system}] if prompt.system else []) + \
            [{"role": "user", "content": prompt.prompt or ""}]
    from llm.parts import TextPart  # not reasoning, tool calls or attachments

    out = []
    for m in chain:
        text = "".join(p.text for p in m.parts if isinstance(p, TextPart))
        if m.role == "assistant":
            text = text.strip().rsplit("\n\n", 1)[-1][-MAX_REPLY_CHARS:]
        if m.role in ("system", "user", "assistant"):
            out.append({"role": m.role, "content": text})
    return out


def conversation_meta(conversation: Any, messages: list[dict[str, str]]) -> dict[str, Any]:
    """What the session stores to tie it to llm's conversation (as ``chat`` tags its turns)."""
    if conversation is None:
        return {}
    return {"llm_conversation_id": conversation.id, "turn": sum(m["role"] == "user" for m in messages) - 1}


class Stopped(Exception):
    """The reader went away (Ctrl-C, or it stopped reading): the run stops at its next local token."""


class StepRelay:
    """Agent callbacks -> the text of each committed step on a queue (the rule of ``serve.StepStream``).

    A local draft's ``step_end`` comes before the policy's verdict, so a step is held until the next
    step starts or the run ends; the same index again means the draft was replaced, and is dropped.
    """

    def __init__(self, put: Any, cancel: threading.Event) -> None:
        self.put, self.cancel = put, cancel
        self.pending: Any = None
        self.next_index = 0  # the index after the last step passed on
        self.local = False  # inside a local draft: the only place a stop loses nothing paid for

    def step_start(self, index: int, author: str) -> None:
        self.local = author == "local"
        self.text("")
        if self.pending is not None and index > self.pending.index:
            self.flush()

    def text(self, piece: str) -> None:
        if self.local and self.cancel.is_set():
            raise Stopped()

    def step_end(self, step: Any) -> None:
        if self.pending is not None and step.index > self.pending.index:
            self.flush()
        self.pending = step

    def flush(self) -> None:
        step, self.pending = self.pending, None
        if step is None:
            return
        if self.next_index == 0:
            sep = ""
        elif step.index < self.next_index and step.author == "cloud":  # what was shown from here on is gone
            sep = f"\n\n[the cloud reviewed the steps and rolled back to step {step.index}; it continues:]\n\n"
        elif step.index < self.next_index:  # a review put the draft's own steps back in place of a repair
            sep = f"\n\n[rolled back to step {step.index}: the draft's own steps are put back:]\n\n"
        else:
            sep = "\n\n"
        self.next_index = step.index + 1
        self.put(("text", sep + step.text))

    def callbacks(self) -> Any:
        from .agent import Callbacks

        return Callbacks(self.step_start, self.text, self.step_end)


class Solve:
    """One prompt's session: checked and built on llm's thread, run on a worker thread, read as text chunks."""

    def __init__(self, agents: Any, label: str, problem: str, settings: Any, meta: dict[str, Any],
                 db_path: str | None) -> None:
        self.agents, self.label, self.problem, self.settings = agents, label, problem, settings
        self.meta, self.db_path = meta, db_path
        self.cancel = threading.Event()
        self.session_id: str | None = None
        self.report: dict[str, Any] = {}
        self.prompt_tokens = 0

    @classmethod
    def prepare(cls, opts: EdgeAgentOptions, messages: list[dict[str, str]], meta: dict[str, Any]) -> Solve:
        """Everything ``solve`` checks before it touches the database: a refusal writes nothing anywhere."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as edge-agent's main(): no model is fetched from a hub
        from .agent import check_problem
        from .chat import conversation_problem
        from .config import load_config
        from .errors import InputError
        from .factory import (
            Agents,
            CloudOptions,
            RunOptions,
            policy_label,
            session_meta,
            uses_cloud,
        )
        from .presets import resolve_model

        with translated(llm.ModelError):
            run = RunOptions(**{k: v for k in RUN_FIELDS if (v := option(opts, k)) is not None})
            cloud = CloudOptions(spec=option(opts, "cloud"), base_url=option(opts, "cloud_base_url"),
                                 offline=bool(opts.offline), max_cost=opts.max_cost)
            settings = run.settings()
            problem = check_problem(conversation_problem(messages), run.n_ctx)
            cfg = load_config()
            label = policy_label(cfg, run.policy)
            agents = Agents.build(cfg, run, cloud)
            if uses_cloud(label) and agents.cloud is None and not cloud.offline:
                raise InputError(f"policy {label} needs a cloud: pass -o cloud PROVIDER:MODEL (or set [cloud] in "
                                 "edge-agent's config), or use -o policy local-only")
            resolve_model(run.model)  # a bad model fails before the database is touched
        meta = {**session_meta(cloud, agents.cloud), "source": "llm", **meta}
        return cls(agents, label, problem, settings, meta, opts.db)

    def chunks(self) -> Iterator[str]:
        """The committed steps' text as the worker produces them; then ``report`` is set."""
        out: queue.Queue[tuple[str, Any]] = queue.Queue()
        worker = threading.Thread(target=self.work, args=(out,), name="edge-agent-llm", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = out.get()
                if kind == "text":
                    yield payload
                elif kind == "session":
                    self.session_id = payload
                elif kind == "done":
                    self.report, self.prompt_tokens = payload
                    return
                else:
                    raise self.failure(payload)
        except KeyboardInterrupt:
            where = f": continue with 'edge-agent resume {self.session_id}'" if self.session_id else ""
            raise llm.ModelError(f"interrupted: committed steps are kept{where}") from None
        finally:
            # Ctrl-C, or the reader stopped early: the run stops at its next local token. A cloud call
            # cannot be cut short from here; past the wait the daemon thread ends with the process,
            # which loses nothing: each step commits in one transaction and a dead process's lease lapses.
            self.cancel.set()
            worker.join(STOP_WAIT_S)

    def work(self, out: queue.Queue[tuple[str, Any]]) -> None:
        """On the worker thread: open the database, start the session, run it and read its report back."""
        from .factory import open_db
        from .prompts import messages
        from .report import session_report

        relay = StepRelay(out.put, self.cancel)
        try:
            db = open_db(self.db_path)
            try:
                agent = self.agents.agent(self.label, db)
                sid = agent.start(self.problem, self.settings, self.meta)  # the session and its settings at once
                out.put(("session", sid))
                agent.run(sid, relay.callbacks())
                relay.flush()
                prompt_tokens = len(agent.model.prompt_tokens(messages(self.problem)))
                out.put(("done", (session_report(db, sid), prompt_tokens)))
            finally:
                db.close()
        except BaseException as e:  # noqa: BLE001 -- handed to the reader, which raises it on llm's thread
            out.put(("error", e))

    def failure(self, e: BaseException) -> BaseException:
        """What llm shows for an error on the worker: one line naming the session, for the user's own errors."""
        import sqlite3

        from .errors import USER_ERRORS

        where = f" (session {self.session_id}: its committed steps are kept)" if self.session_id else ""
        if isinstance(e, USER_ERRORS):
            return llm.ModelError(for_llm(str(e)) + where)
        if isinstance(e, sqlite3.Error):
            return llm.ModelError(f"edge-agent database error ({e}){where}: check -o db or EDGE_AGENT_DB")
        return e


def option(opts: EdgeAgentOptions, name: str) -> Any:
    """An option's value, else its environment variable (as solve's flag reads it), else None."""
    value = getattr(opts, name)
    if value is None and name in ENV:
        value = os.environ.get(ENV[name]) or None
    return value
