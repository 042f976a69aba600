"""Option decorators shared by the commands. ``run_options`` and ``cloud_options`` each hand the command
one object (``run: RunOptions``, ``cloud: CloudOptions``) instead of a dozen loose flags."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from ..factory import CloudOptions, RunOptions
from ..presets import default_model, default_note

MODEL_HELP = "Preset, pulled model or path to a GGUF file (see 'models')."
LOCAL_CTX_HELP = "Local model context size in tokens."

# Per job, the help of each run option (a job without "policy" or "temperature" has no such flag).
RUN_HELP: dict[str, dict[str, Any]] = {
    "solve": {
        "model": MODEL_HELP,
        "policy": ("local-only", "Escalation policy, optionally with parameters: trim-thr(tau=0.6). "
                                 "See 'edge-agent policies'."),
        "max_steps": "Stop after this many steps.",
        "max_step_tokens": "Token cap for one step.",
        "n_ctx": LOCAL_CTX_HELP,
        "temperature": "0 decodes greedily.",
        "seed": "Sampler seed (with --temperature > 0).",
    },
    "serve": {
        "model": MODEL_HELP,
        "policy": (None, "Policy behind model id 'edge-agent' (default: hybrid with a cloud, else local-only); "
                         "every policy is also served under its own name."),
        "max_steps": "Step cap per request (requests may lower it).",
        "max_step_tokens": "Token cap per step (a request's max_tokens may lower it).",
        "n_ctx": LOCAL_CTX_HELP,
    },
    "chat": {
        "model": MODEL_HELP,
        "policy": ("local-only", "Escalation policy (/policy NAME changes it)."),
        "max_steps": "Step cap per turn.",
        "max_step_tokens": "Token cap for one step.",
        "n_ctx": LOCAL_CTX_HELP,
    },
    "dataset": {  # bench and tune: the policies come from their own flags
        "model": "Local model: preset, pulled model or GGUF path.",
        "max_steps": "Step cap per problem.",
        "max_step_tokens": "Token cap per step.",
        "n_ctx": "Local context size.",
    },
}


def model_default() -> str:
    """``--model`` when neither the flag nor EDGE_AGENT_MODEL is given: the best preset installed.

    Looks for files only (no import, no load), and only when a command runs, never for ``--help``.
    When that is the smoke-test model it says so on stderr, once per command."""
    name = default_model()
    note = default_note(name)
    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    if note and not meta.get("edge_agent.model_note"):
        meta["edge_agent.model_note"] = True
        click.echo(note, err=True)
    return name


def model_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--model", "-m", envvar="EDGE_AGENT_MODEL", default=model_default,
                        help=help_text + " Default: the best preset installed (env EDGE_AGENT_MODEL).")


def _gather(f: Callable[..., Any], into: str, build: Callable[[dict[str, Any]], Any], names: list[str],
            opts: list[Callable[[Any], Any]]) -> Callable[..., Any]:
    """Add ``opts`` to the command ``f`` and hand it their values as one object, keyword ``into``."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        kwargs[into] = build({name: kwargs.pop(name) for name in names if name in kwargs})
        return f(*args, **kwargs)

    for opt in reversed(opts):
        command = opt(command)
    return command


def run_options(job: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--model, [--policy], --max-steps, --max-step-tokens, --n-ctx, [--temperature, --seed] -> ``run``."""
    helps = RUN_HELP[job]
    opts = [model_option(helps["model"])]
    if "policy" in helps:
        default, text = helps["policy"]
        opts.append(click.option("--policy", default=default, show_default=default is not None, help=text))
    opts += [
        click.option("--max-steps", default=12, show_default=True, type=int, help=helps["max_steps"]),
        click.option("--max-step-tokens", default=256, show_default=True, type=int, help=helps["max_step_tokens"]),
        click.option("--n-ctx", default=4096, show_default=True, type=int, help=helps["n_ctx"]),
    ]
    if "temperature" in helps:
        opts += [
            click.option("--temperature", default=0.0, show_default=True, type=float, help=helps["temperature"]),
            click.option("--seed", default=0, show_default=True, type=int, help=helps["seed"]),
        ]
    names = ["model", "policy", "max_steps", "max_step_tokens", "n_ctx", "temperature", "seed"]
    policy = {} if "policy" in helps else {"policy": None}
    return lambda f: _gather(f, "run", lambda values: RunOptions(**policy, **values), names, opts)


def cloud_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--cloud, --cloud-base-url, --offline, --max-cost, --price-in/--price-out -> ``cloud``."""
    opts = [
        click.option("--cloud", "spec", envvar="EDGE_AGENT_CLOUD", metavar="PROVIDER:MODEL",
                     help="Cloud model, e.g. openai:gpt-4o-mini or anthropic:claude-haiku-4-5 (or [cloud] in config)."),
        click.option("--cloud-base-url", "base_url", envvar="OPENAI_BASE_URL", metavar="URL",
                     help="Any OpenAI-compatible endpoint (DeepSeek, vLLM, Ollama, llama.cpp server)."),
        click.option("--offline", is_flag=True, help="Never call the cloud; solve on the local model alone."),
        click.option("--max-cost", type=float, metavar="USD", help="Hard cap on this session's cloud spend."),
        click.option("--price-in", type=float, metavar="USD", help="Input price per 1M tokens, for a model with no known price."),
        click.option("--price-out", type=float, metavar="USD", help="Output price per 1M tokens, for a model with no known price."),
    ]
    names = ["spec", "base_url", "offline", "max_cost", "price_in", "price_out"]
    return _gather(f, "cloud", lambda values: CloudOptions(**values), names, opts)


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        envvar="EDGE_AGENT_DB",
        type=click.Path(dir_okay=True, path_type=str),
        help="Session database file (default: in the app dir; env EDGE_AGENT_DB).",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")(f)


def verbose_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-v", "--verbose", is_flag=True, help="Show each step's signals.")(f)


def limit_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--limit", type=int, help="Only the first N problems.")(f)


def ray_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--ray [ADDRESS], --ray-workers, --ray-threads -> ``ray`` (a RayOptions, or None without --ray)."""
    opts = [
        click.option("--ray", "address", is_flag=False, flag_value="auto", metavar="[ADDRESS]",
                     help="Shard the problems over Ray workers: 'auto' (or no value) starts a local Ray, ADDRESS "
                          "joins a cluster started with 'ray start --head'. Needs pip install 'edge-agent[scale]'."),
        click.option("--ray-workers", "workers", type=click.IntRange(1, 4096),
                     help="With --ray: how many workers, each with its own edge model (default: the cluster's "
                          "CPUs / --ray-threads)."),
        click.option("--ray-threads", "threads", type=click.IntRange(1, 1024),
                     help="With --ray: llama.cpp threads per worker, and the CPUs each reserves (default 1)."),
    ]

    def make(values: dict[str, Any]) -> Any:
        from ..errors import InputError
        from ..scale import RayOptions

        if values["address"] is None:
            if values["workers"] is not None or values["threads"] is not None:
                raise InputError("--ray-workers and --ray-threads shard over Ray: add --ray (or --ray ADDRESS)")
            return None
        address = values["address"].strip()
        if not address:
            raise InputError("--ray needs 'auto' or a cluster address such as 10.0.0.5:6379 (from 'ray start --head')")
        return RayOptions(address, values["workers"], values["threads"] or 1)

    return _gather(f, "ray", make, ["address", "workers", "threads"], opts)
