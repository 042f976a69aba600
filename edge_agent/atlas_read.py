"""The atlas's reads: the cloud reads each edge trace and each finished step branch once (``atlas read``), and the
read-driven policies are replayed on them in seconds (``read_eval``).

Reads are kept in ``reads.jsonl`` beside the atlas (one line per session read, resumable; every read's call is
in the atlas database's ledger, ``purpose = read``). The edge's own log-probs of the tokens come from the steps'
signals where they carry them (``sum_logprob``, recorded since the read was added) and otherwise from one local
read of the same ids by the edge model (a second llama.cpp context with ``logits_all``; nothing generated).
A step the cloud wrote counts with e = c, as in a live run (the edge never decoded it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import store
from cloud.budget import Budget
from cloud.reads import read as cloud_read

from .prompts import messages
from triggers.reading import TraceRead, by_ids, by_text, edge_sums, step_inputs
from .state import load_state

READS = "reads.jsonl"


def read_sessions(db: Any) -> list[tuple[str, str, int, str]]:
    """(problem id, kind, k, session id) of every finished trace and step branch, trace first per problem."""
    problems, branches = store.atlas_rows(db)
    out = []
    for p in problems:
        if p.get("trace_session"):
            out.append((p["id"], "trace", -1, p["trace_session"]))
        steps = sorted((b for b in branches if b["problem_id"] == p["id"] and b["kind"] == "step"),
                       key=lambda b: -b["k"])  # k descending: each read shares the longest prefix with the last
        out += [(p["id"], "step", b["k"], b["session_id"]) for b in steps if b.get("session_id")]
    return out


def done_reads(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["session_id"]] = row
    return out


def session_read(db: Any, session_id: str, edge: Any, cloud: Any, caps: Any, vocab: str,
                 edge_read: Callable[[Sequence[int]], Sequence[float | None]] | None) -> TraceRead:
    """One read of a session's active steps (all of them, whoever wrote them), recorded on its ledger."""
    state = load_state(db, session_id)
    prompt = edge.prompt_tokens(messages(state.problem))
    steps = edge_sums(prompt, step_inputs(state.steps), edge_read)
    budget = Budget(db, caps, session_id)
    if vocab == "same":
        reply = cloud_read(cloud, list(prompt) + [t for _, ids, _ in steps for t in ids], budget=budget)
        reads = by_ids(prompt, steps, reply.token_logprobs)
    else:
        raws = {s.index: s.raw for s in state.steps}
        text = edge.detokenize(prompt)
        reply = cloud_read(cloud, text + "".join(raws[i] for i, _, _ in steps), budget=budget)
        reads = by_text(text, [(i, raws[i], e) for i, _, e in steps], reply.tokens, reply.token_logprobs,
                        reply.text_offset)
    return TraceRead(reads, reply.input_tokens, reply.cost_usd)


def read_atlas(db: Any, out: Path, edge: Any, cloud: Any, caps: Any, *, vocab: str = "same", max_k: int = 4,
               all_branches: bool = False, edge_read: Callable[[Sequence[int]], Sequence[float | None]] | None = None,
               progress: Callable[[str], None] | None = None) -> int:
    """Read every trace not read yet, and the step branch its read flags (every step branch with ``all_branches``):
    what verify-repair needs. Returns how many sessions were read now."""
    path = out / READS
    done = done_reads(path)
    n = 0
    flagged: dict[str, int | None] = {}
    for pid, kind, k, sid in read_sessions(db):
        if kind == "trace":
            row = done.get(sid) or _read_one(db, path, pid, kind, k, sid, edge, cloud, caps, vocab, edge_read)
            n += sid not in done
            done[sid] = row
            flagged[pid] = TraceRead.from_dict(row["read"]).flagged(max_k)
            if progress and n:
                progress(f"{pid} trace")
            continue
        if sid in done or not (all_branches or k == flagged.get(pid)):
            continue
        done[sid] = _read_one(db, path, pid, kind, k, sid, edge, cloud, caps, vocab, edge_read)
        n += 1
        if progress:
            progress(f"{pid} {kind} {k}")
    return n


def _read_one(db: Any, path: Path, pid: str, kind: str, k: int, sid: str, edge: Any, cloud: Any, caps: Any,
              vocab: str, edge_read: Any) -> dict:
    r = session_read(db, sid, edge, cloud, caps, vocab, edge_read)
    row = {"problem_id": pid, "kind": kind, "k": k, "session_id": sid, "vocab": vocab, "read": r.to_dict()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    return row
