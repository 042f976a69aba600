"""The vote policies at two draft temperatures, paired on the atlas problems drafted at both.

    python bench/vote_temperatures.py [ATLAS_DIR] [T1] [T2] [N]

Prints, for each temperature, on the same problems: greedy, vote, cloud-only and pass@N accuracy, the
agreement gate's AUROC, and at 10/15/25% of cloud-only's output tokens and USD the PGR of the vote, of
vote + handover of the least agreed and of a random handover, with 90% bootstrap intervals
(edge_agent/vote_eval.py). Reads the atlas only.
"""

from __future__ import annotations

import json
import sys

import store
from cloud.pricing import lookup
from edge_agent.atlas_drafts import draft_rows
from edge_agent.vote_eval import accuracies, auroc_agreement, bootstrap, problems_of


def main(directory: str = "bench/atlas/gsm8k_dev_100", t1: float = 0.4, t2: float = 0.7, n: int = 5) -> dict:
    db = store.open_db(f"{directory}/bench.db", create=False)
    meta = store.atlas_meta(db)
    rows, branches = store.atlas_rows(db)
    clouds = {b["problem_id"]: b for b in branches if b["kind"] == "cloud_only" and b["status"] == "done"}
    price = lookup(str(meta.get("cloud", "openai:local")).partition(":")[2]) or lookup("local")
    drafts = {t: draft_rows(db, t, n) for t in (t1, t2)}
    common = [p["id"] for p in rows if all(p["id"] in d for d in drafts.values())]
    out: dict = {"dir": directory, "n": len(common), "temperatures": {}}
    for t, d in drafts.items():
        seconds = {b["problem_id"]: b["seconds"] or 0.0 for b in branches if b["kind"] == f"drafts@{t:g}"}
        ps = problems_of(common, {k: d[k] for k in common}, clouds, price, seconds)
        rows_t = []
        for share in (0.10, 0.15, 0.25):
            a, b = accuracies(ps, share), bootstrap(ps, share)
            gap = (a["cloud"] - a["greedy"]) or 1e-12
            rows_t.append({"share": share, "spent_tokens": round(a["share_tokens"], 3), "spent_usd": round(a["share_usd"], 3),
                           **{f"pgr_{k}": round((a[k] - a["greedy"]) / gap, 3)
                              for k in ("vote", "vote_handover", "random_handover")}, "intervals": b})
        a = accuracies(ps, 0.15)
        out["temperatures"][f"{t:g}"] = {
            "greedy": round(a["greedy"], 4), "vote": round(a["vote"], 4), "cloud": round(a["cloud"], 4),
            "pass_at_n": round(a["pass_at_n"], 4), "auroc_agreement": round(auroc_agreement(ps) or 0.0, 3),
            "all_differ": sum(1 for p in ps if len(set(p.drafts.predicted)) == len(p.drafts.predicted)),
            "local_s": round(a["local_s"], 1), "rows": rows_t}
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(*(args[:1] or []), *[float(x) for x in args[1:3]], *[int(x) for x in args[3:4]]), indent=1))
