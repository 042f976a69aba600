#!/usr/bin/env bash
# Reproduces the README's bench tables: the bench pair on the first 50 problems of each dev set,
# under the baselines and the hybrid policies. Resumable: re-run it after an interruption.
#   bash bench/run_all.sh [LIMIT]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-50}
policies=${POLICIES:-local-only,cloud-only,trigreason,trim-thr}
bash bench/run_gsm8k.sh "$limit" "$policies" ../shared/data/gsm8k_dev.jsonl
PORT=8767 bash bench/run_gsm8k.sh "$limit" "$policies" ../shared/data/math500_dev.jsonl
