"""What the commands print with rich: the streaming step renderer, progress, tables and the doctor's findings."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def console(stderr: bool = False) -> Console:
    out = Console(stderr=stderr, highlight=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = 160  # piped output: do not squeeze tables into 80 columns
    return out


class Renderer:
    """Streams steps as they are written: a label per step, then its text token by token."""

    def __init__(self, verbose: bool) -> None:
        self.console = console()
        self.verbose = verbose

    def step_start(self, index: int, author: str) -> None:
        self._pending = ""
        self._started = False
        style = "cyan" if author == "local" else "magenta"
        self.console.print(f"[{style}]── step {index} · {author}[/{style}]")

    def text(self, piece: str) -> None:
        # Hold back whitespace until more text follows, so the blank-line separator is not echoed.
        self._pending += piece
        body = self._pending.rstrip()
        if not body:
            return
        if not self._started:
            body = body.lstrip()
            self._started = True
        self.console.file.write(body)
        self.console.file.flush()
        self._pending = self._pending[len(self._pending.rstrip()) :]

    def step_end(self, step) -> None:
        self.console.file.write("\n")
        if self.verbose and step.author == "cloud":
            self.console.print(f"[dim]   {step.tokens} tok (local tokenizer) · cloud {step.seconds:.2f}s · {step.trigger}[/dim]")
        elif self.verbose:
            s = step.signals
            self.console.print(
                f"[dim]   {step.tokens} tok · {step.seconds:.2f}s · finish={step.finish} · "
                f"H mean {s.mean_entropy:.2f} max {s.max_entropy:.2f} · p1 min {s.min_top1:.2f}[/dim]"
            )

    def sample_start(self, index: int, n: int, session_id: str) -> None:
        kind = "greedy" if index == 0 else "sampled"
        self.console.print(f"[bold]══ solution {index + 1}/{n} · {kind} · session {session_id}[/bold]")

    def sample_done(self, index: int, n: int, session_id: str, result) -> None:
        """One line as a sample decoded beside the greedy one ends (they run together, shown quietly)."""
        answer = result.answer if result.answer is not None else "no answer"
        self.console.print(f"[dim]\n✓ solution {index + 1}/{n} · sampled · session {session_id} · {result.status} · "
                           f"{answer}[/dim]")

    def handover_start(self, agreement: float, cloud: bool) -> None:
        """The vote agreed too little: the cloud alone solves the problem (or cannot, offline)."""
        what = "the cloud solves it alone" if cloud else "no cloud now (offline): the vote stands"
        self.console.print(f"[bold]══ handover · agreement {agreement:.2f} · {what}[/bold]")

    def trigger(self, event, action: str) -> None:
        """A badge when a trigger fires, with its numbers."""
        self.console.file.write("\n")
        nums = "" if event.score is None else f" {event.score:.3g} vs {event.threshold:.3g}" if event.threshold is not None else f" {event.score:.3g}"
        why = event.detail.get("reason") or event.detail.get("test") or ""
        self.console.print(f"[black on yellow] ⚑ {event.trigger}{' · ' + why if why else ''}{nums} → {action} [/black on yellow]")

    def summary(self, report: dict) -> None:
        u = report["usage"]
        answer = report["answer"]
        status = report["status"]
        if answer is not None:
            self.console.print(f"[bold green]Answer: {answer}[/bold green]")
        else:
            self.console.print(f"[bold yellow]No final answer ({status}).[/bold yellow]")
        if report.get("samples"):
            self.console.print(vote_line(report["samples"]), markup=False)
        if report.get("handover"):
            self.console.print(handover_line(report["handover"]), markup=False)
        rate = u["local_tokens"] / u["local_s"] if u["local_s"] else 0.0
        self.console.print(
            f"[dim]{u['local_steps']} local / {u['cloud_steps']} cloud steps · {u['local_tokens']} local tokens "
            f"({rate:.0f} tok/s) · cloud {u['cloud_input_tokens']} in / {u['cloud_output_tokens']} out · "
            f"${u['cost_usd']:.4f} · {u['wall_s']:.1f}s · status {status} · session {report['session_id']}[/dim]"
        )


def vote_line(s: dict[str, Any]) -> str:
    """``vote: 3 · 3/5 agree (0.60) · answers 3, 3, 4, –, 3`` (– is no answer; a sample not run yet is ·)."""
    shown = ", ".join("–" if a is None else a for a in s["answers"])
    left = "" if s["complete"] else " · unfinished: continue with 'edge-agent resume'"
    t = s.get("total") or {}
    spent = f" · all {s['n']}: {t['local_tokens']} local tokens, {t['wall_s']:.1f}s" if t else ""
    return (f"vote: {s['winner'] if s['winner'] is not None else 'none'} · {s['votes']}/{s['n']} agree "
            f"({s['agreement']:.2f}) · answers {shown}{spent}{left}")


def handover_line(h: dict[str, Any]) -> str:
    """``handover: agreement below 0.60 · the cloud answered 18 · session ... · $0.0002``."""
    if not h["handed"]:
        return f"handover: none · the vote agrees at or above {h['below']:.2f}"
    if h["session_id"] is None:
        return f"handover: due (agreement below {h['below']:.2f}), not run: continue with 'edge-agent resume'"
    what = (f"the cloud answered {h['answer']}" if h["cloud_answered"] else
            f"{h['status']}, no cloud answer: the vote stands")
    return f"handover: agreement below {h['below']:.2f} · {what} · session {h['session_id']} · ${h['cost_usd']:.4f}"


def join_progress() -> Callable[[int, int], None]:
    """A callback that shows progress while a chunked preset is joined (first use only)."""
    state: dict[str, Any] = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = Progress(console=console(stderr=True), transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task("joining model chunks", total=total)
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state["bar"].stop()

    return progress


def bench_progress(quiet: bool) -> Progress:
    """The bar a bench run advances once per (policy, problem); it vanishes afterwards when ``quiet``."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console(stderr=True), transient=quiet)


