"""Benchmark harness: every problem under every policy, graded with math-verify, resumable.

Each finished (policy, problem) is appended to ``results.jsonl`` at once, so an interrupted run
continues where it stopped with ``--resume``. Sessions go to ``bench.db`` in the output folder.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import strict_json
from .errors import InputError
from .report import session_report

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def load_dataset(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    rows = []
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
                    raise InputError(f"{path}:{n} is not JSON (or nests too deeply): each line must be an object "
                                     "with id, problem, answer") from None
                if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k]
                                                        for k in ("id", "problem", "answer")):
                    raise InputError(f"{path}:{n} lacks id, problem or answer (strings)")
                rows.append(row)
                if limit and len(rows) >= limit:
                    break
    except OSError as e:
        raise InputError(f"cannot read dataset {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"dataset {path} is not UTF-8 text (near line {n + 1}): convert it to UTF-8") from None
    if not rows:
        raise InputError(f"dataset {path} has no problems")
    return rows


def require_grader() -> None:
    """Grading needs math-verify: check before any problem is solved (and any cloud call paid for)."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        raise InputError("grading answers needs math-verify, which is not installed: "
                         "pip install math-verify (or install edge-agent[bench])") from None


def fallback_answer(steps: list[dict[str, Any]]) -> str | None:
    """When no step states a final answer, the last number of the last step (the same rule for every policy)."""
    for step in reversed(steps):
        nums = _NUMBER.findall(step["text"])
        if nums:
            return nums[-1].replace(",", "")
    return None


def grade(gold: str, predicted: str | None) -> bool:
    """math-verify equivalence; a unit or words around a number are tolerated ("3 bolts" = 3)."""
    if not predicted:
        return False
    from math_verify import parse, verify

    gold_parsed = parse(f"${gold}$")
    candidates = [predicted]
    nums = _NUMBER.findall(predicted)
    if nums and nums[-1] != predicted:
        candidates.append(nums[-1].replace(",", ""))
    for c in candidates:
        try:
            if verify(gold_parsed, parse(f"\\boxed{{{c}}}")):
                return True
        except Exception:  # math-verify can raise on odd LaTeX; a failed parse is a wrong answer
            continue
    return False


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


@dataclass
class Summary:
    policy: str
    n: int
    accuracy: float
    offload_ratio: float | None
    cloud_in_per_problem: float
    cloud_out_per_problem: float
    usd_per_problem: float  # what the policy costs (cache hits at their would-be price)
    wall_mean: float
    wall_p50: float
    wall_p90: float
    local_s_mean: float
    cloud_s_mean: float
    pgr: float | None = None
    delta_ibc: float | None = None
    cloud_unavailable: int = 0  # problems on which the cloud failed (the solve went on locally)
    spent_usd_per_problem: float = 0.0  # money actually spent (0 for replies served from the cache)
    cloud_out_share: float | None = None  # cloud output tokens as a share of cloud-only's
    replayed_steps: int = 0  # local steps replayed from the step cache
    computed_steps: int = 0  # local steps decoded by the model
    would_be_local_s_mean: float = 0.0  # local seconds per problem without the step cache


