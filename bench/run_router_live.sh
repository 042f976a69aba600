#!/usr/bin/env bash
# The learned router, live, on GSM8K dev problems it never saw (201-300 by default): fit on the atlas
# (bench/atlas/gsm8k_dev_100 by default; 'atlas fit' cross-validates and saves router-v1.json beside
# this bench's config), then 'bench' runs router, local-only and cloud-only on the held-out problems.
# local-only replays the router's drafts from the step cache, so it costs nothing. Resumable.
#   bash bench/run_router_live.sh [FIRST] [LAST] [ATLAS_DIR] [SHARE]
set -euo pipefail
cd "$(dirname "$0")/.."
first=${1:-201}
last=${2:-300}
atlas=${3:-bench/atlas/gsm8k_dev_100}
share=${4:-0.15}
edge-agent models --install qwen2.5-coder-0.5b >/dev/null
edge-agent models --install qwen2.5-coder-1.5b >/dev/null

mkdir -p bench/results/router
cfg=$PWD/bench/results/router/config.toml
# the atlas's settings: cloud steps continue the edge's turn, no retries against the slow loopback cloud
printf '[cloud]\ntimeout_s = 600\nmax_retries = 0\ncontinuation = "on"\n' > "$cfg"
if ! ls bench/results/router/models/router-v*.json >/dev/null 2>&1; then
  EDGE_AGENT_CONFIG=$cfg edge-agent atlas fit "$atlas" --share "$share"
fi

source bench/cloud_local.sh

out=bench/results/router_live_${first}_${last}
mkdir -p "$out"
sed -n "${first},${last}p" ../shared/data/gsm8k_dev.jsonl > "$out/problems.jsonl"
EDGE_AGENT_CONFIG=$cfg edge-agent bench --dataset "$out/problems.jsonl" \
  --policies "router(loop=false),local-only,cloud-only" \
  --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" \
  --out "$out" --resume