def _money(v: float | None) -> str:
    return "none" if v is None else f"${v:.4f}"


# -- inspection ---------------------------------------------------------------------------------------


def print_sessions(rows: list[dict[str, Any]]) -> None:
    table = Table("id", "created", "status", "steps", "answer", "model", "problem")
    for r in rows:
        problem = " ".join(r["problem"].split())
        table.add_row(
            r["id"], r["created_at"][:19], r["status"], str(r["steps"]), r["answer"] or "",
            r["model"], problem[:48] + ("…" if len(problem) > 48 else ""),
        )
    console().print(table)


def print_trace(report: dict[str, Any], rows: list[dict[str, Any]], verbose: bool, list_events: bool) -> None:
    """``show``: the session's steps (``rows`` from the store) with their events, then the summary line."""
    out = console()
    out.print(f"[bold]session {report['session_id']}[/bold] · {report['model']} · policy {report['policy']} · "
              f"{report['status']}")
    out.print("problem: " + report["problem"], markup=False)
    if report.get("sample_of"):
        out.print(f"sample {report['sample_of']['index'] + 1} of session {report['sample_of']['session_id']}")
    events: dict[int, list[dict[str, Any]]] = {}
    for e in report["events"]:
        events.setdefault(e["step"], []).append(e)
    for r in rows:
        _print_step(out, r, events.get(r["idx"], []), verbose)
    if list_events:
        out.print(_events_table(report["events"]))
    if report.get("samples"):
        out.print(_samples_table(report["samples"]))
    Renderer(verbose).summary(report)


def _samples_table(s: dict[str, Any]) -> Table:
    table = Table("#", "session", "temperature", "seed", "status", "answer", title="solutions (self-consistency)")
    for row in s["sessions"]:
        table.add_row(str(row["index"] + 1), row["session_id"] or "not started", f"{row['temperature']:g}",
                      str(row["seed"]), row["status"] or "–", escape(row["answer"] or "–"))
    return table


def _print_step(out: Console, r: dict[str, Any], events: list[dict[str, Any]], verbose: bool) -> None:
    style = "cyan" if r["author"] == "local" else "magenta"
    gone = " [red](superseded)[/red]" if r["superseded_by"] else ""
    label = f"── step {r['idx']} · {r['author']} · {r['kind']}" + (f" · ⚑ {r['trigger']}" if r["trigger"] else "")
    if r["author"] == "cloud" and not r["superseded_by"]:
        why = next((e for e in events if e["trigger"] == r["trigger"]), None)
        if why and why["score"] is not None:
            label += f" (score {why['score']:.3g} vs threshold {why['threshold']})"
    out.print(f"[{style}]{label}[/{style}]{gone}")
    out.print(r["text"], markup=False)
    if verbose:
        sig = json.loads(r["signals"] or "{}")
        out.print(
            f"[dim]   {r['tokens']} tok ({r['evaluated']} evaluated) · {r['seconds']:.2f}s · finish={r['finish']} · "
            + " · ".join(f"{k}={v}" for k, v in sig.items())
            + "[/dim]"
        )
    if not r["superseded_by"]:
        for e in events:
            out.print(f"[yellow]   event {e['trigger']} → {e['action']} (score {e['score']}, threshold {e['threshold']})[/yellow]")


