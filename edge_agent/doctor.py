"""``edge-agent doctor`` (and bare ``edge-agent``): what will run, whether it works, and how to fix what does not.

Each check is ok, warn (works, but worth knowing) or fail (a solve would hit it). A failed check
always carries a fix, so the first run ends with something to do rather than a stack trace.
The cloud check lists models: one cheap call that spends no tokens.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cloud.adapters import sdk_error
from store import ledger, open_db

from .config import Config, config_path, load_config
from .config import db_path as default_path
from .errors import USER_ERRORS
from .factory import CloudOptions, build_caps, build_cloud, cloud_spec, open_local
from .presets import resolve_model

KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
PING_TIMEOUT_S = 10.0


@dataclass
class Check:
    name: str
    level: str  # ok | warn | fail
    detail: str
    fix: str | None = None  # what to do; always set when level is fail


def check_config() -> tuple[Any, Check]:
    path = config_path()
    try:
        cfg = load_config(path)
    except USER_ERRORS as e:
        return Config(path=path), Check("config", "fail", str(e),
                                        f"fix or move aside {path} (EDGE_AGENT_CONFIG points elsewhere)")
    note = "" if path.exists() else " (no file yet: defaults in force)"
    return cfg, Check("config", "ok", f"{path}{note}")


def check_model(model: str | None) -> tuple[dict[str, Any], Check]:
    """Resolve ``--model`` as solve would, and load it once with a small context."""
    fix = "pass --model with a preset from 'edge-agent models' or a .gguf path (or set EDGE_AGENT_MODEL)"
    info: dict[str, Any] = {"requested": model, "name": None, "path": None, "loads": False, "load_s": None}
    try:
        name, path = resolve_model(model)
        info.update(name=name, path=str(path))
        t0 = time.perf_counter()
        local = open_local(model, 512)
        local.llm
        local.close()
        info.update(loads=True, load_s=round(time.perf_counter() - t0, 2))
    except USER_ERRORS as e:
        return info, Check("local model", "fail", str(e), fix)
    return info, Check("local model", "ok", f"{name} · {path} · loads in {info['load_s']:.1f}s")


def check_compute(cfg: Any) -> tuple[dict[str, Any] | None, Check]:
    """llama.cpp's compute mode (weight repack on or off), and why: forced, or what the probe found on this CPU."""
    from . import runtime

    force = f"force with {runtime.ENV}=on|off or [local] repack in the config"
    try:
        mode = runtime.resolve(cfg.local.get("repack", "auto"))  # a broken config is the config check's
    except USER_ERRORS as e:
        return None, Check("llama.cpp compute", "fail", str(e), force.replace("force", "or force"))
    detail = f"{mode.name} (weight repack {'on' if mode.repack else 'off'}): {mode.reason}"
    if mode.source in ("probe", "cached probe"):
        detail += f" ({mode.source}; {force})"
    return mode.to_dict(), Check("llama.cpp compute", "ok", detail)


def _ping(cloud: Any) -> list[str]:
    """Model ids the endpoint lists: one request, no tokens."""
    client = cloud.adapter.client.with_options(timeout=PING_TIMEOUT_S, max_retries=0)
    return [m.id for m in client.models.list()]


def _ping_error(provider: str, e: Exception, base_url: str) -> tuple[str, str, str]:
    """(level, what went wrong, fix) for a failed models list, by the SDK's exception class."""
    env = KEY_ENV.get(provider, "the API key")
    err = sdk_error(importlib.import_module(provider), e, env, base_url)
    fixes = {
        "auth": f"set {env} to a valid key (or [keys] {provider} in the config)",
        "connection": "check --cloud-base-url / OPENAI_BASE_URL and the network; meanwhile --offline solves locally",
        "timeout": "check --cloud-base-url and the network; meanwhile --offline solves locally",
        "rate_limited": "wait a minute, or check the account's rate limits",
    }
    if err.kind in ("http_404", "http_405"):  # some compatible servers have no model list; calls may still work
        return "warn", f"{err} for the model list", "nothing, if solves reach the cloud; else check --cloud-base-url"
    return "fail", str(err), fixes.get(err.kind, "check --cloud, --cloud-base-url and the provider's status page")


def check_cloud(cfg: Any, opts: CloudOptions) -> tuple[dict[str, Any] | None, Check]:
    spec = cloud_spec(cfg, opts.spec)
    if opts.offline:
        return None, Check("cloud", "ok", f"offline (--offline){': ' + spec + ' is not called' if spec else ''}")
    if not spec:
        return None, Check("cloud", "ok", "none configured: every solve runs on the local model alone",
                           "to add one: --cloud openai:gpt-4o-mini with OPENAI_API_KEY, or [cloud] in the config; "
                           "'edge-agent cloud-local' serves a loopback stand-in")
    try:
        cloud = build_cloud(cfg, replace(opts, spec=spec, offline=False))
    except USER_ERRORS as e:
        return {"spec": spec, "answers": False}, Check(
            "cloud", "fail", str(e), "fix --cloud PROVIDER:MODEL, its API key (env or [keys]) and its price "
                                     "(--price-in/--price-out or [prices]) as the message says")
    url = getattr(cloud.adapter, "base_url", None) or f"the {cloud.provider} default endpoint"
    info: dict[str, Any] = {"spec": spec, "provider": cloud.provider, "model": cloud.model,
                            "base_url": getattr(cloud.adapter, "base_url", None), "answers": False, "listed": None}
    t0 = time.perf_counter()
    try:
        ids = _ping(cloud)
    except Exception as e:  # noqa: BLE001 - every SDK failure is mapped to a level and a fix
        level, what, fix = _ping_error(cloud.provider, e, str(cloud.adapter.client.base_url))
        return info, Check("cloud", level, f"{spec} at {url}: {what}", fix)
    info.update(answers=True, listed=cloud.model in ids, latency_s=round(time.perf_counter() - t0, 3))
    detail = f"{spec} at {url} answers ({len(ids)} models listed, {info['latency_s']:.2f}s)"
    if cloud.model not in ids:
        shown = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
        return info, Check("cloud", "warn", f"{detail}, but {cloud.model!r} is not among them",
                           f"check the model name in --cloud (listed: {shown or 'none'})")
    return info, Check("cloud", "ok", detail)


