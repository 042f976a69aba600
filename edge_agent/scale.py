"""``atlas build --ray`` and ``bench --ray``: the problems sharded over Ray actors, one database and one ledger.

Why it is shaped this way:

- **Ray stays optional.** It is imported here, inside functions, and only with ``--ray``; without it the
  commands run as they always did (``pip install 'edge-agent[scale]'`` brings Ray).
- **An actor per worker.** Each holds its own edge model, opened on first use and kept for every
  problem it is given. It runs llama.cpp with ``threads`` threads and reserves as many CPUs from Ray,
  so the workers of one machine never ask for more cores than it has.
- **The problem is the unit.** A worker computes one problem at a time in its own scratch database
  with the very code one process runs (``atlas.build`` or ``Bench.run`` on that one problem, its step
  and response caches seeded from the run's database), and returns the problem's rows. The driver
  writes them into the output database in one transaction as they arrive, so the output never holds
  half a problem: a killed driver loses only the problems in flight, and the same command (bench:
  with ``--resume``) computes those alone. Which worker ran a problem, and when, changes nothing in it.
- **One ledger.** Every reservation and settlement goes to one ledger actor on the driver's node, on
  the output database, through the existing ``BEGIN IMMEDIATE`` reservations; a worker sends no cloud
  request before the ledger granted its worst case. Not the shared database: SQLite's locking (WAL
  above all) is unsafe on a network file system, so workers on other machines cannot share the
  file, and the driver's node is the one place it is local. The ledger holds the driver's caps, so a
  worker's own config cannot loosen them, and a problem in flight keeps its spend on the books even
  if the driver dies before the problem's rows arrive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import store

from .atlas import AtlasPlan, build
from .bench import Bench
from .config import Config, load_config
from .errors import EdgeAgentError, InputError
from .factory import Agents, CloudOptions, RunOptions, build_caps

OBJECT_STORE_BYTES = 160 * 1024 * 1024  # rows and seeds only: the models never pass through it
SCRATCH = "edge-agent-shard-"  # a worker's scratch folder in the temp dir: SCRATCH + its pid + "-..."


class ShardError(EdgeAgentError):
    """The Ray cluster or one of its workers failed (not the problem or the options)."""


@dataclass(frozen=True)
class RayOptions:
    """Where the workers run: ``auto`` starts a local Ray, else the address of a running cluster."""

    address: str = "auto"
    workers: int | None = None  # None: the cluster's CPUs // threads
    threads: int = 1  # llama.cpp threads per worker, and the CPUs each worker reserves

    def __post_init__(self) -> None:
        import importlib.util

        if self.address != "auto":
            if "://" in self.address:
                raise InputError(f"--ray {self.address}: Ray Client addresses are not supported (the ledger runs "
                                 "beside the output database): run the command on a node of the cluster with --ray HOST:PORT")
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise InputError(f"--ray {self.address}: pass 'auto' or HOST:PORT, the address 'ray start --head' printed")
        if importlib.util.find_spec("ray") is None:  # said before any folder or database is made
            raise InputError("--ray needs Ray: pip install 'edge-agent[scale]' (or drop --ray)")


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker builds its agents from: the driver's options and config (its keys stay behind)."""

    cfg: Config
    run: RunOptions
    cloud: CloudOptions
    threads: int


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'edge-agent[scale]' (or drop --ray)") from None
    return ray


