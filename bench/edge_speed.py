"""Decode speed of the agent's step loop against raw llama.cpp, on the same model and prompt.

Prints, in one run:
  - raw llama.cpp decode tok/s (Llama.generate, greedy, no signals);
  - the agent's step decode tok/s with per-token entropy/top-1 signals, and the ratio;
  - tokens evaluated per step against new tokens per step (KV reuse);
  - the same step loop with the ``trigreason`` detectors run on every step (difficulty, offload,
    loop with the MiniLM embedder, warmed before timing): decode tok/s counting detector time, the
    ratio to raw, and the detectors' and the embedding's cost per step;
  - with ``--self-scorer``, the step loop with TRIM's ``self`` scorer after every step (the local
    model's P(yes) to "Is the last step correct?", KV reused): its added time per step and the ratio.

    python bench/edge_speed.py --model qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from edge_agent.local import LocalModel
from edge_agent.presets import resolve_model
from edge_agent.prompts import messages

PROBLEM = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def raw_decode(model: LocalModel, prompt: list[int], n: int) -> tuple[float, int]:
    """tok/s of llama-cpp-python's own greedy generate loop, prompt already in the KV cache."""
    llm = model.llm
    model.sync(prompt)  # prompt evaluated outside the timing, like the agent's steps
    llm.n_tokens = len(prompt) - 1
    model._kv = model._kv[: len(prompt) - 1]
    count = 0
    t0 = time.perf_counter()
    for tok in llm.generate(prompt[-1:], top_k=1, top_p=1.0, temp=0.0, reset=False):
        count += 1
        if count >= n:
            break
    dt = time.perf_counter() - t0
    # generate() evaluated tokens the model does not track: drop them, keep the prompt minus its
    # last token so the next sync re-runs exactly one token for fresh logits.
    model._kv = list(prompt[:-1])
    llm.n_tokens = len(prompt) - 1
    return count / dt, count