def _events_table(events: list[dict[str, Any]]) -> Table:
    table = Table("step", "trigger", "action", "score", "threshold", "evidence", title="trigger events")
    for e in events:
        detail = {k: v for k, v in e["detail"].items() if k != "text"}
        table.add_row(str(e["step"]), e["trigger"], e["action"], "–" if e["score"] is None else f"{e['score']:.4g}",
                      "–" if e["threshold"] is None else f"{e['threshold']:.4g}",
                      json.dumps(detail, ensure_ascii=False)[:160])
    return table


def print_models(rows: list[dict[str, Any]]) -> None:
    table = Table("preset", "installed", "size", "path / how to install", "description")
    table.columns[0].no_wrap = True
    table.columns[3].overflow = "fold"
    for r in rows:
        size = f"{r['size_bytes'] / 2**20:.0f} MiB" if r["size_bytes"] else ""
        if r["installed"]:
            where = r["path"]
        elif r["install"]:
            where = r["install"]
        else:
            where = f"parts installed; join with 'edge-agent models --install {r['name']}'"
        table.add_row(r["name"], "yes" if r["installed"] else "no", size, where, r["description"])
    console().print(table)


def print_cost(out: dict[str, Any]) -> None:
    table = Table("day", "provider", "model", "calls", "in", "out", "cached", "USD", "claimed USD")
    for r in out["rows"]:
        claimed = f"{r['claimed_usd']:.6f}" + (f" ({r['overrun_calls']} overrun)" if r["overrun_calls"] else "")
        table.add_row(r["day"], r["provider"], r["model"], str(r["calls"]), str(r["input_tokens"]),
                      str(r["output_tokens"]), str(r["cached_tokens"]), f"{r['cost_usd']:.6f}", claimed)
    caps, left, claimed = out["caps_usd"], out["remaining_usd"], out["claimed_usd"]
    screen = console()
    screen.print(table)
    screen.print(
        f"today ${out['today_usd']:.6f} · month ${out['month_usd']:.6f} · all time ${out['total_usd']:.6f}\n"
        f"caps: session {_money(caps['session'])} · day {_money(caps['day'])} (left {_money(left['day'])}) · "
        f"month {_money(caps['month'])} (left {_money(left['month'])})"
    )
    if out["overrun_calls"]:
        screen.print(
            f"providers claimed ${claimed['today']:.6f} today · ${claimed['month']:.6f} this month · "
            f"${claimed['total']:.6f} all time: {out['overrun_calls']} call(s) billed past their reservation "
            "(booked at it; see 'edge-agent doctor')", markup=False)


def print_policies(rows: list[dict[str, Any]]) -> None:
    table = Table("policy", "cloud", "parameters (default)", "from config", "what it does")
    for r in rows:
        table.add_row(r["name"], "yes" if r["uses_cloud"] else "no",
                      ", ".join(f"{k}={v}" for k, v in r["parameters"].items()) or "–",
                      ", ".join(f"{k}={v}" for k, v in r["configured"].items()) or "–", r["summary"])
    console().print(table)
    console().print("Set parameters inline: --policy 'trim-thr(tau=0.6)', or in the config as a table "
                    "policy.\"NAME\" (e.g. written by 'edge-agent tune').", markup=False)


MARKS = {"ok": "[green]✓[/green]", "warn": "[yellow]![/yellow]", "fail": "[red]✗[/red]"}


def print_doctor(result: dict[str, Any], first_run: bool = False) -> None:
    """The doctor's checks, one line each, every problem followed by its fix."""
    out = console()
    if first_run:
        out.print("[bold]edge-agent[/bold]: solve multi-step problems on a small local model, "
                  "calling a cloud model only at the steps that need it.\n")
    for c in result["checks"]:
        # soft_wrap: one line per finding (the terminal wraps), so a problem line is always followed by its fix
        out.print(f"{MARKS[c['level']]} [bold]{c['name']:<12}[/bold] {escape(c['detail'])}", soft_wrap=True)
        if c["fix"]:
            label = "tip" if c["level"] == "ok" else "fix"
            out.print(f"  [dim]{label}:[/dim] {escape(c['fix'])}", soft_wrap=True)
    if first_run:
        out.print("\nnext: edge-agent solve \"PROBLEM\" · edge-agent chat · edge-agent serve "
                  "(OpenAI-compatible API) · edge-agent --help", markup=False)


# -- bench and tune -----------------------------------------------------------------------------------


