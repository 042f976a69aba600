"""``solve``, ``resume`` and ``rollback``: run a session, streaming its steps or printing one JSON object."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import click

import store

from .. import strict_json
from ..agent import Agent, Callbacks, Settings, check_problem
from ..config import load_config
from ..errors import InputError
from ..factory import Agents, CloudOptions, RunOptions, agent_for_session, open_db, policy_label, session_meta
from ..presets import resolve_model
from ..report import session_report
from ..handover import run_handover
from ..samples import SampleSpec, ensure_resumable, is_parent, run_samples
from .options import cloud_options, db_option, json_option, run_options, verbose_option
from .render import Renderer, join_progress


def read_problem(problem: str) -> str:
    if problem != "-":
        try:
            problem.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("the problem is not valid UTF-8 text: pass it as UTF-8") from None
        return problem
    if sys.stdin is None:  # started with stdin closed (`solve - <&-`): Python then has no sys.stdin at all
        raise InputError("'-' reads the problem from stdin, which is closed: pipe the problem in, or pass it as "
                         "an argument")
    try:
        data = sys.stdin.buffer.read()
    except OSError as e:  # a stdin that cannot be read (EBADF, EIO)
        raise InputError(f"cannot read the problem from stdin ({e.strerror or e}): pipe the problem in, or pass "
                         "it as an argument") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("stdin is not UTF-8 text: convert the problem to UTF-8 and try again") from None


def run_session(agent: Agent, session_id: str | None, problem: str | None, settings: Settings | None, as_json: bool,
                verbose: bool, extra: dict[str, Any] | None = None) -> None:
    """Start (when ``session_id`` is None) or continue a session, then print its report."""
    renderer = None if as_json else Renderer(verbose)
    cb = Callbacks(renderer.step_start, renderer.text, renderer.step_end, renderer.trigger) if renderer else Callbacks()
    if session_id is None:
        session_id = agent.start(problem, settings, extra)  # the session and all its settings in one insert
    try:
        if is_parent(agent.db, session_id):  # solve --samples N: N sessions, then the vote
            voted = run_samples(agent, session_id, _announce(renderer, cb),
                                done=renderer.sample_done if renderer else None)
            run_handover(agent, session_id, voted.agreement, cb, renderer.handover_start if renderer else None)
        else:
            agent.run(session_id, cb)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: committed steps are kept; continue with 'edge-agent resume {session_id}'", err=True
        )
        sys.exit(130)
    report = session_report(agent.db, session_id, verbose=True)
    if as_json:
        click.echo(strict_json.dumps(report, ensure_ascii=False))
    else:
        renderer.summary(report)


def _announce(renderer: Renderer | None, cb: Callbacks) -> Callable[[int, int, str], Callbacks]:
    """The callbacks of each sample's run, after a header naming it (text output only)."""

    def start(index: int, n: int, session_id: str) -> Callbacks:
        if renderer:
            renderer.sample_start(index, n, session_id)
        return cb

    return start


@click.command()
@click.argument("problem")
@run_options("solve")
@verbose_option
@click.option("--step-cache", is_flag=True,
              help="Replay greedy local steps this database already computed (same model, context and cap).")
@click.option("--samples", type=int, metavar="N",
              help="Self-consistency: N solutions (the first greedy, the rest sampled), the majority answer wins "
                   "(default 1, or [solve] samples).")
@click.option("--sample-temperature", type=float, metavar="T",
              help="Temperature of solutions 2..N, each with its own seed (default 0.7).")
@click.option("--batch", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Decode the N solutions together in one llama.cpp batch (auto: from 8 on, where it pays; "
                   "default auto, or [solve] batch).")
@click.option("--handover-below", type=float, metavar="A",
              help="Vote first, then the cloud alone solves the problem if fewer than this share of the N "
                   "solutions agree, e.g. 0.6 (needs --samples and a cloud; default off, or [solve] handover_below).")
@cloud_options
@db_option
@json_option
def solve(problem: str, run: RunOptions, verbose: bool, step_cache: bool, samples: int | None,
          sample_temperature: float | None, batch: str | None, handover_below: float | None, cloud: CloudOptions,
          db_path: str | None, as_json: bool) -> None:
    """Solve PROBLEM step by step ('-' reads it from stdin)."""
    run = replace(run, step_cache=step_cache)
    settings = run.settings()
    text = check_problem(read_problem(problem), run.n_ctx)
    cfg = load_config()
    spec = SampleSpec.resolve(samples, sample_temperature, cfg, batch, handover_below)
    spec.check_context(run.n_ctx)
    label = policy_label(cfg, run.policy)
    agents = Agents.build(cfg, run, cloud, progress=join_progress())
    if spec.handover_below is not None and (agents.cloud is None or agents.offline):
        raise InputError("--handover-below hands problems to the cloud, and there is none: set --cloud "
                         "PROVIDER:MODEL or [cloud] in the config, without --offline (or drop --handover-below)")
    resolve_model(run.model)  # a bad --model fails before the database is touched
    agent = agents.agent(label, open_db(db_path))
    extra = {**session_meta(cloud, agents.cloud), **spec.extra()}
    run_session(agent, None, text, settings, as_json, verbose, extra=extra)


@click.command()
@click.argument("session_id")
@verbose_option
@click.option("--offline", is_flag=True, help="Continue on the local model alone.")
@db_option
@json_option
def resume(session_id: str, verbose: bool, offline: bool, db_path: str | None, as_json: bool) -> None:
    """Continue an unfinished session from its last committed step."""
    db = open_db(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    parent = is_parent(db, sid)  # a finished parent still resumes while samples are left
    if parent:  # a refusal writes nothing, not even a lease
        ensure_resumable(db, sid)
    else:
        store.ensure_resumable(store.load_state(db, sid))
    with store.session_lease(db, sid):  # refused at once, before a model loads, if another process holds it
        agent = agent_for_session(db, sid, offline, progress=join_progress(), finished_ok=parent)
        run_session(agent, sid, None, None, as_json, verbose)


@click.command()
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
@verbose_option
@db_option
@json_option
def rollback(session_id: str, to_step: int, temperature: float, no_continue: bool, verbose: bool,
             db_path: str | None, as_json: bool) -> None:
    """Mark steps from --to on as superseded (they are kept) and regenerate from there."""
    db = open_db(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    state = store.load_state(db, sid)
    Settings.from_dict({**state.settings, "temperature": temperature})  # validate first: a refusal writes nothing
    store.check_rollback(state, to_step)
    with store.session_lease(db, sid, purpose="rollback"):  # held from the rollback to the end of its run
        rid = store.rollback_to(db, sid, to_step, reason="user")
        store.update_settings(db, sid, {"temperature": temperature, "seed": secrets.randbelow(2**31)})
        if no_continue:
            report = session_report(db, sid)
            if as_json:
                click.echo(strict_json.dumps({**report, "rollback_id": rid}, ensure_ascii=False))
            else:
                click.echo(f"rolled back {sid} to step {to_step} (rollback {rid}); continue with 'edge-agent resume {sid}'")
            return
        agent = agent_for_session(db, sid, progress=join_progress())
        run_session(agent, sid, None, None, as_json, verbose)
