"""``sessions``, ``show``, ``cost``, ``models``, ``policies`` and ``doctor``: read and check, never solve."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

import store
from triggers import POLICIES
from triggers.policies import policy_parameters

from .. import strict_json
from ..config import Config, load_config
from ..doctor import diagnose
from ..errors import InputError
from ..factory import CloudOptions, open_db
from ..presets import (BEST_PRESET, MODELS_EXTRA, PRESETS, default_model, default_note, ensure_preset, preset_status,
                       pulled_status, read_registry)
from ..report import session_report, spend_summary
from .options import cloud_options, db_option, json_option, model_default, model_option, verbose_option
from .render import (join_progress, print_cost, print_doctor, print_models, print_policies, print_sessions,
                     print_trace)


MAX_LIMIT = 1_000_000_000  # SQLite's LIMIT takes 64 bits; more sessions than this is "all" anyway


@click.command()
@click.option("--limit", default=30, show_default=True, type=click.IntRange(0, MAX_LIMIT),
              help="How many sessions to list.")
@db_option
@json_option
def sessions(limit: int, db_path: str | None, as_json: bool) -> None:
    """List sessions, newest first."""
    db = open_db(db_path, create=False)
    rows = store.list_sessions(db, limit)
    if as_json:
        click.echo(strict_json.dumps(rows, ensure_ascii=False))
        return
    print_sessions(rows)


@click.command()
@click.argument("session_id")
@verbose_option
@click.option("--all", "show_all", is_flag=True, help="Also show steps superseded by rollbacks.")
@click.option("--events", "list_events", is_flag=True,
              help="List every trigger firing, including those refused by the budget or offline.")
@click.option("--open", "open_page", is_flag=True,
              help="Print the URL of the session's trace page in 'edge-agent serve' instead of the trace.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --open: the host serve listens on.")
@click.option("--port", default=8088, show_default=True, type=click.IntRange(1, 65535),
              help="With --open: the port serve listens on.")
@db_option
@json_option
def show(session_id: str, verbose: bool, show_all: bool, list_events: bool, open_page: bool, host: str, port: int,
         db_path: str | None, as_json: bool) -> None:
    """Print a session's full trace from the database."""
    db = open_db(db_path, create=False)
    sid = store.resolve_id(db, session_id)
    if open_page:
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/sessions/{sid}"
        click.echo(strict_json.dumps({"session_id": sid, "url": url}) if as_json else url)
        return
    store.check_session(db, sid)  # a damaged row is named before anything is printed
    report = session_report(db, sid, verbose=True)
    if as_json:
        click.echo(strict_json.dumps(report, ensure_ascii=False))
        return
    print_trace(report, store.load_steps(db, sid, include_superseded=show_all), verbose, list_events)


@click.group(invoke_without_command=True)
@click.option("--install", "install", metavar="NAME", help="Join and verify a chunked preset now.")
@json_option
@click.pass_context
def models(ctx: click.Context, install: str | None, as_json: bool) -> None:
    """List local models (presets, pulled ones) and the default; 'models pull' fetches a GGUF from the Hub.

    Each row: installed or not, size, path (or how to install it). The default is what --model falls back to.
    """
    if ctx.invoked_subcommand is not None:
        return
    if install:
        if install not in PRESETS:
            raise InputError(f"unknown model preset {install!r}: use one of {', '.join(PRESETS)}")
        path = ensure_preset(PRESETS[install], progress=join_progress())
        if not as_json:
            click.echo(f"{install}: {path}")
    default = default_model()
    rows = [{**preset_status(p), "kind": "preset"} for p in PRESETS.values()]
    rows += [{**pulled_status(name, entry), "kind": "pulled"} for name, entry in sorted(read_registry().items())]
    rows = [{**r, "default": r["name"] == default} for r in rows]
    if as_json:
        click.echo(strict_json.dumps(rows))
        return
    print_models(rows)
    note = default_note(default)
    click.echo(f"default (no --model, no EDGE_AGENT_MODEL): {default}"
               + (f" · {MODELS_EXTRA} for {BEST_PRESET}" if note else ""))
    click.echo("Any GGUF file also works: edge-agent solve --model /path/to/model.gguf ... "
               "(or fetch one: edge-agent models pull REPO/FILE.gguf)")


