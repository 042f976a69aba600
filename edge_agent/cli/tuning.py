"""``bench`` and ``tune``: run a dataset under policies, sweep or calibrate a policy, train trim-learned."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click

import store
from triggers import Policy, get_policy, parse_spec, split_specs
from triggers.learned import fit, save_model
from triggers.policies import typed_params
from triggers.scorers import MODEL_SCORERS

from .. import strict_json
from ..bench import Bench, Summary, load_dataset, pareto_front, quantile, require_grader, summarize, write_reports
from ..config import Config, load_config, save_policy_params
from ..errors import InputError
from ..factory import Agents, CloudOptions, RunOptions, build_caps, build_cloud, policy_label, require_cloud
from ..learn import label_traces, training_info
from ..state import load_state
from ..presets import default_model
from .options import cloud_options, json_option, limit_option, ray_options, run_options
from .render import bench_progress, console, join_progress, print_summaries


step_cache_option = click.option(
    "--step-cache/--no-step-cache", default=True, show_default=True,
    help="Replay greedy local steps already computed in --out's bench.db (same model, context and cap); "
         "reports count replayed steps and their would-be time.")


@dataclass(frozen=True)
class Sweep:
    """Where a dataset run reads and writes: the problems (the first ``limit``), the output folder, resume or not."""

    dataset: str
    limit: int | None
    out: str
    resume: bool = False


@click.command()
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="JSONL file with fields id, problem, answer.")
@click.option("--policies", default="local-only,cloud-only", show_default=True, help="Comma-separated policies to compare.")
@limit_option
@run_options("dataset")
@click.option("--out", "out_dir", default="bench/out", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for results.jsonl/json/csv, the plot and bench.db.")
@click.option("--resume", is_flag=True, help="Continue a run in --out, skipping finished (policy, problem) pairs.")
@click.option("--cache-responses", is_flag=True,
              help="Replay identical cloud requests from bench.db (for sweeps); hits cost nothing and are reported as would-be cost.")
@step_cache_option
@cloud_options
@ray_options
@json_option
def bench(dataset: str, policies: str, limit: int | None, run: RunOptions, out_dir: str, resume: bool,
          cache_responses: bool, step_cache: bool, cloud: CloudOptions, ray: Any, as_json: bool) -> None:
    """Run every problem under every policy; report accuracy, PGR, CPT, cloud tokens, cost and time."""
    run = replace(run, step_cache=step_cache)
    cfg = load_config()
    names = [policy_label(cfg, p) for p in split_specs(policies)]
    if not names:
        raise InputError("--policies is empty: name at least one policy, e.g. local-only,cloud-only")
    summaries, paths, meta = run_bench(cfg, Sweep(dataset, limit, out_dir, resume), names, run,
                                       replace(cloud, cache=cache_responses), as_json, ray)
    if as_json:
        click.echo(strict_json.dumps({"meta": meta, "summary": [asdict(s) for s in summaries],
                               "files": {k: str(v) for k, v in paths.items()}}))
        return
    print_summaries(summaries, meta)
    console().print("wrote " + ", ".join(str(p) for p in paths.values()))


def run_bench(cfg: Config, sweep: Sweep, names: list[str], run: RunOptions, cloud: CloudOptions,
              quiet: bool, ray: Any = None) -> tuple[list[Summary], dict[str, Path], dict[str, Any]]:
    """Run (policy x problem) into ``sweep.out`` with a progress bar; returns (summaries, report paths, meta).

    ``ray`` (RayOptions): the problems are sharded over Ray workers (``edge_agent.scale``)."""
    problems = load_dataset(Path(sweep.dataset), sweep.limit)
    require_grader()  # before any problem is solved: a missing grader would stop the run after paying for it
    settings = run.settings()
    agents = Agents.build(cfg, run, cloud, progress=join_progress())
    require_cloud(names, agents.cloud, sweep=True)
    out = Path(sweep.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "results.jsonl").exists() and not sweep.resume:
        raise InputError(f"{out} already holds results: pass --resume to continue them, or another --out")
    db = store.open_db(str(out / "bench.db"))
    if ray is None:
        runner = Bench(out, lambda policy, db: agents.agent(policy, db), settings)
        work = lambda progress: runner.run(problems, names, db, progress)  # noqa: E731
    else:  # the same runs, a problem per Ray worker; Ray is imported only here
        from ..scale import run_bench as run_on_ray
        from ..scale import spec_for

        spec = spec_for(cfg, run, cloud, ray)
        work = lambda progress: run_on_ray(ray, spec, db, out, problems, names, settings, progress)  # noqa: E731
    results = _run_with_progress(work, len(problems) * len(names), quiet)
    summaries = summarize(results)
    meta = {"dataset": Path(sweep.dataset).name, "n": len(problems), "model": run.model or default_model(),
            "cloud": f"{agents.cloud.provider}:{agents.cloud.model}" if agents.cloud else None, "policies": names,
            "max_steps": run.max_steps, "max_step_tokens": run.max_step_tokens, "cache_responses": cloud.cache}
    paths = write_reports(out, results, summaries, meta)
    if "png" not in paths:  # the table and files are written all the same
        click.echo("note: no plot: matplotlib is not installed (pip install matplotlib, or edge-agent[bench])",
                   err=True)
    return summaries, paths, json.loads(paths["json"].read_text())["meta"]


def _run_with_progress(work: Callable[[Callable[[dict], None]], list[dict]], total: int, quiet: bool) -> list[dict]:
    """The bench run (``work(progress)``), with a bar that tallies correct answers per policy."""
    tally: dict[str, list[int]] = {}
    with bench_progress(quiet) as bar:
        task = bar.add_task("bench", total=total)

        def progress(row: dict[str, Any]) -> None:
            t = tally.setdefault(row["policy"], [0, 0])
            t[0] += row["correct"]
            t[1] += 1
            bar.update(task, advance=1, description=" · ".join(f"{k} {v[0]}/{v[1]}" for k, v in tally.items()))

        return work(progress)


@click.command()
@click.option("--dataset", type=click.Path(dir_okay=False, path_type=str),
              help="JSONL file with fields id, problem, answer (tuning reads only this).")
@click.option("--atlas", "atlas_dir", type=click.Path(file_okay=False, path_type=str),
              help="Instead of --dataset and --out: evaluate on an atlas ('atlas build'), replaying its local "
                   "steps and cloud replies; only where a policy leaves the atlas is anything computed (and kept).")
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
@limit_option
@run_options("dataset")
@click.option("--out", "out_dir", default="bench/tune", show_default=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for the sweep's results (re-running resumes it).")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also run local-only and cloud-only, so PGR and CPT can be computed.")
@click.option("--cache-responses/--no-cache-responses", default=True, show_default=True,
              help="Replay identical cloud requests so a grid does not pay twice for them.")
@step_cache_option
@cloud_options
@json_option
def tune(dataset: str | None, atlas_dir: str | None, policy_name: str | None, grid: str | None, target_escalation_rate: float | None,
         target_pgr: float, learn: bool, label: str, write_config: bool, limit: int | None, run: RunOptions,
         out_dir: str, baselines: bool, cache_responses: bool, step_cache: bool, cloud: CloudOptions,
         as_json: bool) -> None:
    """Sweep a policy's parameters (Pareto front), calibrate its threshold, or train trim-learned (--learn)."""
    run = replace(run, step_cache=step_cache)
    cfg = load_config()
    source, out = _sweep_source(dataset, atlas_dir, out_dir)
    sweep = Sweep(source, limit, out, resume=True)  # re-running a tune continues it
    if learn:
        if policy_name or grid or target_escalation_rate is not None:
            raise InputError("--learn trains trim-learned: drop --policy, --grid and --target-escalation-rate")
        return learn_router(cfg, sweep, label, run, cloud, as_json)
    if not policy_name:
        raise InputError("pass --policy NAME (or --learn to train trim-learned)")
    name, fixed = parse_spec(policy_name)
    base = get_policy(policy_name)
    if (grid is None) == (target_escalation_rate is None):
        raise InputError("pass either --grid or --target-escalation-rate")
    summaries: list[Summary] = []
    front: list[Summary] = []
    meta: dict[str, Any] = {}
    if target_escalation_rate is not None:
        chosen = calibrate(cfg, sweep, base, fixed, target_escalation_rate, run, as_json)
    else:
        points = grid_points(grid)
        labels = [get_policy(name, {**fixed, **p}).label for p in points]
        names = (["local-only", "cloud-only"] if baselines else []) + labels
        summaries, _, meta = run_bench(cfg, sweep, names, run, replace(cloud, cache=cache_responses), as_json)
        front = pareto_front([s for s in summaries if s.policy in labels])
        reach = [s for s in front if s.pgr is not None and s.pgr >= target_pgr]
        best = reach[0] if reach else max(front, key=lambda s: (s.accuracy, -s.cloud_out_per_problem))
        chosen = dict(points[labels.index(best.policy)])
    written = str(save_policy_params(name, typed_params(name, chosen))) if write_config and chosen else None
    if as_json:
        click.echo(strict_json.dumps({"policy": name, "chosen": chosen, "config": written,
                               "pareto_front": [s.policy for s in front],
                               "summary": [asdict(s) for s in summaries]}))
        return
    if summaries:
        print_summaries(summaries, meta, front)
        console().print("Pareto front (★): " + " → ".join(s.policy for s in front))
    console().print(f"chosen: {name} {chosen}" + (f" · written to {written}" if written else ""))


