#!/usr/bin/env bash
# verify-repair, live, on GSM8K dev problems the atlas never holds (201-230 by default), beside local-only and
# cloud-only on the same problems. TAU is the suspicion threshold chosen on the atlas for a target share of
# cloud-only's output tokens ('edge-agent atlas read DIR --report-only'). local-only replays verify-repair's
# drafts from the step cache, so it costs nothing. Resumable.
#   bash bench/run_read_live.sh [FIRST] [LAST] [TAU]
set -euo pipefail
cd "$(dirname "$0")/.."
first=${1:-201}
last=${2:-230}
tau=${3:-26.5}
edge-agent models --install qwen2.5-coder-0.5b >/dev/null
edge-agent models --install qwen2.5-coder-1.5b >/dev/null
mkdir -p bench/results/read_live
cfg=$PWD/bench/results/read_live/config.toml
printf '[cloud]\ntimeout_s = 600\nmax_retries = 0\ncontinuation = "on"\nread = "echo"\n' > "$cfg"
source bench/cloud_local.sh
out=bench/results/read_live_${first}_${last}
mkdir -p "$out"
sed -n "${first},${last}p" ../shared/data/gsm8k_dev.jsonl > "$out/problems.jsonl"
EDGE_AGENT_CONFIG=$cfg edge-agent bench --dataset "$out/problems.jsonl" \
  --policies "verify-repair(tau=$tau),local-only,cloud-only" \
  --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" \
  --out "$out" --resume