def check_caps(cfg: Any, max_cost: float | None, db: Any, has_cloud: bool) -> tuple[dict[str, Any], Check]:
    try:
        caps = build_caps(cfg, max_cost)
    except USER_ERRORS as e:
        return {}, Check("caps", "fail", str(e), "pass --max-cost as USD >= 0")
    spent = {"spent_today_usd": 0.0, "spent_month_usd": 0.0}
    if db is not None:
        s = ledger.spend(db)
        spent = {"spent_today_usd": s["today_nusd"] / 1e9, "spent_month_usd": s["month_nusd"] / 1e9}
    info = {"session_usd": caps.session_usd, "day_usd": caps.day_usd, "month_usd": caps.month_usd, **spent}
    fmt = lambda v: "none" if v is None else f"${v:.4f}"  # noqa: E731
    detail = (f"session {fmt(caps.session_usd)} · day {fmt(caps.day_usd)} (spent {fmt(spent['spent_today_usd'])}) · "
              f"month {fmt(caps.month_usd)} (spent {fmt(spent['spent_month_usd'])})")
    for scope, cap, used in (("day", caps.day_usd, spent["spent_today_usd"]),
                             ("month", caps.month_usd, spent["spent_month_usd"])):
        if cap is not None and used >= cap:
            return info, Check("caps", "fail", f"{detail}: the {scope} cap is used up, every cloud call is refused",
                               f"raise max_cost_{scope} under [budget] in the config, or wait for the next {scope}")
    if has_cloud and caps.session_usd is None and caps.day_usd is None and caps.month_usd is None:
        return info, Check("caps", "warn", f"{detail}: cloud spend is unbounded",
                           "add [budget] max_cost_day = 1.0 to the config, or pass --max-cost USD")
    return info, Check("caps", "ok", detail)


def check_overruns(db: Any) -> tuple[list[dict[str, Any]], Check]:
    """Endpoints whose usage claimed more than a call's reservation: their bills are not bounded by max_tokens."""
    found = ledger.overrun_endpoints(db) if db is not None else []
    if not found:
        return found, Check("cloud billing", "ok", "no endpoint has billed past a reservation")
    shown = "; ".join(f"{e['provider']}:{e['model']} {e['calls']} overrun call(s) in {e['sessions']} session(s) (claimed ${e['claimed_usd']:.6f}, "
                      f"booked ${e['booked_usd']:.6f}, last {e['last'][:10]})" for e in found)
    return found, Check(
        "cloud billing", "warn", f"usage past max_tokens (booked at the reservation, the endpoint skipped for the "
                                 f"rest of each session): {shown}",
        "check what the endpoint bills (a proxy or server that ignores max_tokens, or misreports usage); "
        "'edge-agent cost' shows claimed beside booked")


def check_db(db_path: str | None) -> tuple[Any, Check]:
    path = Path(db_path).expanduser() if db_path else default_path()
    if not path.exists():
        return None, Check("database", "ok", f"{path} (not created yet: the first solve creates it)")
    try:
        db = open_db(path, create=False)
    except USER_ERRORS as e:
        return None, Check("database", "fail", str(e), "move the file aside, or pass --db / EDGE_AGENT_DB elsewhere")
    return db, Check("database", "ok", f"{path} · {db['sessions'].count} sessions")


def diagnose(model: str | None, cloud: CloudOptions, db_path: str | None) -> dict[str, Any]:
    """Run every check; never raises for a problem it can describe."""
    cfg, c_config = check_config()
    compute_info, c_compute = check_compute(cfg)
    model_info, c_model = check_model(model) if compute_info is not None else (
        {"requested": model, "loads": False}, Check("local model", "fail", "not loaded: llama.cpp cannot run here",
                                                    "see the llama.cpp compute check"))
    cloud_info, c_cloud = check_cloud(cfg, cloud)
    db, c_db = check_db(db_path)
    caps_info, c_caps = check_caps(cfg, cloud.max_cost, db, cloud_info is not None)
    overruns, c_billing = check_overruns(db)
    if db is not None:
        db.close()
    checks = [c_compute, c_model, c_cloud, c_caps, c_billing, c_db, c_config]
    return {
        "ok": all(c.level != "fail" for c in checks),
        "checks": [asdict(c) for c in checks],
        "compute": compute_info,
        "model": model_info,
        "cloud": cloud_info,
        "caps": caps_info,
        "overruns": overruns,
        "paths": {"db": str(Path(db_path).expanduser() if db_path else default_path()), "config": str(config_path())},
    }