def _sweep_source(dataset: str | None, atlas_dir: str | None, out_dir: str) -> tuple[str, str]:
    """(dataset, out): the given ones, or an atlas's problems and folder (its caches make a sweep nearly free)."""
    if (dataset is None) == (atlas_dir is None):
        raise InputError("pass either --dataset FILE or --atlas DIR")
    if atlas_dir is None:
        return dataset, out_dir
    problems = Path(atlas_dir) / "problems.jsonl"
    if not problems.is_file():
        raise InputError(f"no atlas in {atlas_dir}: build one with 'edge-agent atlas build --out {atlas_dir}'")
    return str(problems), atlas_dir


def grid_points(grid: str) -> list[dict[str, str]]:
    """``"tau=0.5,0.6;scorer=logprob"`` -> every combination, as parameter dicts."""
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


def calibrate(cfg: Config, sweep: Sweep, base: Policy, fixed: dict[str, Any], rate: float, run: RunOptions,
              quiet: bool) -> dict[str, Any]:
    """RouteLLM-style: tau = the quantile of local step scores below which ``rate`` of steps fall."""
    param = getattr(base, "threshold_param", None)
    if param != "tau" or any(n in MODEL_SCORERS for n in base.needs):
        raise InputError(f"policy {base.label} has no free step-score threshold to calibrate: use --grid")
    run_bench(cfg, sweep, ["local-only"], run, CloudOptions(offline=True), quiet)
    db = store.open_db(str(Path(sweep.out) / "bench.db"))
    sids = [r["session_id"] for (policy, _), r in Bench(Path(sweep.out), None, None).done().items()
            if policy == "local-only"]
    scores = []
    for sid in sids:  # replay the policy's own step score over each trace
        state = load_state(db, sid)
        base.reset(state.problem)
        for i, s in enumerate(state.steps):
            if s.author == "local" and s.kind == "step":
                scores += [e.score for e in base.check(state.steps[:i], s) if e.trigger == "step_score"]
    tau = quantile(scores, rate, lower=True)  # the realised escalation rate stays <= the target
    if not quiet:
        console().print(f"{len(scores)} local step scores from {len(sids)} problems; "
                        f"{param} = {rate:.0%} quantile = {tau}")
    return {**fixed, param: tau}


