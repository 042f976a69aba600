"""``serve``, ``app``, ``chat`` and ``cloud-local``: the agent behind an API, a page or a REPL, and a loopback
stand-in cloud."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import click

from cloud.adapters import is_loopback
from triggers import POLICIES

from ..chat import Chat
from ..cloud_local import free_port, start_server
from ..config import load_config
from ..errors import InputError
from ..factory import Agents, CloudOptions, RunOptions, open_db, policy_label, require_cloud, session_meta
from ..presets import resolve_model
from .options import cloud_options, db_option, run_options, verbose_option
from .render import Renderer, join_progress


NEEDS_SERVER = "serve needs FastAPI and uvicorn: pip install 'edge-agent[server]'"


def serve_flags(f: Any) -> Any:
    """The flags ``serve`` and ``app`` share: the token, the model and its limits, the queue, the cloud, the DB."""
    flags: list[Callable[[Any], Any]] = [
        click.option("--token", envvar="EDGE_AGENT_TOKEN",
                     help="Require 'Authorization: Bearer TOKEN' (env EDGE_AGENT_TOKEN)."),
        run_options("serve"),
        click.option("--queue", "max_queue", default=4, show_default=True, type=click.IntRange(0),
                     help="Requests that may wait for the one local model; more get HTTP 429."),
        cloud_options,
        db_option,
    ]
    for flag in reversed(flags):
        f = flag(f)
    return f


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8088, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests whose Host is NAME (repeatable); others get 403 (DNS-rebinding guard).")
@click.option("--open", "open_page", is_flag=True,
              help="Open the app page (/app) in the default browser once listening.")
@serve_flags
def serve(host: str, port: int, allow_hosts: tuple[str, ...], open_page: bool, token: str | None, run: RunOptions,
          max_queue: int, cloud: CloudOptions, db_path: str | None) -> None:
    """Serve the agent as an OpenAI-compatible API (POST /v1/chat/completions, GET /v1/models), the app page
    (GET /app) and trace pages (GET /)."""
    if not is_loopback(f"http://{host}") and not token:
        raise InputError(f"--host {host} exposes the agent (and your cloud budget) beyond this machine: "
                         "pass --token as well")
    try:
        from ..serve_guard import allowed_name
    except ImportError:
        raise InputError(NEEDS_SERVER) from None
    allow_hosts = tuple(allowed_name(name) for name in allow_hosts)  # a bad name fails before the model loads
    check_port(host, port)
    start_serving(host, port, allow_hosts, open_page, token, run, max_queue, cloud, db_path)


@click.command()
@click.option("--port", default=8088, show_default=True, type=click.IntRange(1, 65535),
              help="Port on 127.0.0.1: an edge-agent serve already there is opened; if another program has it, "
                   "a free port is used.")
@serve_flags
def app(port: int, token: str | None, run: RunOptions, max_queue: int, cloud: CloudOptions,
        db_path: str | None) -> None:
    """Open the agent in the browser: the app page of a running 'serve', else a new one on 127.0.0.1 (serve --open)."""
    url = f"http://127.0.0.1:{port}/app"
    if serves_app(url):
        click.echo(f"edge-agent app: {url} (a serve already runs there)")
        show_page(url)
        return
    try:
        check_port("127.0.0.1", port)
    except InputError:
        port = free_port()
    start_serving("127.0.0.1", port, (), True, token, run, max_queue, cloud, db_path)


def start_serving(host: str, port: int, allow_hosts: tuple[str, ...], open_page: bool, token: str | None,
                  run: RunOptions, max_queue: int, cloud: CloudOptions, db_path: str | None) -> None:
    """Build the agents and the app, load the model, say where it listens, serve until Ctrl-C."""
    try:  # an optional extra: import it only when asked to serve
        from ..serve import ServeOptions, create_app, run_server
    except ImportError:
        raise InputError(NEEDS_SERVER) from None
    settings = run.settings()
    cfg = load_config()
    agents = Agents.build(cfg, run, cloud, progress=join_progress())
    label = policy_label(cfg, run.policy or default_serve_policy(agents.cloud))
    require_cloud([label], agents.cloud)
    resolve_model(run.model)
    made: dict[str, Any] = {}

    def make_agent(policy: str) -> Any:
        """On the server's worker thread, which owns the model and the DB connection."""
        if "db" not in made:
            made["db"] = open_db(db_path)
        return agents.agent(policy, made["db"])

    options = ServeOptions(default_policy=label, resolve_policy=lambda spec: policy_label(cfg, spec),
                           settings=settings, has_cloud=agents.cloud is not None, token=token, max_queue=max_queue,
                           session_meta=session_meta(cloud, agents.cloud),
                           open_db=lambda: open_db(db_path, create=False), host=host, allow_hosts=allow_hosts,
                           max_cost=agents.caps.session_usd, budget=cfg.budget, cloud=agents.cloud,
                           offline=cloud.offline)
    app = create_app(make_agent, options)
    app.state.worker.call(lambda: make_agent(label).model.llm)  # load now: a bad model fails before we listen
    base = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"edge-agent serve: {base}/v1 · model 'edge-agent' = {label}"
               + (f" · cloud {agents.cloud.provider}:{agents.cloud.model}" if agents.cloud else " · no cloud")
               + (" · token required" if token else "")
               + (f" · also answers to Host {', '.join(allow_hosts)}" if allow_hosts else ""))
    click.echo(f"use: OpenAI(base_url={base + '/v1'!r}, api_key={'TOKEN' if token else 'any'!r}) · Ctrl-C stops")
    click.echo(f"app: {base}/app · trace pages: {base}/" + ("?token=TOKEN" if token else ""))
    run_server(app, host, port, on_ready=(lambda: show_page(f"{base}/app")) if open_page else None)


