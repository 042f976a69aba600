"""The config file: one TOML file in the app dir (``EDGE_AGENT_CONFIG`` moves it). Unknown keys are errors.

    [cloud]
    provider = "openai"            # or "anthropic"
    model = "gpt-4o-mini"
    base_url = "https://api.deepseek.com/v1"   # optional, any OpenAI-compatible endpoint
    timeout_s = 60
    max_retries = 2
    cooldown_s = 60
    continuation = "auto"          # cloud steps continue the edge's own turn: auto (by provider) | on | off
    read = "auto"                  # how the cloud reads a draft: echo (prompt log-probs) | judge | off | auto

    [budget]
    max_cost_session = 0.05        # USD
    max_cost_day = 1.00
    max_cost_month = 10.00

    [local]
    repack = "auto"                # llama.cpp's CPU weight repack: auto (probed once per CPU) | on | off

    [solve]
    samples = 5                    # self-consistency: N solutions, the majority answer wins (default 1)
    sample_temperature = 0.7       # temperature of samples 2..N (the first is greedy)
    batch = "auto"                 # decode the N solutions together in one llama.cpp batch: auto (N >= 8) | on | off
    # handover_below = 0.6         # the cloud alone solves a problem whose vote agrees less (needs a cloud)

    [keys]                         # environment variables win over these
    openai = "sk-..."
    anthropic = "sk-ant-..."

    [prices."my-model"]            # USD per 1M tokens
    input = 0.5
    output = 1.5
    cached_input = 0.1

    [policy."trim-thr"]            # policy parameters (written by 'edge-agent tune')
    tau = 0.62
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .smallfile import Unreadable, read_small

SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "cloud": {"provider": str, "model": str, "base_url": str, "timeout_s": (int, float),
              "max_retries": int, "cooldown_s": (int, float), "continuation": str, "read": str},
    "budget": {"max_cost_session": (int, float), "max_cost_day": (int, float), "max_cost_month": (int, float)},
    "keys": {"openai": str, "anthropic": str},
    "local": {"repack": str},
    "solve": {"samples": int, "sample_temperature": (int, float), "batch": str, "handover_below": (int, float)},
}
MAX_SAMPLES = 64  # solve --samples: each sample is a full solve on the local model
PRICE_KEYS = {"input": (int, float), "output": (int, float), "cached_input": (int, float), "cache_write": (int, float)}

_SECONDS_POS = ("> 0 and finite, in seconds", lambda v: math.isfinite(v) and v > 0)
_SECONDS = (">= 0 and finite, in seconds", lambda v: math.isfinite(v) and v >= 0)
_USD = (">= 0 and finite, in USD", lambda v: math.isfinite(v) and v >= 0)
# What each value takes, for the keys that take more than a type: (what to say, the test)
RULES: dict[tuple[str, str], tuple[str, Any]] = {
    ("cloud", "timeout_s"): _SECONDS_POS,
    ("cloud", "max_retries"): ("an integer >= 0", lambda v: v >= 0),
    ("cloud", "cooldown_s"): _SECONDS,
    ("cloud", "base_url"): ("an http:// or https:// URL with a host, e.g. https://api.deepseek.com/v1",
                            lambda v: _url_problem(v) is None),
    ("cloud", "continuation"): ("auto, on or off", lambda v: v in ("auto", "on", "off")),
    ("cloud", "read"): ("auto, echo, judge or off", lambda v: v in ("auto", "echo", "judge", "off")),
    ("local", "repack"): ("auto, on or off", lambda v: v in ("auto", "on", "off")),
    ("solve", "samples"): (f"an integer from 1 to {MAX_SAMPLES}", lambda v: 1 <= v <= MAX_SAMPLES),
    ("solve", "sample_temperature"): ("a number > 0 and <= 5", lambda v: math.isfinite(v) and 0 < v <= 5),
    ("solve", "batch"): ("auto, on or off", lambda v: v in ("auto", "on", "off")),
    ("solve", "handover_below"): ("an agreement share > 0 and <= 1", lambda v: math.isfinite(v) and 0 < v <= 1),
    **{("budget", k): _USD for k in SCHEMA["budget"]},
}
_TYPE_NAMES = {str: "a string", int: "an integer"}


def _url_problem(url: str) -> str | None:
    from cloud.adapters import url_problem

    return url_problem(url)


def _wants(section: str, key: str) -> str:
    """What a key takes, in words, for an error message."""
    rule = RULES.get((section, key))
    if rule:
        return rule[0]
    want = SCHEMA[section][key]
    return _TYPE_NAMES.get(want, "a number")  # type: ignore[call-overload]


@dataclass
class Config:
    cloud: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    local: dict[str, str] = field(default_factory=dict)  # llama.cpp: repack = auto | on | off (edge_agent.runtime)
    solve: dict[str, Any] = field(default_factory=dict)  # samples, sample_temperature (edge_agent.samples)
    prices: dict[str, Any] = field(default_factory=dict)  # model -> cloud.pricing.Price
    policy: dict[str, dict[str, Any]] = field(default_factory=dict)  # policy name -> parameters
    path: Path | None = None


def config_path() -> Path:
    env = os.environ.get("EDGE_AGENT_CONFIG")
    if env:
        return Path(env).expanduser()
    import click

    return Path(click.get_app_dir("edge-agent")) / "config.toml"


def db_path() -> Path:
    """The session database: ``$EDGE_AGENT_DB``, else ``edge-agent.db`` in click's app dir."""
    env = os.environ.get("EDGE_AGENT_DB")
    if env:
        return Path(env).expanduser()
    import click

    return Path(click.get_app_dir("edge-agent")) / "edge-agent.db"