def _reachable(address: str) -> None:
    """Refuse a cluster address where nothing listens (Ray itself would retry it for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(f"no Ray cluster answers at {address} ({e.strerror or e}): start one with "
                         "'ray start --head' and pass the address it prints, or use --ray auto") from None


def _connect(ray: Any, opts: RayOptions) -> None:
    import logging

    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if opts.address == "auto":
            ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, **quiet)
        else:
            _reachable(opts.address)
            quiet.pop("include_dashboard")
            ray.init(address=opts.address, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = "" if opts.address == "auto" or os.environ.get("RAY_AUTH_MODE") else \
            "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token)"
        raise InputError(f"cannot join Ray at {opts.address!r} ({first[:160]}){hint}") from None


def _workers(ray: Any, opts: RayOptions) -> int:
    cpus = int(ray.cluster_resources().get("CPU", 0))
    n = opts.workers or max(1, cpus // opts.threads)
    if n * opts.threads > cpus:
        raise InputError(f"{n} Ray workers x {opts.threads} threads need {n * opts.threads} CPUs but the cluster "
                         f"has {cpus}: lower --ray-workers or --ray-threads")
    return n


@contextlib.contextmanager
def worker_pool(opts: RayOptions, spec: WorkerSpec, db: Any, db_path: str) -> Iterator[Any]:
    """Ray up, the ledger actor on this node, ``n`` workers seeded with the caches: a ``ray.util.ActorPool``."""
    ray = _ray()
    from ray.util import ActorPool
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    _connect(ray, opts)
    try:
        n = _workers(ray, opts)
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        caps = build_caps(spec.cfg, spec.cloud.max_cost).nusd()
        ledger = ray.remote(num_cpus=0, scheduling_strategy=here)(LedgerService).remote(db_path, caps)
        seed = ray.put(store.shard.cache_rows(db))
        worker = ray.remote(num_cpus=opts.threads)(ShardWorker)
        actors = [worker.remote(spec, ledger, seed) for _ in range(n)]
        with _unwrapped(ray):
            ray.get([a.ready.remote() for a in actors] + [ledger.ready.remote()])
        yield ActorPool(actors)
        with _unwrapped(ray):
            ray.get([a.close.remote() for a in actors])
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _unwrapped(ray: Any) -> Iterator[None]:
    """A worker's error as itself (an InputError stays one line), a dead worker as one ShardError."""
    try:
        yield
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise ShardError(f"a Ray worker failed: {_first_line(e)}") from None
    except ray.exceptions.RayError as e:
        raise ShardError(f"a Ray worker failed: {_first_line(e)}: see the Ray logs (/tmp/ray/session_latest/logs)") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln]
    return (errors[-1] if errors else lines[0] if lines else type(e).__name__)[:200]


def _results(ray: Any, pool: Any, submit: Callable[[Any, Any], Any], jobs: Sequence[Any]) -> Iterator[Any]:
    """Each job's result as soon as a worker finishes it, whichever worker and in whatever order."""
    it = pool.map_unordered(submit, jobs)
    while True:
        with _unwrapped(ray):
            try:
                result = next(it)
            except StopIteration:
                return
        yield result


# -- the driver -------------------------------------------------------------------------------------------


def spec_for(cfg: Config, run: RunOptions, cloud: CloudOptions, opts: RayOptions) -> WorkerSpec:
    return WorkerSpec(replace(cfg, keys={}), run, cloud, opts.threads)


class _Pending(Exception):
    pass


class _Probe:
    """An agent that refuses to run: ``build`` with it reads what is done and stops at the first thing to do."""

    def start(self, *args: Any, **kwargs: Any) -> str:
        raise _Pending

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise _Pending


def needs_work(db: Any, problem: dict[str, str], settings: Any, plan: AtlasPlan) -> bool:
    """Whether ``build`` would compute anything for this problem (it writes nothing before it would)."""
    try:
        build(lambda policy: _Probe(), db, [problem], settings, plan)
    except _Pending:
        return True
    return False


def build_atlas(opts: RayOptions, spec: WorkerSpec, db: Any, db_path: str, problems: Sequence[dict[str, str]],
                settings: Any, plan: AtlasPlan, progress: Callable[[dict[str, Any]], None]) -> None:
    """``atlas.build`` over Ray: each unfinished problem on a worker, its rows written here as they arrive."""
    todo = []
    for p in problems:
        if needs_work(db, p, settings, plan):
            todo.append(p)
        else:
            progress(store.atlas_problem(db, p["id"]))
    if not todo:
        return
    with worker_pool(opts, spec, db, db_path) as pool:
        submit = lambda a, p: a.atlas.remote(p, store.shard.problem_rows(db, p["id"]), settings, plan)  # noqa: E731
        for rows in _results(_ray(), pool, submit, todo):
            store.shard.put_rows(db, rows)
            progress(rows["atlas_problems"][0])


