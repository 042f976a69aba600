#!/usr/bin/env bash
# Reproduces the bench tables in docs/bench.md: the bench pair on the first 100 GSM8K and 50 MATH-500 dev
# problems, under the baselines and trigreason at two settings. Resumable: re-run it after an
# interruption.
#   bash bench/run_all.sh [GSM8K_LIMIT] [MATH_LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
policies=${POLICIES:-'local-only,cloud-only,trigreason,trigreason(plan=always,confidence_min=0.75,max_cloud=6)'}
bash bench/run_gsm8k.sh "${1:-100}" "$policies" ../shared/data/gsm8k_dev.jsonl
PORT=8767 bash bench/run_gsm8k.sh "${2:-50}" "$policies" ../shared/data/math500_dev.jsonl
