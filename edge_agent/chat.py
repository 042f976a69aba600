"""A conversation on top of one-problem sessions: ``edge-agent chat`` and the conversation -> problem rule.

The agent solves one problem per session. A conversation therefore becomes one problem per turn:
``conversation_problem`` flattens system text, earlier turns and the new user message into that
problem, and ``serve`` uses the same rule, so a chat turn and an API request read alike.
Each turn is its own persisted session tagged ``conversation_id`` (and ``turn``) in its settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import store

from .agent import Agent, Callbacks
from .errors import USER_ERRORS, InputError
from .factory import Agents, uses_cloud
from .report import session_report

ROLES = {"system", "developer", "user", "assistant"}
HELP = """commands:
  /cost          tokens and cloud spend of this conversation, turn by turn
  /show          the last turn's steps, with who wrote each and why
  /offline       toggle the cloud off / on for the next turns
  /policy NAME   switch the escalation policy, e.g. /policy trim-thr(tau=0.6)
  /help          this list
  /quit          leave (Ctrl-D does too)
Ctrl-C during a turn cancels it; its committed steps stay in the database."""


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI content parts of type ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InputError(f"{where}: only text content parts are supported: send the message as plain text")
            parts.append(part["text"])
        return "\n".join(parts)
    raise InputError(f"{where}: content must be a string or a list of text parts")


def conversation_problem(messages: Any) -> str:
    """Flatten an OpenAI-style message list into the one problem text the agent solves.

    System (and developer) messages come first, as standing instructions; earlier user/assistant turns
    follow as a labelled transcript; the last message, which must be the user's, is the problem proper.
    A lone user message passes through unchanged, so ``solve`` and ``serve`` agree on the same text.
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("'messages' must be a non-empty list of {role, content} objects")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InputError(f"messages[{i}]: role must be one of {', '.join(sorted(ROLES))} (tools are not supported)")
        text = _text(m.get("content"), f"messages[{i}]").strip()
        if m["role"] in ("system", "developer"):
            if text:
                system.append(text)
        else:
            turns.append((m["role"], text))
    if not turns or turns[-1][0] != "user":
        raise InputError("the last message must be the user's: it is the problem to solve")
    problem = turns[-1][1]
    if not problem:
        raise InputError("the last user message is empty: send the problem text")
    history = [f"{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in turns[:-1] if text]
    parts = []
    if system:
        parts.append("\n\n".join(system))
    if history:
        parts.append("Earlier in this conversation:\n" + "\n".join(history))
    parts.append(problem)
    return "\n\n".join(parts)


@dataclass
class Turn:
    user: str
    session_id: str
    reply: str  # what later turns see as the assistant's answer
    status: str
    cancelled: bool = False


@dataclass
class Chat:
    """One conversation: the shared local model and store, switchable policy and cloud, its turns."""

    agents: Agents  # one local model for the whole conversation, the cloud and the caps
    db: Any
    settings: Any  # agent.Settings for every turn
    policy: str  # label (config defaults baked in)
    resolve_policy: Callable[[str], str]  # NAME -> label; raises EdgeAgentError on a bad one
    renderer: Any  # cli.Renderer: step_start/text/step_end/trigger/summary and .console
    session_meta: dict[str, Any] = field(default_factory=dict)  # stored with each turn's session (resume needs it)
    conversation_id: str = ""
    turns: list[Turn] = field(default_factory=list)
    offline: bool = field(init=False)  # /offline toggles it

    def __post_init__(self) -> None:
        self.conversation_id = self.conversation_id or store.new_id()
        self.offline = self.agents.offline

    @property
    def console(self) -> Any:
        return self.renderer.console

    @property
    def cloud(self) -> Any:
        return self.agents.cloud

    def messages(self, user: str) -> list[dict[str, str]]:
        """Earlier finished turns (answers only, to spare the small context) plus the new message."""
        out: list[dict[str, str]] = []
        for t in self.turns:
            if not t.cancelled:
                out += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply}]
        return out + [{"role": "user", "content": user}]

    def agent(self) -> Agent:
        return self.agents.agent(self.policy, self.db, offline=self.offline)

    def ask(self, user: str) -> Turn:
        """Run one turn as its own session. Ctrl-C cancels it; what was committed stays, and we go on."""
        r = self.renderer
        agent = self.agent()
        # the session and every setting resume needs are written in one transaction
        sid = agent.start(conversation_problem(self.messages(user)), self.settings,
                          {"conversation_id": self.conversation_id, "turn": len(self.turns), **self.session_meta})
        cancelled = False
        try:
            agent.run(sid, Callbacks(r.step_start, r.text, r.step_end, r.trigger))
        except KeyboardInterrupt:
            cancelled = True
        report = session_report(self.db, sid)
        if cancelled:
            n = len(report["steps"])
            self.console.print(f"\n[yellow]turn cancelled: {n} committed step{'s' * (n != 1)} kept in session "
                               f"{sid} (continue it with 'edge-agent resume {sid}')[/yellow]")
        else:
            r.summary(report)
        turn = Turn(user, sid, turn_reply(report), report["status"], cancelled)
        self.turns.append(turn)
        return turn

    def command(self, line: str) -> bool:
        """Handle one /command; False means leave."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            self.console.print(HELP, markup=False)
        elif name == "cost":
            self.cost()
        elif name == "show":
            self.show()
        elif name == "offline":
            self.toggle_offline()
        elif name == "policy":
            self.set_policy(arg)
        else:
            self.console.print(f"unknown command /{name}: type /help for the list", markup=False)
        return True

    def cost(self) -> None:
        if not self.turns:
            self.console.print("no turns yet")
            return
        total = {"local_tokens": 0, "cloud_input_tokens": 0, "cloud_output_tokens": 0, "cost_usd": 0.0}
        for n, t in enumerate(self.turns):
            u = session_report(self.db, t.session_id)["usage"]
            for k in total:
                total[k] += u[k]
            self.console.print(f"turn {n} · {t.session_id} · {u['local_tokens']} local tok · cloud "
                               f"{u['cloud_input_tokens']} in / {u['cloud_output_tokens']} out · ${u['cost_usd']:.6f}"
                               + (" · cancelled" if t.cancelled else ""), markup=False)
        self.console.print(f"conversation {self.conversation_id}: {total['local_tokens']} local tokens · cloud "
                           f"{total['cloud_input_tokens']} in / {total['cloud_output_tokens']} out · "
                           f"${total['cost_usd']:.6f}", markup=False)

    def show(self) -> None:
        if not self.turns:
            self.console.print("no turns yet")
            return
        report = session_report(self.db, self.turns[-1].session_id)
        self.console.print(f"session {report['session_id']} · policy {report['policy']} · {report['status']}", markup=False)
        for s in report["steps"]:
            why = f" · ⚑ {s['trigger']}" if s["trigger"] else ""
            self.console.print(f"── step {s['index']} · {s['author']} · {s['kind']}{why}", markup=False)
            self.console.print(s["text"], markup=False)
        self.console.print(f"full trace with trigger numbers: edge-agent show {report['session_id']} --events",
                           markup=False)

    def toggle_offline(self) -> None:
        if self.cloud is None and not self.offline:
            self.console.print("no cloud is configured: every turn already runs locally (start chat with --cloud)")
            return
        self.offline = not self.offline
        self.console.print("offline: the cloud is off for the next turns" if self.offline
                           else f"online: the cloud ({self.cloud.provider}:{self.cloud.model}) may be called again")

    def set_policy(self, spec: str) -> None:
        if not spec:
            self.console.print(f"policy: {self.policy} (change it with /policy NAME; see 'edge-agent policies')",
                               markup=False)
            return
        try:
            label = self.resolve_policy(spec)
        except USER_ERRORS as e:
            self.console.print(f"Error: {e}", markup=False)
            return
        if uses_cloud(label) and self.cloud is None:
            self.console.print(f"Error: policy {label} needs a cloud and none is configured: "
                               "start chat with --cloud PROVIDER:MODEL", markup=False)
            return
        self.policy = label
        self.console.print(f"policy: {label}", markup=False)

    def loop(self, read: Callable[[], str]) -> None:
        """Read lines until /quit or end of input. Ctrl-C at the prompt only clears the line."""
        self.console.print(f"edge-agent chat · {self.agents.local().name} · policy {self.policy}"
                           + (f" · cloud {self.cloud.provider}:{self.cloud.model}" if self.cloud else " · no cloud")
                           + " · /help for commands", markup=False)
        while True:
            try:
                line = read().strip()
                line.encode("utf-8")  # a line read with surrogateescape holds its bad bytes as lone surrogates
            except KeyboardInterrupt:
                self.console.print("\n(/quit or Ctrl-D leaves)")
                continue
            except EOFError:
                self.console.print()
                return
            except UnicodeError:
                self.console.print("Error: that line is not valid UTF-8 text: type it again", markup=False)
                continue
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            try:
                self.ask(line)
            except USER_ERRORS as e:  # e.g. the conversation outgrew the context: say so, keep the REPL
                self.console.print(f"Error: {e}", markup=False)
            except KeyboardInterrupt:  # before the turn's session existed: nothing to keep
                self.console.print("\nturn cancelled")


def turn_reply(report: dict[str, Any]) -> str:
    """The assistant side of a finished turn, as later turns see it: the answer, else the last step."""
    if report["answer"] is not None:
        return f"The answer is {report['answer']}."
    steps = [s["text"] for s in report["steps"]]
    return steps[-1][:500] if steps else ""
