"""Batched decoding (edge_agent/batch.py) on the real llama.cpp runtime with the embedded SmolLM2."""

import math
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edge_agent.batch import BatchDecoder
from edge_agent.local import LocalModel, StepBuilder, pick_token
from edge_agent.prompts import messages
from tests.conftest import ROBE, run_cli


@pytest.fixture(scope="module")
def model(smol_path):
    m = LocalModel(smol_path, n_ctx=1024, n_threads=2)
    yield m
    m.close()


def _alone(model, context, tokens):
    """The signals of ``tokens`` after ``context`` decoded alone by the one-sequence model, and for each
    token how far its logit is below the best one (0 for the greedy choice)."""
    step = StepBuilder(model.stop_tokens, model.llm.detokenize)
    z, e, gaps, ctx = np.empty(model.llm.n_vocab(), np.float32), np.empty(model.llm.n_vocab(), np.float32), [], list(context)
    for tok in tokens:
        model.sync(ctx)
        logits = model._logits()
        _, ent, top1, _ = pick_token(np, logits, 0.0, None, z, e)
        lp = float(logits[tok] - logits.max()) - math.log(float(np.exp(logits - logits.max()).sum()))
        gaps.append(float(logits.max() - logits[tok]))
        step.add(tok, ent, top1, lp)
        ctx.append(tok)
    return step.draft(0, 0.0).signals, gaps


def _together(decoder, jobs):
    """Run ``jobs`` (view index -> (context, max_tokens, temperature, seed)) on their views at once."""
    out, errors = {}, []

    def run(i, context, max_tokens, temperature, seed):
        try:
            view = decoder.seqs[i]
            view.reseed(seed)
            out[i] = view.next_step(context, max_tokens=max_tokens, temperature=temperature)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, *job)) for i, job in jobs.items()]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert not errors, errors
    return out


def test_one_sequence_through_the_batch_gives_the_plain_decoders_greedy_steps(model):
    prompt = model.prompt_tokens(messages(ROBE))
    plain, context = [], list(prompt)
    for _ in range(3):
        d = model.next_step(context, max_tokens=48)
        plain.append(d)
        context += d.token_ids
    decoder = BatchDecoder(model, 1)
    try:
        batched, context = [], list(prompt)
        for _ in range(3):
            d = decoder.seqs[0].next_step(context, max_tokens=48)
            batched.append(d)
            context += d.token_ids
    finally:
        decoder.close()
    assert [d.token_ids for d in batched] == [d.token_ids for d in plain]
    assert [(d.text, d.finish) for d in batched] == [(d.text, d.finish) for d in plain]
    for b, p in zip(batched, plain):
        for name, value in p.signals.to_dict().items():
            assert b.signals.to_dict()[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_a_sequence_that_stops_early_leaves_and_the_others_finish_with_their_own_signals(model):
    prompt = model.prompt_tokens(messages(ROBE))
    decoder = BatchDecoder(model, 4)
    try:
        jobs = {0: (prompt, 40, 0.0, 0), 1: (prompt, 3, 0.0, 0), 2: (prompt, 40, 0.8, 7), 3: (prompt, 40, 0.8, 8)}
        out = _together(decoder, jobs)
        assert decoder.decodes < sum(len(d.token_ids) for d in out.values())  # tokens shared llama_decode calls
    finally:
        decoder.close()
    short = out[1]
    assert len(short.token_ids) == 3 and short.finish == "length"
    assert len(out[0].token_ids) > 3  # the others went on after it left
    assert out[2].token_ids != out[3].token_ids  # each sampler has its own seeded stream
    for i, d in out.items():
        assert d.token_ids and d.finish in {"separator", "answer", "eos", "length"}
        alone, gaps = _alone(model, prompt, d.token_ids)
        if jobs[i][2] == 0.0:  # greedy: every token is the best one, up to the batch's float noise
            assert max(gaps) < 0.3, (i, gaps)  # a near-tie may flip; a sampled token is several units off
        # the batch's KV layout and matrix kernels round differently: 1-4% apart on SmolLM2 (a near-tie that
        # flips moves a sum more), where another sequence's logits would be wholly different
        for name, value in alone.to_dict().items():
            assert d.signals.to_dict()[name] == pytest.approx(value, rel=6e-2, abs=0.1), (i, name)


def test_the_prompt_kv_is_evaluated_once_for_all_sequences(model):
    prompt = model.prompt_tokens(messages(ROBE))
    decoder = BatchDecoder(model, 3)
    try:
        first = _together(decoder, {0: (prompt, 4, 0.0, 0)})[0]
        rest = _together(decoder, {1: (prompt, 4, 0.7, 1), 2: (prompt, 4, 0.7, 2)})
    finally:
        decoder.close()
    assert first.evaluated >= len(prompt)
    assert all(d.evaluated <= len(d.token_ids) + 1 for d in rest.values())  # only the prompt's last token


def test_a_batch_too_large_for_memory_is_refused_in_one_line_before_loading(tmp_path):
    r = run_cli("solve", ROBE, "--samples", "8", "--batch", "on", "--n-ctx", "65536", "--db", str(tmp_path / "e.db"))
    err = r.stderr.decode()
    assert r.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "8 sequences of 65,536 tokens" in err and "lower --samples or --n-ctx" in err
    assert not (tmp_path / "e.db").exists()


def _counts(db):
    try:
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT s.id, s.parent_id, s.status, (SELECT count(*) FROM steps t WHERE t.session_id = s.id)"
                            " FROM sessions s ORDER BY s.id").fetchall()
        conn.close()
        return rows
    except sqlite3.Error:
        return []


def test_kill_9_mid_batch_then_resume_finishes_only_what_was_left(tmp_path):
    db = tmp_path / "edge.db"
    args = ["solve", "Count from 1 to 40, one number a line, then give the total.", "--json", "--samples", "4", "--batch", "on",
            "--max-step-tokens", "24", "--max-steps", "10", "--db", str(db)]
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once at least two sessions have committed steps, mid-way
        rows = _counts(db)
        if sum(1 for r in rows if r[3] >= 2) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the solve finished before it could be killed"
    conn = sqlite3.connect(db)
    before = conn.execute("SELECT id, session_id, idx, text FROM steps ORDER BY id").fetchall()
    conn.close()
    parent = next(r[0] for r in _counts(db) if r[1] is None)
    r = run_cli("resume", parent, "--json", "--db", str(db))
    assert r.returncode == 0, r.stderr.decode()
    rows = _counts(db)
    assert len(rows) == 4 and sum(1 for x in rows if x[1] == parent) == 3  # no sample created twice
    assert all(x[2] in {"done", "max_steps", "ended", "context_full"} for x in rows)
    conn = sqlite3.connect(db)
    after = {row[0]: row for row in conn.execute("SELECT id, session_id, idx, text FROM steps").fetchall()}
    dup = conn.execute("SELECT session_id, idx, count(*) FROM steps WHERE superseded_by IS NULL"
                       " GROUP BY session_id, idx HAVING count(*) > 1").fetchall()
    conn.close()
    assert all(after[row[0]] == row for row in before)  # committed steps are kept verbatim
    assert not dup
