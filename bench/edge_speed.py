"""Decode speed of the agent's step loop against raw llama.cpp, on the same model and prompt.

Prints, in one run:
  - raw llama.cpp decode tok/s (Llama.generate, greedy, no signals);
  - the agent's step decode tok/s with per-token entropy/top-1 signals, and the ratio;
  - tokens evaluated per step against new tokens per step (KV reuse).

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


def agent_decode(model: LocalModel, prompt: list[int], n: int, step_tokens: int) -> dict:
    context = list(prompt)
    model.sync(context)
    steps, produced, seconds = [], 0, 0.0
    while produced < n:
        d = model.next_step(context, max_tokens=min(step_tokens, n - produced))
        if not d.token_ids:
            break
        steps.append({"new": len(d.token_ids), "evaluated": d.evaluated})
        produced += len(d.token_ids)
        seconds += d.seconds
        context.extend(d.token_ids)
    return {"tok_s": produced / seconds, "tokens": produced, "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="preset name or GGUF path")
    ap.add_argument("--tokens", type=int, default=256, help="tokens to decode per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-tokens", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    name, path = resolve_model(args.model)
    model = LocalModel(path, name, n_ctx=4096)
    prompt = model.prompt_tokens(messages(PROBLEM))
    raw_decode(model, prompt, 16)  # warm-up
    raws, agents, runs = [], [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both alike
        raws.append(raw_decode(model, prompt, args.tokens)[0])
        run = agent_decode(model, prompt, args.tokens, args.step_tokens)
        agents.append(run["tok_s"])
        runs.append(run)
    raw, agent = statistics.median(raws), statistics.median(agents)
    steps = [s for r in runs for s in r["steps"]]
    later = steps[1:] if len(steps) > 1 else steps  # each run's first step also syncs one token
    out = {
        "model": name,
        "threads": model.n_threads,
        "raw_tok_s": round(raw, 1),
        "agent_tok_s": round(agent, 1),
        "ratio": round(agent / raw, 3),
        "steps": len(steps),
        "mean_new_tokens_per_step": round(statistics.mean(s["new"] for s in steps), 1),
        "mean_evaluated_per_step": round(statistics.mean(s["evaluated"] for s in steps), 1),
        "max_evaluated_minus_new": max(s["evaluated"] - s["new"] for s in steps),
    }
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


if __name__ == "__main__":
    main()