def print_summaries(summaries: list[Any], meta: dict[str, Any], front: Iterable[Any] = ()) -> None:
    """The bench table (★ marks the Pareto front), CPT, and a warning per policy that lost its cloud."""
    table = Table("policy", "n", "acc", "PGR", "offload", "cloud in/pb", "cloud out/pb", "out share", "USD/pb",
                  "spent/pb", "ΔIBC", "wall s mean", "p50", "p90", "local s", "cloud s")
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    marks = {s.policy for s in front}
    for s in summaries:
        table.add_row(("★ " if s.policy in marks else "") + s.policy, str(s.n), f"{s.accuracy:.1%}", f(s.pgr, ".2f"),
                      f(s.offload_ratio, ".2f"), f"{s.cloud_in_per_problem:.0f}", f"{s.cloud_out_per_problem:.0f}",
                      f(s.cloud_out_share, ".0%"), f"{s.usd_per_problem:.6f}", f"{s.spent_usd_per_problem:.6f}",
                      f(s.delta_ibc, "+.2f"), f"{s.wall_mean:.1f}", f"{s.wall_p50:.1f}", f"{s.wall_p90:.1f}",
                      f"{s.local_s_mean:.1f}", f"{s.cloud_s_mean:.1f}")
    out = console()
    out.print(table)
    cpt = meta.get("cpt") or {}
    if cpt:
        out.print("CPT (cloud-only output-token share needed for PGR ≥ x): "
                  + " · ".join(f"{k} {'–' if v is None else format(v, '.0%')}" for k, v in cpt.items()))
    replayed = sum(s.replayed_steps for s in summaries)
    computed = sum(s.computed_steps for s in summaries)
    if replayed:
        real = sum(s.local_s_mean * s.n for s in summaries)
        would = sum(s.would_be_local_s_mean * s.n for s in summaries)
        out.print(f"step cache: {replayed} local steps replayed, {computed} computed · local time {real:.1f}s "
                  f"(would have been {would:.1f}s without the cache)")
    else:
        out.print(f"step cache: {computed} local steps computed, none replayed")
    for s in summaries:
        if s.cloud_unavailable:
            out.print(f"[yellow]warning: the cloud was unavailable on {s.cloud_unavailable} of {s.n} problems "
                      f"under {s.policy}; those solves finished locally (see events in bench.db)[/yellow]")


def print_atlas(result: dict[str, Any]) -> None:
    """The atlas's reference rows, then each free signal's AUROC for "a cloud step here fixes / breaks"."""
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    table = Table("policy", "acc", "PGR", "cloud out/pb", "share of cloud-only")
    for r in result["rows"]:
        table.add_row(r["policy"], f"{r['accuracy']:.1%}", f(r["pgr"], ".2f"), f"{r['cloud_out_per_problem']:.0f}",
                      f(r["share"], ".1%"))
    out = console()
    out.print(f"atlas: {result['n']} problems, {result['branches']} step branches")
    out.print(table)
    signals = Table("signal at step k", "AUROC: a cloud step here fixes a wrong answer", "AUROC: ... breaks a right one")
    for name, v in result["auroc"].items():
        signals.add_row(name, f(v["fix"], ".2f"), f(v["break"], ".2f"))
    out.print(signals)


def print_router_fit(result: dict[str, Any], saved: str | None) -> None:
    """The router's cross-validated PGR at each share beside the references, its AUROCs, the ablation."""
    f = lambda v, fmt: "–" if v is None else format(v, fmt)  # noqa: E731
    out = console()
    b = result["base"]
    out.print(f"router, {result['folds']}-fold cross-validation by problem: {result['n']} problems, "
              f"{result['rows']} candidate steps · local {b['local']:.1%}, cloud {b['cloud']:.1%}, "
              f"cloud-only {b['cloud_out']:.0f} output tokens per problem")
    shares = list(result["router"]["at"])
    table = Table("policy", *(f"PGR at {float(s):.0%} (share used)" for s in shares))
    rows = {"router (held out)": result["router"]["at"], **result["references"]}
    for name, at in rows.items():
        table.add_row(name, *(f"{f(at[s]['pgr'], '.2f')} ({at[s]['share']:.1%})" for s in shares))
    out.print(table)
    r = result["router"]
    out.print(f"held-out AUROC: gain {f(r['auroc_gain'], '.2f')}, harm {f(r['auroc_harm'], '.2f')}, "
              f"problem fixable {f(r['auroc_fixable'], '.2f')}")
    if result.get("bootstrap"):
        bs = result["bootstrap"]
        out.print(f"router minus random at {float(bs['share']):.0%}: {bs['mean']:+.1%} accuracy "
                  f"(95% bootstrap interval over problems {bs['low']:+.1%} to {bs['high']:+.1%})")
    if result.get("ablation"):
        abl = Table("features", *(f"PGR at {float(s):.0%}" for s in shares), "AUROC gain", "AUROC harm")
        for name, v in result["ablation"].items():
            abl.add_row(name, *(f(v["pgr_at"][s], ".2f") for s in shares), f(v["auroc_gain"], ".2f"),
                        f(v["auroc_harm"], ".2f"))
        out.print(abl)
    if saved:
        out.print(f"saved {saved} · use it with --policy router")
