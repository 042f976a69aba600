"""``atlas build`` and ``atlas report``: what escalating each step would have done, and the references."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

import store

from .. import strict_json
from ..atlas import ATLAS_DB, AtlasPlan, build, check_meta, plot, summarize
from ..bench import load_dataset
from ..config import load_config
from ..errors import InputError
from ..factory import Agents, CloudOptions, RunOptions, open_db, require_cloud
from ..presets import default_model
from ..step_cache import model_identity
from .options import cloud_options, json_option, limit_option, ray_options, run_options
from .render import bench_progress, console, join_progress, print_atlas, print_router_fit


@click.group()
def atlas() -> None:
    """The routing atlas: what one cloud step at each step would have done (build it, then report on it)."""


@atlas.command("build")
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="JSONL file with fields id, problem, answer.")
@limit_option
@run_options("dataset")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Folder for the atlas: bench.db and problems.jsonl (resumable: run the same command again).")
@click.option("--max-k", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Branches per trace: one per step k < MAX_K.")
@click.option("--handover/--no-handover", default=True, show_default=True,
              help="Also a handover branch at k = 0 and at the first k whose step branch fixed the answer.")
@click.option("--cloud-only/--no-cloud-only", default=True, show_default=True,
              help="Also the cloud alone on each problem (the reference for PGR).")
@cloud_options
@ray_options
@json_option
def atlas_build(dataset: str, limit: int | None, run: RunOptions, out_dir: str, max_k: int, handover: bool,
                cloud_only: bool, cloud: CloudOptions, ray: Any, as_json: bool) -> None:
    """Build (or finish) an atlas: the edge's trace per problem and a cloud-step branch at each step."""
    problems = load_dataset(Path(dataset), limit)
    cfg = load_config()
    run = replace(run, step_cache=True)  # a branch replays the trace's steps before k
    cloud = replace(cloud, cache=True)  # kept, so 'tune --atlas' replays a policy's escalations from the atlas
    agents = Agents.build(cfg, run, cloud, progress=join_progress())
    require_cloud(["branch-at"], agents.cloud, sweep=True)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot use --out {out}: {e.strerror}: pass a writable folder") from None
    db = open_db(str(out / ATLAS_DB))
    check_meta(db, _meta(run, agents), str(out))
    with open(out / "problems.jsonl", "w", encoding="utf-8") as f:  # what 'tune --atlas' evaluates on
        f.writelines(json.dumps(p) + "\n" for p in problems)
    settings, plan = run.settings(), AtlasPlan(max_k, handover, cloud_only)
    with bench_progress(as_json) as bar:
        task = bar.add_task("atlas", total=len(problems))
        advance = lambda row: bar.update(task, advance=1, description=f"atlas {row['id']}")  # noqa: E731
        if ray is None:
            build(lambda policy: agents.agent(policy, db), db, problems, settings, plan, advance)
        else:  # the same build, a problem per Ray worker; Ray is imported only here
            from ..scale import build_atlas, spec_for

            build_atlas(ray, spec_for(cfg, run, cloud, ray), db, str(out / ATLAS_DB), problems, settings, plan, advance)
    result = summarize(db)
    if as_json:
        click.echo(strict_json.dumps(result))
        return
    print_atlas(result)
    console().print(f"atlas in {out / ATLAS_DB} · 'edge-agent atlas report {out}' prints it again · "
                    f"'edge-agent tune --atlas {out} --policy P --grid ...' evaluates a policy on it")


def _meta(run: RunOptions, agents: Agents) -> dict[str, Any]:
    edge = agents.local()
    return {"edge": {"name": run.model or default_model(), "identity": model_identity(edge)},
            "cloud": f"{agents.cloud.provider}:{agents.cloud.model}", "max_steps": run.max_steps,
            "max_step_tokens": run.max_step_tokens}


@atlas.command("report")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@json_option
def atlas_report(directory: str, as_json: bool) -> None:
    """Print an atlas: local, cloud, oracle, always-step-k and random rows, and the signals' AUROC."""
    path = Path(directory) / ATLAS_DB
    if not path.is_file():
        raise InputError(f"no atlas in {directory}: build one with 'edge-agent atlas build --out {directory}'")
    result = summarize(open_db(str(path), create=False))
    png = plot(result, Path(directory) / "atlas.png")
    if as_json:
        click.echo(strict_json.dumps({**result, "plot": str(png) if png else None}))
        return
    print_atlas(result)
    if png:
        console().print(f"wrote {png}")


