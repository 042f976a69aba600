#!/usr/bin/env bash
# Builds the routing atlas of the bench pair (Qwen2.5-Coder-0.5B edge, Qwen2.5-Coder-1.5B on loopback as
# the cloud, cloud steps by continuation) and prints its report. Resumable: re-run it after an interruption.
#   bash bench/run_atlas.sh [LIMIT] [DATASET] [MAX_K] [OUT]
# OUT defaults to bench/atlas/DATASET_LIMIT; pass an existing atlas folder to grow it past its name's limit
# (bench/grow_atlases.sh does this for the committed GSM8K and MATH-500 dev atlases).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-200}
dataset=${2:-../shared/data/gsm8k_dev.jsonl}
max_k=${3:-8}
name=$(basename "$dataset" .jsonl)_${limit}
edge-agent models --install qwen2.5-coder-0.5b >/dev/null
edge-agent models --install qwen2.5-coder-1.5b >/dev/null

source bench/cloud_local.sh

out=${4:-bench/atlas/$name}
mkdir -p "$out"
cfg=$PWD/bench/atlas/config.toml
# a long timeout: a build paused (SIGSTOP) while tests run must not time out its call in flight
printf '[cloud]\ntimeout_s = 7200\nmax_retries = 0\ncontinuation = "on"\n' > "$cfg"
EDGE_AGENT_CONFIG=$cfg edge-agent atlas build --dataset "$dataset" --limit "$limit" --max-k "$max_k" \
  --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" --out "$out"
# the cloud reads each new trace and the branch its read flags (reads.jsonl; READS=0 skips)
if [ "${READS:-1}" = 1 ]; then
  EDGE_AGENT_CONFIG=$cfg edge-agent atlas read "$out" --model qwen2.5-coder-0.5b --cloud openai:local \
    --cloud-base-url "http://127.0.0.1:$port/v1" --max-k "$max_k" --json > /dev/null
fi
EDGE_AGENT_CONFIG=$cfg edge-agent atlas report "$out" --json > "$out/report.json"
EDGE_AGENT_CONFIG=$cfg edge-agent atlas report "$out"