def learn_router(cfg: Config, sweep: Sweep, label: str, run: RunOptions, cloud_opts: CloudOptions,
                 quiet: bool) -> None:
    """Collect local-only traces, label their steps with the cloud, fit and save trim-learned (see edge_agent.learn)."""
    cloud = build_cloud(cfg, cloud_opts)
    if cloud is None:
        raise InputError("--learn labels steps with the cloud: pass --cloud PROVIDER:MODEL (not --offline)")
    run_bench(cfg, sweep, ["local-only"], run, CloudOptions(offline=True), quiet)
    ids = {p["id"] for p in load_dataset(Path(sweep.dataset), sweep.limit)}
    traces = [r for (policy, pid), r in Bench(Path(sweep.out), None, None).done().items()
              if policy == "local-only" and pid in ids]
    db = store.open_db(str(Path(sweep.out) / "bench.db"))
    settings = run.settings()
    agents = Agents(run.model, run.n_ctx, cloud, build_caps(cfg, cloud_opts.max_cost), progress=join_progress())
    data = label_traces(agents.agent("local-only", db), db, traces, label, settings)
    fitted = fit(data.rows, data.labels,
                 training=training_info(sweep.dataset, data, label, run.model or default_model(), cloud, settings))
    path, saved = save_model(fitted)
    train_acc = sum((saved.predict(x) >= 0.5) == bool(y) for x, y in zip(data.rows, data.labels)) / len(data.labels)
    result = {"model": str(path), "version": saved.version, "policy": f"trim-learned(model=v{saved.version})",
              "steps": len(data.labels), "correct": sum(data.labels), "skipped": data.skipped,
              "problems": data.problems, "label": label, "train_accuracy": round(train_acc, 4)}
    if quiet:
        click.echo(strict_json.dumps(result))
        return
    console().print(f"{result['steps']} steps from {result['problems']} problems ({result['correct']} labelled "
                    f"correct by {label}, {result['skipped']} skipped) · train accuracy {train_acc:.0%}\n"
                    f"saved {path}: use --policy 'trim-learned' (latest) or '{result['policy']}'")