class TimedEmbedder:
    """Wraps the shared embedder to time each encode call the loop detector makes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def warm(self) -> None:
        self.inner.warm()

    def encode(self, texts):
        t0 = time.perf_counter()
        out = self.inner.encode(texts)
        self.seconds.append(time.perf_counter() - t0)
        return out


def agent_decode(model: LocalModel, prompt: list[int], n: int, step_tokens: int, policy=None,
                 self_scorer: bool = False) -> dict:
    """The agent's step loop; with ``policy``, its detectors judge every step, with ``self_scorer``
    the local model checks every step (both timed together with the decode)."""
    from edge_agent.values import Step

    context = list(prompt)
    model.sync(context)
    steps, produced, seconds, detect = [], 0, 0.0, 0.0
    done: list[Step] = []
    while produced < n:
        d = model.next_step(context, max_tokens=min(step_tokens, n - produced))
        if not d.token_ids:
            break
        steps.append({"new": len(d.token_ids), "evaluated": d.evaluated})
        produced += len(d.token_ids)
        seconds += d.seconds
        context.extend(d.token_ids)
        if policy is not None:
            step = Step(index=len(done), author="local", kind="step", text=d.text, raw=d.raw, token_ids=d.token_ids,
                        signals=d.signals, finish=d.finish, seconds=d.seconds)
            t0 = time.perf_counter()
            policy.decide(done, step, [e for e in policy.check(done, step) if e.fired])
            detect += time.perf_counter() - t0
            done.append(step)
        if self_scorer:
            from triggers.scorers import NO, VERIFY_QUESTION, YES

            t0 = time.perf_counter()
            model.verify(context, VERIFY_QUESTION, YES, NO)
            detect += time.perf_counter() - t0
    return {"tok_s": produced / (seconds + detect), "tokens": produced, "steps": steps, "detect_s": detect}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def batch_main(model: LocalModel, name: str, args: argparse.Namespace) -> None:
    from batch_speed import run

    from edge_agent import runtime

    sizes = [int(x) for x in args.batch.split(",")]
    mode = runtime.current()
    out = {"model": name, "threads": model.n_threads, "compute": mode.name, "cpu": cpu_name(),
           **run(model, PROBLEM, sizes, args.cli, args.model)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"model {name} · {model.n_threads} threads · compute {mode.name} · {out['cpu']}")
    print("raw batched decode (one token per sequence per llama_decode):")
    for r in out["raw"]:
        print(f"  N={r['n']:>2}  {r['tok_s']:7.1f} tok/s  {r['vs_one']:.2f}x one")
    print("N solutions (greedy + N-1 at 0.7): one after another vs together")
    for r in out["drafts"]:
        print(f"  N={r['n']:>2}  sequential {r['sequential_s']:6.1f} s {r['sequential_tok_s']:6.1f} tok/s · "
              f"batched {r['batched_s']:6.1f} s {r['batched_tok_s']:6.1f} tok/s · {r['speedup_tok_s']:.2f}x")
    for r in out.get("cli", []):
        print(f"  cli: {r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="preset name or GGUF path")
    ap.add_argument("--tokens", type=int, default=256, help="tokens to decode per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-tokens", type=int, default=256)
    ap.add_argument("--no-triggers", action="store_true", help="skip the run with trigreason's detectors")
    ap.add_argument("--self-scorer", action="store_true", help="also time TRIM's self scorer on every step")
    ap.add_argument("--batch", metavar="N[,N...]",
                    help="instead: batched decoding of N sequences against N one after another (bench/batch_speed.py)")
    ap.add_argument("--cli", action="store_true", help="with --batch: also time 'solve' against 'solve --samples N'")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    name, path = resolve_model(args.model)
    model = LocalModel(path, name, n_ctx=4096)
    if args.batch:
        return batch_main(model, name, args)
    prompt = model.prompt_tokens(messages(PROBLEM))
    raw_decode(model, prompt, 16)  # warm-up
    policy = None
    if not args.no_triggers:
        from triggers import get_policy
        from triggers.embed import shared

        t0 = time.perf_counter()
        if not shared().wait(300):
            raise SystemExit(f"the embedder did not load: {shared().error}")
        warm_s = time.perf_counter() - t0
        policy = get_policy("trigreason")
        policy.embedder = TimedEmbedder(shared())
        policy.reset(PROBLEM)
    raws, agents, trigs, runs, trig_runs, selfs, self_runs = [], [], [], [], [], [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits all alike
        raws.append(raw_decode(model, prompt, args.tokens)[0])
        run = agent_decode(model, prompt, args.tokens, args.step_tokens)
        agents.append(run["tok_s"])
        runs.append(run)
        if policy is not None:
            trig = agent_decode(model, prompt, args.tokens, args.step_tokens, policy)
            trigs.append(trig["tok_s"])
            trig_runs.append(trig)
        if args.self_scorer:
            run_self = agent_decode(model, prompt, args.tokens, args.step_tokens, self_scorer=True)
            selfs.append(run_self["tok_s"])
            self_runs.append(run_self)
    raw, agent = statistics.median(raws), statistics.median(agents)
    steps = [s for r in runs for s in r["steps"]]
    later = steps[1:] if len(steps) > 1 else steps  # each run's first step also syncs one token
    from edge_agent import runtime

    mode = runtime.current()
    out = {
        "model": name,
        "threads": model.n_threads,
        "compute": mode.name,  # llama.cpp's CPU weight repack on (repack) or off (plain): EDGE_AGENT_REPACK
        "compute_reason": mode.reason,
        "cpu": cpu_name(),
        "raw_tok_s": round(raw, 1),
        "agent_tok_s": round(agent, 1),
        "ratio": round(agent / raw, 3),
        "steps": len(steps),
        "mean_new_tokens_per_step": round(statistics.mean(s["new"] for s in steps), 1),
        "mean_evaluated_per_step": round(statistics.mean(s["evaluated"] for s in steps), 1),
        "max_evaluated_minus_new": max(s["evaluated"] - s["new"] for s in steps),
    }
    if policy is not None:
        n_steps = sum(len(r["steps"]) for r in trig_runs)
        emb = policy.embedder.seconds
        out.update({
            "triggers_tok_s": round(statistics.median(trigs), 1),
            "triggers_ratio": round(statistics.median(trigs) / raw, 3),
            "detectors_ms_per_step": round(1000 * sum(r["detect_s"] for r in trig_runs) / n_steps, 2),
            "embedding_ms_per_call": round(1000 * statistics.mean(emb), 2) if emb else None,
            "embedding_calls": len(emb),
            "embedder_warmup_s": round(warm_s, 2),
        })
    if args.self_scorer:
        n_steps = sum(len(r["steps"]) for r in self_runs)
        out.update({
            "self_tok_s": round(statistics.median(selfs), 1),
            "self_ratio": round(statistics.median(selfs) / raw, 3),
            "self_ms_per_step": round(1000 * sum(r["detect_s"] for r in self_runs) / n_steps, 1),
        })
    if args.json:
        print(json.dumps(out))
        return
    print(f"model {name} · {model.n_threads} threads · {args.tokens} tokens x {args.repeats} repeats (median)")
    print(f"raw llama.cpp decode     {out['raw_tok_s']:7.1f} tok/s")
    print(f"agent steps with signals {out['agent_tok_s']:7.1f} tok/s   ratio {out['ratio']:.3f}")
    print(
        f"per step: {out['mean_new_tokens_per_step']} new tokens, {out['mean_evaluated_per_step']} evaluated "
        f"(max evaluated - new = {out['max_evaluated_minus_new']}) over {out['steps']} steps"
    )
    if policy is not None:
        print(f"with trigreason detectors {out['triggers_tok_s']:6.1f} tok/s   ratio {out['triggers_ratio']:.3f} "
              f"(detector time counted)")
        print(f"detectors {out['detectors_ms_per_step']} ms/step · embedding {out['embedding_ms_per_call']} ms/call "
              f"over {out['embedding_calls']} calls · embedder load {out['embedder_warmup_s']} s (background)")
    if args.self_scorer:
        print(f"with the self scorer      {out['self_tok_s']:6.1f} tok/s   ratio {out['self_ratio']:.3f} "
              f"(self check {out['self_ms_per_step']} ms/step counted)")


if __name__ == "__main__":
    main()