def models_dir() -> Path:
    """Where trained models live: ``models/`` next to the config file (``tune --learn`` writes there)."""
    return config_path().parent / "models"


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    if not path.exists():
        return Config(path=path)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(read_small(path) or "")  # a FIFO or a device is refused, not read forever
    except Unreadable as e:
        raise ConfigError(f"cannot read config {path}: {e}: fix or remove the file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML ({e}): fix or remove the file") from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise ConfigError(f"config {path} nests arrays or tables too deeply: fix or remove the file") from None
    cfg = Config(path=path)
    for section, values in data.items():
        if section == "prices":
            cfg.prices = _prices(path, values)
            continue
        if section == "policy":
            cfg.policy = _policy_params(path, values)
            continue
        if section not in SCHEMA:
            raise ConfigError(f"config {path}: unknown section [{section}]: use {', '.join([*SCHEMA, 'prices', 'policy'])}")
        if not isinstance(values, dict):
            raise ConfigError(f"config {path}: [{section}] must be a table")
        for key, value in values.items():
            want = SCHEMA[section].get(key)
            if want is None:
                raise ConfigError(f"config {path}: unknown key {section}.{key}: use {', '.join(SCHEMA[section])}")
            rule = RULES.get((section, key))
            if not isinstance(value, want) or isinstance(value, bool) or (rule and not rule[1](value)):
                got = "" if section == "keys" else f" (got {value!r})"  # never echo what may be a secret
                raise ConfigError(f"config {path}: {section}.{key} must be {_wants(section, key)}{got}: fix its value")
        setattr(cfg, section, dict(values))
    return cfg


def _prices(path: Path, values: Any) -> dict[str, Any]:
    from cloud.pricing import MAX_PRICE, Price

    out = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config {path}: [prices] must hold tables like [prices.\"model\"]")
    for model, p in values.items():
        if not isinstance(p, dict) or not {"input", "output"} <= set(p) or set(p) - set(PRICE_KEYS):
            raise ConfigError(f"config {path}: prices.{model} needs input and output (optional cached_input, cache_write)")
        for k, v in p.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0 <= v <= MAX_PRICE:
                raise ConfigError(f"config {path}: prices.{model}.{k} must be >= 0 and finite, in USD per 1M tokens,"
                                  f" at most {MAX_PRICE:,.0f} (got {v!r}): fix its value")
        out[model] = Price(**{k: float(v) for k, v in p.items()})
    return out


def _policy_params(path: Path, values: Any) -> dict[str, dict[str, Any]]:
    from triggers import POLICIES

    if not isinstance(values, dict):
        raise ConfigError(f'config {path}: [policy] must hold tables like [policy."trim-thr"]')
    for name, params in values.items():
        if name not in POLICIES:
            raise ConfigError(f"config {path}: unknown policy {name!r} under [policy]: use {', '.join(POLICIES)}")
        if not isinstance(params, dict) or not all(isinstance(v, (int, float, str, bool)) for v in params.values()):
            raise ConfigError(f"config {path}: policy.{name} must be a table of numbers, strings or booleans")
    return {k: dict(v) for k, v in values.items()}


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def dump_toml(data: dict[str, Any]) -> str:
    """Serialize the config's shape: tables of scalars, and tables of tables ([prices."m"], [policy."p"])."""
    import json

    lines: list[str] = []
    for section, values in data.items():
        flat = {k: v for k, v in values.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in values.items() if isinstance(v, dict)}
        if flat:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in flat.items()]
            lines.append("")
        for name, table in nested.items():
            lines.append(f"[{section}.{json.dumps(name)}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
    return "\n".join(lines)


def save_policy_params(name: str, params: dict[str, Any], path: Path | None = None) -> Path:
    """Write one policy's parameters into the config file (mode 0600), keeping everything else in it."""
    path = path or config_path()
    data: dict[str, Any] = {}
    if path.exists():
        load_config(path)  # refuse to rewrite a config that is invalid now
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(read_small(path) or "")  # load_config has just read it
    data.setdefault("policy", {}).setdefault(name, {}).update(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(dump_toml(data))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    load_config(path)  # what was written must read back
    return path
