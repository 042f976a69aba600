#!/usr/bin/env bash
# Grows the committed dev atlases in turns, a few problems at a time, so both advance and each turn's
# rows can be committed: bench/atlas/gsm8k_dev_100 (GSM8K dev, max_k 4) and bench/atlas/math500_dev_100
# (MATH-500 dev, max_k 4), past the 100 of their names. Resumable: an interrupted turn is finished by the next.
#   nohup bash bench/grow_atlases.sh [GSM8K_LIMIT] [MATH_LIMIT] [GSM8K_STEP] [MATH_STEP] > /tmp/grow.log 2>&1 &
# GSM8K dev 201-300 is kept out by default: the router's live check ran there as never-seen problems.
set -euo pipefail
cd "$(dirname "$0")/.."
g_limit=${1:-200}
m_limit=${2:-250}
g_step=${3:-6}
m_step=${4:-3}
count() { sqlite3 "$1/bench.db" "select count(*) from atlas_problems where status is not null" 2>/dev/null || echo 0; }
g=$(count bench/atlas/gsm8k_dev_100); m=$(count bench/atlas/math500_dev_100)
while [ "$g" -lt "$g_limit" ] || [ "$m" -lt "$m_limit" ]; do
  if [ "$g" -lt "$g_limit" ]; then
    n=$(( g + g_step < g_limit ? g + g_step : g_limit ))
    bash bench/run_atlas.sh "$n" ../shared/data/gsm8k_dev.jsonl 4 bench/atlas/gsm8k_dev_100 > /dev/null
  fi
  if [ "$m" -lt "$m_limit" ]; then
    n=$(( m + m_step < m_limit ? m + m_step : m_limit ))
    bash bench/run_atlas.sh "$n" ../shared/data/math500_dev.jsonl 4 bench/atlas/math500_dev_100 > /dev/null
  fi
  g=$(count bench/atlas/gsm8k_dev_100); m=$(count bench/atlas/math500_dev_100)
  echo "$(date -u +%FT%TZ) gsm8k_dev_100: $g problems · math500_dev_100: $m problems"
done