@models.command()
@click.argument("spec", metavar="REPO/FILE.gguf")
@click.option("--name", help="Name to pass as --model (default: the file name without .gguf; not a preset's).")
@click.option("--sha256", metavar="HEX", help="Expected sha256; needed when the hub reports none for the file.")
@click.option("--revision", metavar="REV", help="Branch, tag or commit (default: main).")
@json_option
def pull(spec: str, name: str | None, sha256: str | None, revision: str | None, as_json: bool) -> None:
    """Download a GGUF from the Hugging Face Hub, verify its sha256 and register it as a --model name.

    Uses HF_ENDPOINT (a mirror) and HF_TOKEN (gated or private repos); goes online even under
    HF_HUB_OFFLINE, which edge-agent sets for every other command. A failed download installs nothing.
    """
    from ..pull import parse_request, pull_model  # huggingface_hub: imported only to pull

    request = parse_request(spec, name, sha256, revision)
    try:
        record = pull_model(request)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: nothing was installed; run the same pull again (it starts over)", err=True)
        sys.exit(130)
    if as_json:
        click.echo(strict_json.dumps(record))
        return
    click.echo(f"pulled {record['name']}: {record['path']} ({record['size_bytes'] / 2**20:.1f} MiB, "
               f"sha256 {record['sha256'][:12]}… verified against {record['sha256_source']})")
    click.echo(f"use: edge-agent solve --model {record['name']} ...")


@click.command()
@click.option("--days", default=14, show_default=True, type=int, help="How many days of rows to show.")
@db_option
@json_option
def cost(days: int, db_path: str | None, as_json: bool) -> None:
    """Cloud spend by day, provider and model, with the caps in force and what is left."""
    db = open_db(db_path, create=False)
    out = spend_summary(db, load_config().budget, days)
    if as_json:
        click.echo(strict_json.dumps(out))
        return
    print_cost(out)


def policy_rows(cfg: Config) -> list[dict[str, Any]]:
    """Each policy: whether it calls the cloud, its one-line summary, its parameters' defaults, the config's."""
    rows = []
    for name, cls in POLICIES.items():
        params = policy_parameters(name)
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        rows.append({"name": name, "uses_cloud": cls.uses_cloud, "summary": doc, "parameters": params,
                     "configured": cfg.policy.get(name, {})})
    return rows


@click.command()
@json_option
def policies(as_json: bool) -> None:
    """List escalation policies with their parameters and defaults (config: [policy.NAME])."""
    rows = policy_rows(load_config())
    if as_json:
        click.echo(strict_json.dumps(rows, default=str))
        return
    print_policies(rows)


@click.command()
@model_option("Preset, pulled model or GGUF path to check.")
@cloud_options
@db_option
@json_option
def doctor(model: str | None, cloud: CloudOptions, db_path: str | None, as_json: bool) -> None:
    """Check the local model, the cloud (one free model-list call), the caps and where files live."""
    run_doctor(model, cloud, db_path, as_json)


def run_doctor(model: str | None, cloud: CloudOptions, db_path: str | None, as_json: bool,
               first_run: bool = False) -> None:
    result = diagnose(model, cloud, db_path)
    if as_json:
        click.echo(strict_json.dumps(result))
    else:
        print_doctor(result, first_run)
    if not result["ok"]:
        sys.exit(1)


def first_run() -> None:
    """Bare ``edge-agent``: the doctor's checks with a greeting, from the environment alone."""
    env = os.environ.get  # click fills envvar defaults only for a parsed command line
    cloud = CloudOptions(spec=env("EDGE_AGENT_CLOUD"), base_url=env("OPENAI_BASE_URL"))
    run_doctor(env("EDGE_AGENT_MODEL") or model_default(), cloud, env("EDGE_AGENT_DB"), False, first_run=True)
