#!/usr/bin/env bash
# The same atlas with every cloud step written from the transcript prompt instead of by continuation:
# starts from a copy of the continuation atlas (its traces, step cache and replies), drops its branches
# and rebuilds them with [cloud] continuation = "off". Compare the two reports.
#   bash bench/run_atlas_transcript.sh [LIMIT] [DATASET] [MAX_K]
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-200}
dataset=${2:-../shared/data/gsm8k_dev.jsonl}
max_k=${3:-8}
name=$(basename "$dataset" .jsonl)_${limit}
src=bench/atlas/$name
out=bench/atlas/${name}_transcript
[ -e "$src/bench.db" ] || { echo "build $src first: bash bench/run_atlas.sh $limit $dataset $max_k" >&2; exit 2; }
mkdir -p "$out"
if [ ! -e "$out/bench.db" ]; then
  python3 - "$src/bench.db" "$out/bench.db" <<'PY'
import sqlite3, sys
src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
src.backup(dst)
dst.execute("DELETE FROM atlas_branches")  # the traces, the step cache and the replies stay
dst.commit()
PY
fi
source bench/cloud_local.sh
cfg=$PWD/$out/config.toml
printf '[cloud]\ntimeout_s = 600\nmax_retries = 0\ncontinuation = "off"\n' > "$cfg"
EDGE_AGENT_CONFIG=$cfg edge-agent atlas build --dataset "$dataset" --limit "$limit" --max-k "$max_k" \
  --model qwen2.5-coder-0.5b --cloud openai:local --cloud-base-url "http://127.0.0.1:$port/v1" --out "$out"
EDGE_AGENT_CONFIG=$cfg edge-agent atlas report "$out" --json > "$out/report.json"
EDGE_AGENT_CONFIG=$cfg edge-agent atlas report "$out"