@atlas.command("fit")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@click.option("--share", default=0.15, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True),
              help="Target share of cloud-only's output tokens: sets the saved model's threshold.")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2, 100),
              help="Cross-validation folds (by problem).")
@click.option("--c", "c", default=0.3, show_default=True, type=click.FloatRange(0.0, min_open=True),
              help="Inverse regularization strength of the two logistic heads.")
@click.option("--ablation/--no-ablation", default=True, show_default=True,
              help="Also judge the router without each feature group, and with each group alone.")
@click.option("--save/--no-save", default=True, show_default=True,
              help="Save the router fit on every problem as the next router-vN.json in the models dir.")
@json_option
def atlas_fit(directory: str, share: float, folds: int, c: float, ablation: bool, save: bool, as_json: bool) -> None:
    """Learn the router from an atlas: cross-validated by problem, reported beside random and the oracle."""
    from triggers.router import save_router

    from ..router_fit import bootstrap, dataset, evaluate, final_model

    path = Path(directory) / ATLAS_DB
    if not path.is_file():
        raise InputError(f"no atlas in {directory}: build one with 'edge-agent atlas build --out {directory}'")
    db = open_db(str(path), create=False)
    problems = dataset(db)
    if len(problems) < folds:
        raise InputError(f"the atlas has {len(problems)} problems, fewer than --folds {folds}: build more or pass fewer")
    max_k = max((r[0] for p in problems for r in p.rows), default=0) + 1
    result = evaluate(problems, c=c, n_folds=folds, max_k=max_k, ablation=ablation)
    result["bootstrap"] = bootstrap(problems, result["picks"], share)
    saved = None
    if save:
        meta = {"dir": str(directory), **store.atlas_meta(db)}
        file, model = save_router(final_model(problems, result, share, c, max_k, meta))
        saved, result["model"] = str(file), {"ref": model.ref, "tau": model.tau, "max_k": model.max_k}
    report = {k: v for k, v in result.items() if k != "picks"}
    (Path(directory) / "router_report.json").write_text(strict_json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if as_json:
        click.echo(strict_json.dumps(report))
        return
    print_router_fit(report, saved)


@atlas.command("read")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@run_options("dataset")
@click.option("--vocab", type=click.Choice(["same", "text"]), default="same", show_default=True,
              help="same: send the edge's token ids as they are (the cloud shares its tokenizer); text: send the "
                   "text and map the cloud's tokens back to the steps by offset.")
@click.option("--max-k", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Steps a repair may be aimed at: k < MAX_K.")
@click.option("--report-only", is_flag=True, help="Read nothing new: evaluate the reads already kept.")
@click.option("--all-branches", is_flag=True,
              help="Read every step branch, not only the one each trace's read flags (what verify-repair needs).")
@cloud_options
@json_option
def atlas_read(directory: str, run: RunOptions, vocab: str, max_k: int, report_only: bool, all_branches: bool,
               cloud: CloudOptions, as_json: bool) -> None:
    """The cloud reads every trace and step branch once (reads.jsonl), then read-driven policies are evaluated."""
    from cloud.pricing import lookup

    from ..atlas_read import READS, done_reads, read_atlas
    from ..read_eval import evaluate, load

    out = Path(directory)
    if not (out / ATLAS_DB).is_file():
        raise InputError(f"no atlas in {directory}: build one with 'edge-agent atlas build --out {directory}'")
    db = open_db(str(out / ATLAS_DB), create=False)
    cfg = load_config()
    agents = Agents.build(cfg, run, cloud, progress=join_progress())
    if not report_only:
        if agents.cloud is None:
            raise InputError("a read needs a cloud: pass --cloud PROVIDER:MODEL (see 'edge-agent cloud-local')")
        edge = agents.local()
        from ..cloud_server import Reader

        local = Reader(str(edge.path), edge.n_ctx, edge.n_threads)
        n = read_atlas(db, out, edge, agents.cloud, agents.caps, vocab=vocab, max_k=max_k, all_branches=all_branches,
                       edge_read=lambda ids: local.read(list(ids))["token_logprobs"],
                       progress=None if as_json else lambda what: console().print(f"read {what}"))
        if not as_json:
            console().print(f"{n} new reads in {out / READS}")
    summary = summarize(db)
    base = {r["policy"]: r for r in summary["rows"]}
    price = agents.cloud.price if agents.cloud is not None else lookup("local")
    problems, cloud_base = load(db, done_reads(out / READS), price)
    if not problems:
        raise InputError(f"no reads in {directory} yet: run 'edge-agent atlas read {directory} --cloud ...'")
    local_acc = sum(p.correct for p in problems) / len(problems)
    cloud_acc = _cloud_accuracy(db, {p.id for p in problems})
    result = {"dir": directory, **evaluate(problems, cloud_base, local_acc, cloud_acc, max_k),
              "atlas_n": summary["n"], "oracle": base.get("oracle (one step)")}
    (out / "read_report.json").write_text(strict_json.dumps(result, indent=1) + "\n", encoding="utf-8")
    click.echo(strict_json.dumps(result, indent=None if as_json else 1))


def _cloud_accuracy(db: Any, ids: set[str]) -> float:
    _, branches = store.atlas_rows(db)
    got = [int(b["correct"]) for b in branches if b["kind"] == "cloud_only" and b["problem_id"] in ids]
    return sum(got) / len(got) if got else 0.0


@atlas.command("drafts")
@click.argument("directory", type=click.Path(file_okay=False, path_type=str))
@limit_option
@run_options("dataset")
@click.option("--n", "n", default=5, show_default=True, type=click.IntRange(2, 64),
              help="Drafts per problem: the greedy one and N-1 sampled.")
@click.option("--sample-temperature", default=0.7, show_default=True, type=click.FloatRange(0.0, 5.0, min_open=True),
              help="Temperature of drafts 2..N.")
@click.option("--batch", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Decode a problem's drafts together in one llama.cpp batch (auto: from 8 drafts on).")
@click.option("--report-only", is_flag=True, help="Draft nothing new: evaluate the drafts already kept.")
@json_option
def atlas_drafts(directory: str, limit: int | None, run: RunOptions, n: int, sample_temperature: float, batch: str,
                 report_only: bool, as_json: bool) -> None:
    """The edge drafts each atlas problem N times, then the vote policies are evaluated against the cloud alone."""
    from cloud.pricing import lookup

    from ..atlas_drafts import build_drafts, draft_rows
    from ..samples import SampleSpec
    from ..vote_eval import problems_of, report

    out = Path(directory)
    if not (out / ATLAS_DB).is_file():
        raise InputError(f"no atlas in {directory}: build one with 'edge-agent atlas build --out {directory}'")
    db = open_db(str(out / ATLAS_DB), create=False)
    meta = store.atlas_meta(db)
    spec = SampleSpec(n, sample_temperature, batch)
    if not report_only:
        run = replace(run, model=run.model or meta.get("edge", {}).get("name"),
                      max_steps=meta.get("max_steps", run.max_steps),
                      max_step_tokens=meta.get("max_step_tokens", run.max_step_tokens), step_cache=False)
        spec.check_context(run.n_ctx)
        agents = Agents.build(load_config(), run, CloudOptions(offline=True), progress=join_progress())
        problems, _ = store.atlas_rows(db)
        todo = [p for p in problems if p["status"] == "done"][:limit]
        edge = agents.local()
        store.set_atlas_meta(db, {f"drafts@{sample_temperature:g}": {"n": n, "batch": batch, "compute": edge.compute}})
        with bench_progress(as_json) as bar:
            task = bar.add_task("drafts", total=len(todo))
            build_drafts(agents.agent("local-only", db), db, todo, run.settings(), spec,
                         lambda pid: bar.update(task, advance=1, description=f"drafts {pid}"))
    drafts = draft_rows(db, sample_temperature, n)
    if not drafts:
        raise InputError(f"no drafts in {directory} with --n {n} at --sample-temperature {sample_temperature:g} yet: "
                         f"run 'edge-agent atlas drafts {directory} --n {n}' first")
    rows, branches = store.atlas_rows(db)
    clouds = {b["problem_id"]: b for b in branches if b["kind"] == "cloud_only" and b["status"] == "done"}
    seconds = {b["problem_id"]: b["seconds"] or 0.0 for b in branches if b["kind"] == f"drafts@{sample_temperature:g}"}
    cloud_name = str(meta.get("cloud", "openai:local")).partition(":")[2]
    order = [p["id"] for p in rows]  # the build's order: the dataset's
    result = {"dir": directory, "n_drafts": n, "temperature": sample_temperature,
              **report(problems_of(order, drafts, clouds, lookup(cloud_name) or lookup("local"), seconds))}
    (out / f"vote_report_t{sample_temperature:g}_n{n}.json").write_text(strict_json.dumps(result, indent=1) + "\n",
                                                                        encoding="utf-8")
    click.echo(strict_json.dumps(result, indent=None if as_json else 1))
