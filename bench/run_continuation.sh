#!/usr/bin/env bash
# Cloud steps by continuation vs the transcript prompt, on the bench pair: the same policies run twice,
# once with [cloud] continuation = "on" and once "off", on the first LIMIT GSM8K dev problems. The
# second run starts from a copy of the first run's bench.db, so its step cache replays every local
# prefix the two runs share. Resumable: re-run after an interruption.
#   bash bench/run_continuation.sh [LIMIT] [POLICIES]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-30}
policies=${2:-'local-only,trim-thr'}
dataset=../shared/data/gsm8k_dev.jsonl
edge-agent models --install qwen2.5-coder-0.5b >/dev/null
edge-agent models --install qwen2.5-coder-1.5b >/dev/null

port=${PORT:-8766}
edge-agent cloud-local --model qwen2.5-coder-1.5b --port "$port" > "/tmp/edge-agent-cloud-$port.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
  sleep 0.5
done

for mode in on off; do
  out=bench/results/gsm8k_dev_${limit}_continuation_${mode}
  mkdir -p "$out"
  cfg=$PWD/$out/config.toml
  printf '[cloud]\ntimeout_s = 600\nmax_retries = 0\ncontinuation = "%s"\n' "$mode" > "$cfg"
  if [ "$mode" = off ] && [ ! -e "$out/bench.db" ]; then  # share the step cache of the first run
    sqlite3 "bench/results/gsm8k_dev_${limit}_continuation_on/bench.db" ".backup '$out/bench.db'" 2>/dev/null \
      || python3 -c "import sqlite3,sys; s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); s.backup(d)" \
           "bench/results/gsm8k_dev_${limit}_continuation_on/bench.db" "$out/bench.db"
  fi
  EDGE_AGENT_CONFIG=$cfg edge-agent bench --dataset "$dataset" --limit "$limit" --policies "$policies" \
    --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" \
    --out "$out" --resume
done
