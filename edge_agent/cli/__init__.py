"""Command-line interface: the ``edge-agent`` group, its one error funnel, and its commands loaded on use.

The commands live in modules by job (``solving``, ``inspecting``, ``tuning``, ``serving``); a module is
imported only when one of its commands runs, so ``edge-agent --help`` and importing this package pull in
no heavy package (llama_cpp, numpy, sqlite_utils, rich, the cloud SDKs). Each command parses its flags
into option objects (``options``), builds what it runs through ``edge_agent.factory`` and prints through
``render``.
"""

from __future__ import annotations

import importlib
import os
import sqlite3
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any

import click

from ..errors import USER_ERRORS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# name -> (module, the first line of its help): 'edge-agent --help' lists commands without importing them.
COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("serving", "Open the agent in the browser: the app page of a running 'serve', else a new one on 127.0.0.1 (serve --open)."),
    "atlas": ("atlas", "The routing atlas: what one cloud step at each step would have done (build it, then report on it)."),
    "bench": ("tuning", "Run every problem under every policy; report accuracy, PGR, CPT, cloud tokens, cost and time."),
    "chat": ("serving", "Talk to the agent turn by turn; each turn is a session (/help lists the commands)."),
    "cloud-local": ("serving", "Serve a local GGUF as an OpenAI-compatible 'cloud' on 127.0.0.1 (priced like DeepSeek-R1)."),
    "cost": ("inspecting", "Cloud spend by day, provider and model, with the caps in force and what is left."),
    "doctor": ("inspecting", "Check the local model, the cloud (one free model-list call), the caps and where files live."),
    "models": ("inspecting", "List local models (presets, pulled ones) and the default; 'models pull' fetches a GGUF from the Hub."),
    "policies": ("inspecting", "List escalation policies with their parameters and defaults (config: [policy.NAME])."),
    "resume": ("solving", "Continue an unfinished session from its last committed step."),
    "rollback": ("solving", "Mark steps from --to on as superseded (they are kept) and regenerate from there."),
    "serve": ("serving", "Serve the agent as an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models), the app page (GET /app) and trace pages (GET /)."),
    "sessions": ("inspecting", "List sessions, newest first."),
    "show": ("inspecting", "Print a session's full trace from the database."),
    "solve": ("solving", "Solve PROBLEM step by step ('-' reads it from stdin)."),
    "tune": ("tuning", "Sweep a policy's parameters (Pareto front), calibrate its threshold, or train trim-learned (--learn)."),
}


class LazyCommands(MutableMapping):
    """The group's commands: a command's module is imported the first time the command is looked up."""

    def __init__(self, where: dict[str, tuple[str, str]]) -> None:
        self.where = dict(where)
        self.loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self.loaded:
            module, _ = self.where[name]  # KeyError: no such command
            self.loaded[name] = getattr(importlib.import_module(f"{__name__}.{module}"), name.replace("-", "_"))
        return self.loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        self.loaded.pop(name, None)
        self.where.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self.where, *self.loaded]))

    def __len__(self) -> int:
        return len(set(self.where) | set(self.loaded))

    def summary(self, name: str) -> click.Command:
        """The command if it is loaded, else a stand-in carrying only its first help line."""
        return self.loaded.get(name) or click.Command(name, help=self.where[name][1])


class Group(click.Group):
    """Turns every domain error, and click's own usage errors, into one line on stderr and exit code 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for n, arg in enumerate(args, 1):
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                fail(f"argument {n} is not valid UTF-8 text: pass it as UTF-8")
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            usage_fail(e)
            raise  # unreachable: usage_fail exits

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            usage_fail(e)
        except USER_ERRORS as e:
            fail(str(e))
        except sqlite3.Error as e:
            if "readonly" in str(e):
                fail("the database file is read-only: make it writable (chmod u+w), or pass --db with another file")
            fail(f"database error ({e}): check the --db file, or move it aside")
        except KeyboardInterrupt:
            click.echo("\ninterrupted: committed steps are kept; continue with 'edge-agent resume ID'", err=True)
            sys.exit(130)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click's, but from the summaries: listing the commands imports none of them."""
        names = self.list_commands(ctx)
        lazy = self.commands if isinstance(self.commands, LazyCommands) else None
        commands = [(n, lazy.summary(n) if lazy else self.get_command(ctx, n)) for n in names]
        commands = [(n, c) for n, c in commands if c is not None and not c.hidden]
        if commands:
            limit = formatter.width - 6 - max(len(n) for n, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in commands])


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def usage_fail(e: click.UsageError) -> None:
    """click's "Usage: / Try: / Error:" block as one line that names the fix."""
    message = " ".join(e.format_message().split())
    path = e.ctx.command_path if e.ctx is not None else "edge-agent"
    fail(f"{message} (see '{path} --help')")


@click.group(cls=Group, commands=LazyCommands(COMMANDS), context_settings=CONTEXT_SETTINGS,
             invoke_without_command=True)
@click.version_option(package_name="edge-agent")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Solve multi-step problems on a small local model, escalating to a cloud model only where needed.

    With no command, checks the setup (as 'edge-agent doctor') and says what to run next.
    """
    if ctx.invoked_subcommand is None:
        from .inspecting import first_run  # loaded on use, as every command is

        first_run()


def __getattr__(name: str) -> Any:
    """``Renderer`` (tests patch it) without importing rich when the package is imported."""
    if name == "Renderer":
        from .render import Renderer

        return Renderer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cli(prog_name="edge-agent")
