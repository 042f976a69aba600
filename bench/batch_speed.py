"""Batched decoding against one sequence at a time (``python bench/edge_speed.py --batch 1,2,4,8``).

For each N, on the same model and problem:
  - raw: one prompt prefilled, forked into N sequences (``llama_memory_seq_cp``), then one token per
    sequence per ``llama_decode`` (no signals, no stop rules): aggregate tok/s, as the batch alone allows;
  - drafts: N solutions of the problem (greedy, then N-1 at temperature 0.7, seeds 1..N-1), each step with
    its signals and stop rules: one after another on the plain decoder, then together through
    ``LocalModel.parallel(N)`` (edge_agent/batch.py). Wall time of each and the aggregate tok/s;
  - with ``--cli``, the end-to-end commands: ``edge-agent solve`` against ``solve --samples N`` (wall time).
Run it once per compute mode: ``EDGE_AGENT_REPACK=on`` / ``off``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from edge_agent.local import LocalModel
from edge_agent.prompts import messages

MAX_STEPS, STEP_TOKENS = 12, 256


def raw_batch(model: LocalModel, prompt: list[int], n: int, tokens: int = 48) -> float:
    """Aggregate tok/s of ``n`` sequences forked from ``prompt``, one token each per decode."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = max(4096, n * 1024), 512, 512, n
    p.n_threads = p.n_threads_batch = model.n_threads
    p.kv_unified, p.flash_attn_type = True, llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    with suppress_stdout_stderr(disable=False):
        ctx = llama_cpp.llama_init_from_model(model.llm.model, p)
    b = llama_cpp.llama_batch_init(512, 0, 1)
    try:
        for i, t in enumerate(prompt):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, i, 1, int(i == len(prompt) - 1)
            b.seq_id[i][0] = 0
        b.n_tokens = len(prompt)
        llama_cpp.llama_decode(ctx, b)
        mem = llama_cpp.llama_get_memory(ctx)
        for s in range(1, n):
            llama_cpp.llama_memory_seq_cp(mem, 0, s, 0, len(prompt))
        t0 = time.perf_counter()
        for r in range(tokens):
            for s in range(n):
                b.token[s], b.pos[s], b.n_seq_id[s], b.logits[s] = 100 + s, len(prompt) + r, 1, 1
                b.seq_id[s][0] = s
            b.n_tokens = n
            llama_cpp.llama_decode(ctx, b)
        return n * tokens / (time.perf_counter() - t0)
    finally:
        llama_cpp.llama_batch_free(b)
        llama_cpp.llama_free(ctx)


def solve_on(model, prompt: list[int], temperature: float, seed: int) -> int:
    """One solution, step by step as the agent decodes it (no policy): its token count."""
    model.reseed(seed)
    context, produced = list(prompt), 0
    for _ in range(MAX_STEPS):
        d = model.next_step(context, max_tokens=min(STEP_TOKENS, model.room(len(context))), temperature=temperature)
        produced += len(d.token_ids)
        context += d.token_ids
        if not d.token_ids or d.finish in ("answer", "eos", "context"):
            break
    return produced


def drafts(model: LocalModel, prompt: list[int], n: int) -> dict:
    """N solutions one after another, then the same N together: wall time and aggregate tok/s."""
    temps = [0.0] + [0.7] * (n - 1)
    t0 = time.perf_counter()
    seq_tokens = sum(solve_on(model, prompt, temps[i], i) for i in range(n))
    seq_s = time.perf_counter() - t0
    together = model.parallel(n)
    counts = [0] * n
    threads = [threading.Thread(target=lambda i=i: counts.__setitem__(i, solve_on(together.seqs[i], prompt, temps[i], i)))
               for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bat_s = time.perf_counter() - t0
    together.close()
    return {"n": n, "sequential_s": round(seq_s, 2), "sequential_tokens": seq_tokens,
            "sequential_tok_s": round(seq_tokens / seq_s, 1), "batched_s": round(bat_s, 2),
            "batched_tokens": sum(counts), "batched_tok_s": round(sum(counts) / bat_s, 1),
            "speedup_tok_s": round((sum(counts) / bat_s) / (seq_tokens / seq_s), 2)}


def cli_samples(model_name: str, problem: str, n: int) -> dict:
    """``edge-agent solve`` once, then ``solve --samples n``, each in a fresh database: wall times."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in (("solve_s", []), (f"samples_{n}_s", ["--samples", str(n)])):
            args = [sys.executable, "-m", "edge_agent.cli", "solve", problem, "--json", "--model", model_name,
                    "--db", os.path.join(tmp, f"{label}.db"), *extra]
            t0 = time.perf_counter()
            subprocess.run(args, check=True, capture_output=True)
            out[label] = round(time.perf_counter() - t0, 2)
    out["samples_vs_solve"] = round(out[f"samples_{n}_s"] / out["solve_s"], 2)
    return out


def run(model: LocalModel, problem: str, sizes: list[int], cli: bool, model_name: str) -> dict:
    prompt = model.prompt_tokens(messages(problem))
    single = raw_batch(model, prompt, 1)
    raw = [{"n": n, "tok_s": round(t := raw_batch(model, prompt, n), 1), "vs_one": round(t / single, 2)} for n in sizes]
    result = {"raw": raw, "drafts": [drafts(model, prompt, n) for n in sizes if n > 1]}
    if cli:
        result["cli"] = [cli_samples(model_name, problem, n) for n in sizes if n > 1]
    return result
