"""Crash soak: start `edge-agent solve`, SIGKILL it at a random (seeded) moment, `resume`, check.

For every round: committed steps survive verbatim, the session completes, and no budget
reservation is left open. Prints the tally.

    python bench/crash_soak.py --rounds 50 [--cloud openai:local --cloud-base-url URL --policy every-k]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

PROBLEM = "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?"


def committed(db: str) -> list[tuple]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        rows = conn.execute("SELECT id, session_id, idx, text, token_ids FROM steps WHERE superseded_by IS NULL ORDER BY id").fetchall()
        conn.close()
        return rows
    except sqlite3.Error:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", default="local-only")
    ap.add_argument("--cloud")
    ap.add_argument("--cloud-base-url")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    extra = ["--policy", args.policy]
    if args.cloud:
        extra += ["--cloud", args.cloud, "--cloud-base-url", args.cloud_base_url]
    tally = {"killed": 0, "finished_before_kill": 0, "verbatim": 0, "completed": 0, "open_reservations": 0}
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            db = os.path.join(d, "soak.db")
            env = {**os.environ, "EDGE_AGENT_DB": db}
            cmd = [sys.executable, "-m", "edge_agent.cli", "solve", PROBLEM, "--json", "--model", "smollm2-135m", "--max-steps", "8",
                   "--max-step-tokens", "24", "--temperature", "0.9", "--seed", str(r), *extra]
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            time.sleep(rng.uniform(0.3, 3.0))
            if proc.poll() is not None:
                tally["finished_before_kill"] += 1
                continue
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            tally["killed"] += 1
            before = committed(db)
            if not before:
                conn = sqlite3.connect(db)
                try:
                    sid = (conn.execute("SELECT id FROM sessions").fetchone() or [None])[0]
                except sqlite3.OperationalError:  # killed while the schema was being created
                    sid = None
                conn.close()
            else:
                sid = before[0][1]
            if sid is None:  # killed before the session row was written: nothing to lose
                tally["verbatim"] += 1
                tally["completed"] += 1
                continue
            res = subprocess.run([sys.executable, "-m", "edge_agent.cli", "resume", sid, "--json"], capture_output=True, env=env)
            after = committed(db)
            tally["verbatim"] += after[: len(before)] == before
            if res.returncode == 0:
                tally["completed"] += json.loads(res.stdout)["status"] != "running"
            conn = sqlite3.connect(db)
            tally["open_reservations"] += conn.execute("SELECT COUNT(*) FROM budget_reservations WHERE status='open'").fetchone()[0]
            conn.close()
        print(f"round {r + 1}/{args.rounds}: {tally}", flush=True)
    print(json.dumps(tally))


if __name__ == "__main__":
    main()
