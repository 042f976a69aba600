#!/usr/bin/env bash
# Times 'atlas build' on LIMIT problems in one process and with '--ray auto' (a local Ray), each into a fresh
# folder (nothing replayed), and prints the wall times and the overhead of Ray against one process.
#   bash bench/ray_overhead.sh [LIMIT] [DATASET] [MAX_K]         the bench pair (0.5B edge, 1.5B cloud-local)
#   MODE=scripted bash bench/ray_overhead.sh [LIMIT]             a scripted edge and cloud: Ray's own cost alone
# Runs: one process (EDGE_AGENT_THREADS=$THREADS, default 2), --ray auto with 1 worker x $THREADS threads (the
# same cores as one process: what Ray itself costs), and --ray auto with the default workers (the cores split
# into one-thread workers). Needs pip install -e '.[scale]'. Writes bench/atlas/ray_overhead_<name>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-10}
dataset=${2:-../shared/data/gsm8k_dev.jsonl}
max_k=${3:-8}
mode=${MODE:-real}
threads=${THREADS:-2}
python -c "import ray" 2>/dev/null || { echo "Ray is not installed: pip install -e '.[scale]'" >&2; exit 2; }
work=$(mktemp -d /tmp/edge-agent-ray-overhead.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ "$mode" = scripted ]; then
  # no model at all: a scripted edge (3 steps) and the tests' deterministic loopback cloud
  python - "$limit" "$work" <<'EOF'
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
with open(f"{work}/d.jsonl", "w") as f:
    f.writelines(json.dumps({"id": f"p{i}", "problem": f"Tom has 2 apples and buys 3 more, case {i}. How many apples?",
                             "answer": "5"}) + "\n" for i in range(n))
json.dump(["Tom has 2 apples.", "He buys 3 more.", "So 2 + 4 = 6, \\boxed{6}."], open(f"{work}/edge.json", "w"))
EOF
  python -c "
import sys, time; sys.path.insert(0, '.')
from tests.servers import FaultServer
s = FaultServer('by-content', replies=['So 2 + 3 = 5, \\\\boxed{5}.'])
open('$work/url', 'w').write(s.url)
time.sleep(3600)" &
  cloud_pid=$!
  trap 'kill $cloud_pid 2>/dev/null; rm -rf "$work"' EXIT
  for _ in $(seq 1 100); do [ -s "$work/url" ] && break; sleep 0.1; done
  dataset=$work/d.jsonl
  name=scripted_$limit
  args=(--model "script:$work/edge.json" --cloud openai:m --cloud-base-url "$(cat "$work/url")/v1"
        --price-in 1 --price-out 2 --max-step-tokens 64)
else
  edge-agent models --install qwen2.5-coder-0.5b >/dev/null
  edge-agent models --install qwen2.5-coder-1.5b >/dev/null
  source bench/cloud_local.sh
  name=$(basename "$dataset" .jsonl)_$limit
  printf '[cloud]\ntimeout_s = 600\nmax_retries = 0\ncontinuation = "on"\n' > "$work/config.toml"
  export EDGE_AGENT_CONFIG=$work/config.toml
  args=(--model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1")
fi

run() {  # run LABEL [extra flags...]: one timed build into a fresh folder; prints "LABEL SECONDS"
  local label=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  EDGE_AGENT_THREADS=$threads edge-agent atlas build --dataset "$dataset" --limit "$limit" --max-k "$max_k" \
    "${args[@]}" --out "$work/$label" --json "$@" > "$work/$label.json"
  t1=$(date +%s.%N)
  echo "$label $(python -c "print(round($t1 - $t0, 2))")"
}

{
  run one-process
  run ray-1x$threads --ray auto --ray-workers 1 --ray-threads "$threads"
  run ray-default --ray auto
} | tee "$work/times"

python - "$work" "$name" "$limit" "$mode" "$threads" <<'EOF'
import json, sys
work, name, limit, mode, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
times = dict((label, float(s)) for label, s in (line.split() for line in open(f"{work}/times")))
reports = {label: json.load(open(f"{work}/{label}.json")) for label in times}
base = times["one-process"]
same = all(r["rows"] == reports["one-process"]["rows"] for r in reports.values())
out = {"problems": limit, "mode": mode, "threads": threads, "seconds": times,
       "overhead": {k: round(v / base - 1, 4) for k, v in times.items() if k != "one-process"},
       "same_atlas_report": same}
path = f"bench/atlas/ray_overhead_{name}.json"
json.dump(out, open(path, "w"), indent=1)
print("| run | wall s | vs one process |\n|---|---|---|")
for k, v in times.items():
    print(f"| {k} | {v:.1f} | {'' if k == 'one-process' else f'{v / base - 1:+.0%}'} |")
print(f"same atlas report in every run: {same} · wrote {path}")
EOF