def run_bench(opts: RayOptions, spec: WorkerSpec, db: Any, out: Path, problems: Sequence[dict[str, str]],
              names: Sequence[str], settings: Any, progress: Callable[[dict[str, Any]], None]) -> list[dict]:
    """``Bench.run`` over Ray: a problem's unfinished policies on one worker; rows, then results lines, written here."""
    found = Bench(out, None, settings).done()
    todo = []
    for p in problems:
        left = [n for n in names if (n, p["id"]) not in found]
        todo += [(p, left)] if left else []
        for n in names:
            if (n, p["id"]) in found:
                progress(found[(n, p["id"])])
    if todo:
        with worker_pool(opts, spec, db, str(out / "bench.db")) as pool:
            submit = lambda a, job: a.bench.remote(job[0], job[1], settings)  # noqa: E731
            for results, rows in _results(_ray(), pool, submit, todo):
                store.shard.put_rows(db, rows)  # the sessions first: a results line never names a missing one
                with open(out / "results.jsonl", "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in results)
                for r in results:
                    found[(r["policy"], r["id"])] = r
                    progress(r)
    return [found[(n, p["id"])] for n in names for p in problems]


# -- the actors (Ray wraps these classes with ray.remote when a pool starts) -----------------------------


class LedgerService:
    """The one ledger: every worker's reservations and settlements, on the run's database, under its caps."""

    def __init__(self, db_path: str, caps_nusd: dict[str, int | None]) -> None:
        self.db = store.open_db(db_path)
        self.caps = caps_nusd

    def ready(self) -> bool:
        return True

    def reserve(self, session: dict[str, Any], **call: Any) -> Any:
        """``store.ledger.reserve`` under the driver's caps; the session's row comes first (the calls need it)."""
        store.shard.ensure_session(self.db, session)
        return store.ledger.reserve(self.db, **{**call, "caps_nusd": self.caps})

    def settle(self, reservation_id: str, **call: Any) -> dict[str, Any]:
        """``store.ledger.settle``; returns the call's row as written, for the worker's own database."""
        return store.shard.cloud_call(self.db, store.ledger.settle(self.db, reservation_id, **call))


class RemoteLedger:
    """A worker's stand-in for ``store.ledger``: reserve and settle on the ledger actor, keep a copy of each call."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def reserve(self, db: Any, *, session_id: str, **call: Any) -> Any:
        import ray

        session = store.shard.session_row(db, session_id)
        return ray.get(self.service.reserve.remote(session, session_id=session_id, **call))

    def settle(self, db: Any, reservation_id: str, **call: Any) -> str:
        import ray

        row = ray.get(self.service.settle.remote(reservation_id, **call))
        store.shard.put_rows(db, {"cloud_calls": [row]})  # the session's report counts it, as one process would
        return row["id"]


def _sweep_scratch() -> None:
    """Remove the scratch folders of workers that died without closing (a driver killed with SIGKILL)."""
    from store.lease import alive

    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*-*"):
        pid = path.name[len(SCRATCH):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


class ShardWorker:
    """One worker: its edge model (opened once, kept), its scratch database, problems one at a time."""

    def __init__(self, spec: WorkerSpec, ledger: Any, seed: dict[str, list[dict[str, Any]]]) -> None:
        os.environ["EDGE_AGENT_THREADS"] = str(spec.threads)  # read when the model opens
        _sweep_scratch()
        self.dir = tempfile.mkdtemp(prefix=f"{SCRATCH}{os.getpid()}-")
        self.db = store.open_db(os.path.join(self.dir, "shard.db"))
        store.shard.put_rows(self.db, seed)
        cfg = replace(spec.cfg, keys=load_config().keys)  # this node's keys: none travel through Ray
        self.agents = Agents.build(cfg, spec.run, spec.cloud)
        self.ledger = RemoteLedger(ledger)

    def ready(self) -> bool:
        return True

    def _agent(self, policy: str) -> Any:
        agent = self.agents.agent(policy, self.db)
        agent.ledger = self.ledger
        return agent

    def atlas(self, problem: dict[str, str], seed: dict[str, list[dict[str, Any]]], settings: Any,
              plan: AtlasPlan) -> dict[str, list[dict[str, Any]]]:
        """Build (or finish, from ``seed``) one problem's atlas; its rows and the cache entries it added."""
        store.shard.put_rows(self.db, seed)
        marks = store.shard.cache_marks(self.db)
        build(self._agent, self.db, [problem], settings, plan)
        return {**store.shard.problem_rows(self.db, problem["id"]), **store.shard.cache_rows(self.db, marks)}

    def bench(self, problem: dict[str, str], policies: list[str], settings: Any) -> tuple[list[dict], dict]:
        """One problem under ``policies``: the results rows, and its sessions' rows and new cache entries."""
        marks = store.shard.cache_marks(self.db)
        out = Path(tempfile.mkdtemp(dir=self.dir))
        try:
            results = Bench(out, lambda policy, db: self._agent(policy), settings).run([problem], policies, self.db)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rows = store.shard.session_rows(self.db, [r["session_id"] for r in results])
        return results, {**rows, **store.shard.cache_rows(self.db, marks)}

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)
