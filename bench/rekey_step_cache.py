"""Re-key a database's step cache (and its atlas's edge identity) to the model's current identity.

An older build keyed a preset's steps by its file's path, size and mtime, which differ on every machine
the preset is joined on; a verified preset is now known by its sha256. This recomputes, for every local
step of every session, the context it was decoded from (the prompt, then the session's steps before it)
and adds the same cached step under the new key. Nothing is removed.

    python bench/rekey_step_cache.py bench/atlas/gsm8k_dev_20/bench.db --model qwen2.5-coder-0.5b
"""

from __future__ import annotations

import argparse
import json
import sys

import store
from edge_agent.presets import open_model
from edge_agent.prompts import messages
from edge_agent.step_cache import model_identity, step_key


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("db")
    ap.add_argument("--model", required=True)
    args = ap.parse_args(argv)
    db = store.open_db(args.db, create=False)
    meta = store.atlas_meta(db)
    old = meta.get("edge", {}).get("identity")
    if not old:
        sys.exit("no atlas edge identity in this database: nothing to re-key from")
    from llama_cpp import Llama

    model = open_model(args.model)
    new = model_identity(model)
    vocab = Llama(model_path=str(model.path), vocab_only=True, verbose=False)
    model._llm = vocab  # render() and tokenize() need only the vocabulary and the chat template  # noqa: SLF001
    added = missing = 0
    for session in db["sessions"].rows:
        settings = json.loads(session["settings"])
        context = model.prompt_tokens(messages(session["problem"]))
        for step in store.load_steps(db, session["id"]):
            tokens = json.loads(step["token_ids"])
            if step["author"] == "local":
                cap = min(settings["max_step_tokens"], settings["n_ctx"] - len(context))
                hit = store.step_cache_get(db, step_key(old, context, cap))
                if hit is None:
                    missing += 1
                else:
                    added += 1
                    store.step_cache_put(db, step_key(new, context, cap), **{k: hit[k] for k in (
                        "context_tokens", "token_ids", "text", "raw", "signals", "finish", "seconds")}, model=new)
            context = context + tokens
    store.set_atlas_meta(db, {"edge": {**meta["edge"], "identity": new}})
    print(json.dumps({"from": old, "to": new, "steps_rekeyed": added, "steps_not_cached": missing}))


if __name__ == "__main__":
    main(sys.argv[1:])
