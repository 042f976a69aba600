"""Builds what the commands run, from typed options: the local model, the cloud, the caps, policy labels, agents.

Every command (solve, resume, bench, tune, serve, chat, doctor) goes through here, so a rule is written
once: which cloud the flags and the config name, which policies need one, and what a session stores so
that ``resume`` rebuilds the same agent (``session_meta`` writes it, ``agent_for_session`` reads it back).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import store
from cloud.budget import Caps
from cloud.client import make_cloud
from cloud.client import parse_spec as parse_cloud_spec
from cloud.pricing import MAX_PRICE, Price
from triggers import get_policy
from triggers import parse_spec as parse_policy_spec

from .agent import Agent, Settings
from .config import Config, load_config
from .config import db_path as default_db_path
from .errors import InputError
from .presets import env_threads, open_model
from .step_cache import CachedModel

if TYPE_CHECKING:  # pragma: no cover
    from store import Database

    from .model import StepModel

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunOptions:
    """The local side of a run: which model and policy, and the per-session limits."""

    model: str | None = None  # preset name, GGUF path or script:FILE.json; None is the default preset
    policy: str | None = "local-only"  # a policy spec; None where the command picks one (serve) or takes a list
    max_steps: int = 12
    max_step_tokens: int = 256
    n_ctx: int = 4096
    temperature: float = 0.0
    seed: int = 0
    step_cache: bool = False  # replay greedy local steps from the run's database (bench, tune: on)

    def settings(self) -> Settings:
        """The per-session knobs (validated: a bad value raises before anything is loaded)."""
        return Settings(self.max_steps, self.max_step_tokens, self.temperature, self.n_ctx, self.seed)


@dataclass(frozen=True)
class CloudOptions:
    """The cloud side: which cloud, at what price, under which session cap."""

    spec: str | None = None  # PROVIDER:MODEL; None falls back to [cloud] in the config
    base_url: str | None = None
    offline: bool = False
    max_cost: float | None = None  # USD cap for one session; None falls back to [budget]
    price_in: float | None = None  # USD per 1M tokens, for a model with no known price
    price_out: float | None = None
    cache: bool = False  # replay identical requests (bench and tune sweeps)


def cloud_spec(cfg: Config, spec: str | None) -> str | None:
    """``--cloud``, else ``[cloud] provider:model`` from the config, else None."""
    if not spec and cfg.cloud.get("provider") and cfg.cloud.get("model"):
        return f"{cfg.cloud['provider']}:{cfg.cloud['model']}"
    return spec


def build_cloud(cfg: Config, opts: CloudOptions) -> Any:
    """The configured cloud, or None (offline or none configured)."""
    price_in, price_out = opts.price_in, opts.price_out
    if price_in is not None or price_out is not None:
        if price_in is None or price_out is None or not all(math.isfinite(p) and p >= 0 for p in (price_in, price_out)):
            raise InputError("give both --price-in and --price-out, as USD per 1M tokens (finite, >= 0)")
        for flag, p in (("--price-in", price_in), ("--price-out", price_out)):
            if p > MAX_PRICE:
                raise InputError(f"{flag} {p:g} USD per 1M tokens is more than any model costs: give the price per "
                                 f"1M tokens, at most {MAX_PRICE:,.0f}")
    spec = cloud_spec(cfg, opts.spec)
    if opts.offline or not spec:
        if spec:
            parse_cloud_spec(spec)  # still refuse a malformed spec
        return None
    return make_cloud(
        spec,
        base_url=opts.base_url or cfg.cloud.get("base_url"),
        api_key=cfg.keys.get(spec.partition(":")[0]),
        prices=cfg.prices,
        price=Price(price_in, price_out) if price_in is not None else None,
        timeout_s=float(cfg.cloud.get("timeout_s", 60)),
        max_retries=int(cfg.cloud.get("max_retries", 2)),
        cooldown_s=float(cfg.cloud.get("cooldown_s", 60)),
        cache=opts.cache,
    )


def build_caps(cfg: Config, max_cost: float | None) -> Caps:
    """The spending caps: ``--max-cost`` for the session, else the config's, and the day and month caps."""
    if max_cost is not None and not (math.isfinite(max_cost) and max_cost >= 0):
        raise InputError(f"--max-cost must be >= 0 and finite (USD), got {max_cost}")
    b = cfg.budget
    return Caps(
        session_usd=max_cost if max_cost is not None else b.get("max_cost_session"),
        day_usd=b.get("max_cost_day"),
        month_usd=b.get("max_cost_month"),
    )


def policy_label(cfg: Config, spec: str) -> str:
    """The policy with config defaults baked in, as the label a session stores (resume rebuilds it)."""
    return get_policy(spec, cfg.policy.get(parse_policy_spec(spec)[0])).label


def uses_cloud(label: str) -> bool:
    """Whether the policy calls the cloud (a run without one keeps its local steps)."""
    return get_policy(label).uses_cloud


