#!/usr/bin/env bash
# The TRIM bench (issue 7): trains trim-learned on the same dev problems (judge labels), then runs
# trim-thr at three thresholds, trim-budget, trim-learned and hybrid beside the baselines, so the
# plot draws each family as a curve. Thresholds: the 10/30/50% quantiles of the logprob scores of
# the 0.5B's local-only steps on the first 100 GSM8K dev problems (0.63, 0.72, 0.76).
#   bash bench/run_trim.sh [LIMIT] [DATASET]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-100}
dataset=${2:-../shared/data/gsm8k_dev.jsonl}
policies='local-only,cloud-only,trim-thr(tau=0.63),trim-thr(tau=0.72),trim-thr(tau=0.76),trim-budget,trim-learned,hybrid'
LEARN=1 bash bench/run_gsm8k.sh "$limit" "$policies" "$dataset"