def show_page(url: str) -> None:
    """Open ``url`` in the default browser; print it when no browser can be opened."""
    if open_browser(url):
        click.echo(f"opened {url} in the browser")
    else:
        click.echo(f"could not open a browser: open {url} yourself")


def open_browser(url: str) -> bool:
    """Whether a browser took ``url``. ``$BROWSER`` (as Python's webbrowser reads it: commands separated by
    ':', '%s' standing for the URL) is the only choice when set; else webbrowser's, if a display is there."""
    import webbrowser

    choice = os.environ.get("BROWSER")
    if not choice:
        graphical = (sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY")
                     or os.environ.get("WAYLAND_DISPLAY"))
        return bool(graphical) and webbrowser.open(url)  # never a console browser over our own output
    for command in filter(None, choice.split(os.pathsep)):
        args = shlex.split(command)
        args = [a.replace("%s", url) for a in args] if any("%s" in a for a in args) else [*args, url]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            continue
        try:
            if proc.wait(5) == 0:
                return True
        except subprocess.TimeoutExpired:
            return True  # still running: a browser that stays in the foreground has the page
    return False


def serves_app(url: str) -> bool:
    """Whether an edge-agent serve answers at ``url`` (its app page names itself)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return b'content="edge-agent app"' in r.read(4096)
    except (OSError, ValueError):
        return False


def default_serve_policy(cloud: Any) -> str:
    """Behind model id 'edge-agent' when --policy is not given: hybrid with a cloud, else local-only."""
    return "hybrid" if cloud is not None and "hybrid" in POLICIES else "local-only"


def check_port(host: str, port: int) -> None:
    """Fail before the model loads, with the fix, when the address is taken."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port or --host") from None


@click.command()
@run_options("chat")
@verbose_option
@cloud_options
@db_option
def chat(run: RunOptions, verbose: bool, cloud: CloudOptions, db_path: str | None) -> None:
    """Talk to the agent turn by turn; each turn is a session (/help lists the commands)."""
    settings = run.settings()
    cfg = load_config()
    label = policy_label(cfg, run.policy)
    agents = Agents.build(cfg, run, cloud, progress=join_progress())
    require_cloud([label], agents.cloud)
    resolve_model(run.model)
    db = open_db(db_path)
    agents.local()  # load before the first prompt: a bad model fails now
    renderer = Renderer(verbose)
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    session = Chat(agents, db, settings, label, lambda spec: policy_label(cfg, spec), renderer,
                   session_meta=session_meta(cloud, agents.cloud))
    session.loop(lambda: renderer.console.input("[bold green]you ›[/bold green] "))


@click.command("cloud-local")
@click.option("--model", "-m", default="smollm2-135m", show_default=True, help="Preset name or GGUF path to serve.")
@click.option("--port", type=click.IntRange(0, 65535), help="Port on 127.0.0.1 (default, or 0: a free one).")
@click.option("--n-ctx", default=4096, show_default=True, type=int, help="Server context size.")
def cloud_local(model: str, port: int | None, n_ctx: int) -> None:
    """Serve a local GGUF as an OpenAI-compatible 'cloud' on 127.0.0.1 (priced like DeepSeek-R1)."""
    _, path = resolve_model(model, progress=join_progress())
    # a SIGTERM (a script's 'kill') stops the server too: without this the child would outlive us.
    # Installed before the server starts and before "serving" is printed, so a script that kills
    # us as soon as it reads that line never meets the default handler.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    proc, base = start_server(path, port=port, n_ctx=n_ctx)
    click.echo(f"serving {path.name} at {base}")
    click.echo(f"use: edge-agent solve ... --cloud openai:local --cloud-base-url {base} --policy every-k")
    click.echo("Ctrl-C stops it.")
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