def require_cloud(labels: Sequence[str], cloud: Any, *, sweep: bool = False) -> None:
    """Refuse to start policies that call the cloud when there is none; ``sweep`` words it for bench and tune."""
    if cloud is not None or not any(uses_cloud(label) for label in labels):
        return
    if sweep:
        raise InputError("these policies need a cloud: pass --cloud PROVIDER:MODEL (see 'edge-agent cloud-local')")
    raise InputError(f"policy {labels[0]} needs a cloud: pass --cloud PROVIDER:MODEL (or use --policy local-only)")


def session_meta(opts: CloudOptions, cloud: Any) -> dict[str, Any]:
    """What a new session stores besides its settings so that ``resume`` rebuilds the same cloud and cap.

    The prices matter for a model with no known price: without them the cloud cannot be rebuilt.
    """
    return {"cloud_base_url": cloud.adapter.base_url if cloud else None, "max_cost": opts.max_cost,
            "price_in": opts.price_in, "price_out": opts.price_out}


def stored_cloud(state: store.SessionState, offline: bool) -> CloudOptions:
    """The cloud options a session was started with (what ``session_meta`` wrote), read back."""
    s = state.settings
    spec = f"{state.cloud_provider}:{state.cloud_model}" if state.cloud_provider else None
    return CloudOptions(spec=spec, base_url=s.get("cloud_base_url"), offline=offline or bool(s.get("offline")),
                        max_cost=s.get("max_cost"), price_in=s.get("price_in"), price_out=s.get("price_out"))


def open_local(model: str | None, n_ctx: int, progress: Progress | None = None) -> StepModel:
    """The local model (weights load on first use), with ``EDGE_AGENT_THREADS`` threads."""
    return open_model(model, n_ctx=n_ctx, n_threads=env_threads(), progress=progress)


@dataclass
class Agents:
    """Builds agents that share one local model (opened on first use), one cloud and one set of caps."""

    model: str | None
    n_ctx: int
    cloud: Any = None
    caps: Caps = field(default_factory=Caps)
    offline: bool = False
    progress: Progress | None = None  # shown while a chunked preset is joined (first use only)
    continuation: str = "auto"  # [cloud] continuation: how cloud steps are asked for
    step_cache: bool = False
    read: str = "auto"  # [cloud] read: how verify-repair's reads are asked for (cloud.reads.read_mode)
    _local: StepModel | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from cloud.reads import check_read_setting

        check_read_setting(self.cloud, self.read)  # a read the cloud cannot do: refused before anything runs

    @classmethod
    def build(cls, cfg: Config, run: RunOptions, cloud: CloudOptions, progress: Progress | None = None) -> Agents:
        """Check the caps, then build the cloud (both fail before any model or database is touched)."""
        caps = build_caps(cfg, cloud.max_cost)
        return cls(run.model, run.n_ctx, build_cloud(cfg, cloud), caps, cloud.offline, progress,
                   continuation=cfg.cloud.get("continuation", "auto"), step_cache=run.step_cache,
                   read=cfg.cloud.get("read", "auto"))

    def local(self) -> StepModel:
        if self._local is None:
            self._local = open_local(self.model, self.n_ctx, self.progress)
        return self._local

    def agent(self, policy: str, db: Database, *, offline: bool | None = None) -> Agent:
        """An agent running ``policy`` on ``db``; ``offline`` overrides the options' flag (chat's /offline)."""
        local: StepModel = CachedModel(self.local(), db) if self.step_cache else self.local()
        agent = Agent(local, db, policy, cloud=self.cloud, caps=self.caps,
                      offline=self.offline if offline is None else offline, continuation=self.continuation)
        agent.read_setting = self.read
        return agent


def open_db(db_path: str | None, *, create: bool = True) -> Database:
    """The session database: ``--db`` / ``EDGE_AGENT_DB``, else the one in the app dir."""
    return store.open_db(db_path or default_db_path(), create=create)


def agent_for_session(db: Database, session_id: str, offline: bool = False, progress: Progress | None = None, *,
                      finished_ok: bool = False) -> Agent:
    """The agent that continues a stored session: its model, policy, settings, cloud, prices and cap.

    ``finished_ok``: the session itself may be finished (a parent whose samples are not all done)."""
    state = store.load_state(db, session_id)
    if not finished_ok:
        store.ensure_resumable(state)
    settings = Settings.from_dict(state.settings)
    cfg = load_config()
    opts = stored_cloud(state, offline)
    cloud = build_cloud(cfg, opts) if opts.spec else None  # the prices the session started with
    caps = build_caps(cfg, opts.max_cost)
    read = state.settings.get("read", cfg.cloud.get("read", "auto"))  # as the session began ([cloud] read then)
    return Agents(state.model_path, settings.n_ctx, cloud, caps, opts.offline, progress,
                  read=read).agent(state.policy, db)