def summarize(results: list[dict[str, Any]]) -> list[Summary]:
    """Per-policy figures, with PGR and ΔIBC against the local-only and cloud-only rows of the same run."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["policy"], []).append(r)
    out = []
    for policy, rs in by.items():
        n = len(rs)
        local_steps = sum(r["usage"]["local_steps"] for r in rs)
        cloud_steps = sum(r["usage"]["cloud_steps"] for r in rs)
        walls = [r["usage"]["wall_s"] for r in rs]
        out.append(Summary(
            policy=policy,
            n=n,
            accuracy=sum(r["correct"] for r in rs) / n,
            offload_ratio=local_steps / (local_steps + cloud_steps) if local_steps + cloud_steps else None,
            cloud_in_per_problem=sum(r["usage"]["cloud_input_tokens"] for r in rs) / n,
            cloud_out_per_problem=sum(r["usage"]["cloud_output_tokens"] for r in rs) / n,
            usd_per_problem=sum(r["usage"].get("would_be_cost_usd", r["usage"]["cost_usd"]) for r in rs) / n,
            spent_usd_per_problem=sum(r["usage"]["cost_usd"] for r in rs) / n,
            wall_mean=statistics.mean(walls),
            wall_p50=_pct(walls, 0.5),
            wall_p90=_pct(walls, 0.9),
            local_s_mean=statistics.mean(r["usage"]["local_s"] for r in rs),
            cloud_s_mean=statistics.mean(r["usage"]["cloud_s"] for r in rs),
            cloud_unavailable=sum(1 for r in rs if r.get("cloud_available") is False and r["policy"] != "local-only"),
            replayed_steps=sum(r["usage"].get("replayed_steps", 0) for r in rs),
            computed_steps=local_steps - sum(r["usage"].get("replayed_steps", 0) for r in rs),
            would_be_local_s_mean=statistics.mean(r["usage"].get("would_be_local_s", r["usage"]["local_s"]) for r in rs),
        ))
    s_acc = next((s.accuracy for s in out if s.policy == "local-only"), None)
    cloud = next((s for s in out if s.policy == "cloud-only"), None)
    for s in out:
        if s_acc is not None and cloud is not None and cloud.accuracy != s_acc:
            s.pgr = (s.accuracy - s_acc) / (cloud.accuracy - s_acc)
        if cloud is not None and cloud.cloud_out_per_problem > 0:
            s.cloud_out_share = s.cloud_out_per_problem / cloud.cloud_out_per_problem
        if cloud is not None and cloud.usd_per_problem > 0 and cloud.accuracy > 0 and s.usd_per_problem > 0:
            ibc, ibc_cloud = s.accuracy / s.usd_per_problem, cloud.accuracy / cloud.usd_per_problem
            s.delta_ibc = (ibc - ibc_cloud) / ibc_cloud
    return out


def cpt(summaries: list[Summary], target: float) -> float | None:
    """CPT(x): the least cloud output tokens, as a share of cloud-only's, of any policy point with PGR >= x.

    Read off the measured points (no interpolation); None if no point reaches x.
    """
    shares = [s.cloud_out_share for s in summaries
              if s.pgr is not None and s.cloud_out_share is not None and s.pgr >= target - 1e-12]
    return min(shares) if shares else None


def pareto_front(summaries: list[Summary], cost: Callable[[Summary], float] = lambda s: s.cloud_out_per_problem) -> list[Summary]:
    """Points no other point beats on both accuracy (higher) and cost (lower), cheapest first."""
    front = []
    for s in sorted(summaries, key=lambda s: (cost(s), -s.accuracy)):
        if not front or s.accuracy > front[-1].accuracy:
            front.append(s)
    return front


def quantile(values: list[float], q: float, *, lower: bool = False) -> float:
    """Quantile, q in [0, 1]: linear interpolation (numpy's default), or with ``lower`` the sample at
    or below it, so that the share of values strictly below the result never exceeds q."""
    if not values:
        raise InputError("no step scores to calibrate on: run the policy on some problems first")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    if lower:
        return s[lo]
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Bench:
    """Runs (policy x problem), appending each result as it finishes."""

    def __init__(self, out: Path, make_agent: Callable[[str, Any], Any], settings: Any) -> None:
        self.out = out
        self.make_agent = make_agent
        self.settings = settings
        self.results_path = out / "results.jsonl"

    def done(self) -> dict[tuple[str, str], dict]:
        if not self.results_path.exists():
            return {}
        rows = {}
        for line in self.results_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    r = json.loads(line)
                except (ValueError, RecursionError):  # a line cut by a kill mid-write is simply redone
                    continue
                rows[(r["policy"], r["id"])] = r
        return rows

    def run(self, problems: list[dict], policies: list[str], db: Any, progress: Callable[[dict], None] | None = None) -> list[dict]:
        finished = self.done()
        results = []
        for policy in policies:
            agent = None
            for p in problems:
                key = (policy, p["id"])
                if key in finished:
                    results.append(finished[key])
                    if progress:
                        progress(finished[key])
                    continue
                agent = agent or self.make_agent(policy, db)
                res = agent.solve(p["problem"], self.settings)
                rep = session_report(db, res.session_id, verbose=False)
                predicted = rep["answer"] if rep["answer"] is not None else fallback_answer(rep["steps"])
                row = {
                    "policy": policy, "id": p["id"], "gold": p["answer"], "predicted": predicted,
                    "stated": rep["answer"] is not None, "correct": grade(p["answer"], predicted),
                    "status": rep["status"], "session_id": res.session_id, "usage": rep["usage"],
                    "events": len(rep["events"]),
                    "cloud_available": rep["cloud"]["available"],
                }
                with open(self.results_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                results.append(row)
                if progress:
                    progress(row)
        return results


def write_reports(out: Path, results: list[dict], summaries: list[Summary], meta: dict) -> dict[str, Path]:
    paths = {"json": out / "results.json", "csv": out / "results.csv", "png": out / "accuracy_vs_cloud_tokens.png"}
    meta = {**meta, "cpt": {f"{int(x * 100)}%": cpt(summaries, x) for x in (0.5, 0.8, 0.95)}}
    paths["json"].write_text(strict_json.dumps({"meta": meta, "summary": [asdict(s) for s in summaries], "results": results}, indent=1))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(summaries[0])))
        w.writeheader()
        for s in summaries:
            w.writerow(asdict(s))
    if not plot(paths["png"], summaries, meta):
        del paths["png"]
    return paths


def plot(path: Path, summaries: list[Summary], meta: dict) -> bool:
    """Accuracy against cloud output tokens, a curve per policy family (PNG); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    families: dict[str, list[Summary]] = {}
    for s in summaries:  # variants of one policy (trim-thr(tau=...)) are drawn as one curve
        families.setdefault(s.policy.split("(")[0], []).append(s)
    for family, points in families.items():
        points = sorted(points, key=lambda s: s.cloud_out_per_problem)
        xs, ys = [p.cloud_out_per_problem for p in points], [p.accuracy * 100 for p in points]
        ax.plot(xs, ys, marker="o", ms=7, label=family, linestyle="-" if len(points) > 1 else "none")
        for p in points:
            if len(points) > 1:
                ax.annotate(p.policy[len(family):].strip("()"), (p.cloud_out_per_problem, p.accuracy * 100),
                            textcoords="offset points", xytext=(5, -10), fontsize=7)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("cloud output tokens per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{meta.get('dataset', '')} · n={summaries[0].n} · {meta.get('model', '')}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
