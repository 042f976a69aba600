#!/usr/bin/env bash
# Screenshot one session's trace page: serve DB on a free loopback port (scripted model, so no GGUF
# is loaded; the page only reads the database), open /sessions/SESSION_ID in headless Chromium, stop.
#   bash bench/trace_screenshot.sh DB SESSION_ID OUT.png [WIDTH,HEIGHT]
# e.g. bash bench/trace_screenshot.sh ~/.config/edge-agent/edge-agent.db 01J... docs/trace_page.png
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash bench/trace_screenshot.sh DB SESSION_ID OUT.png [WIDTH,HEIGHT]" >&2
  exit 2
fi
db=$1 session=$2 out=$3 size=${4:-1200,1600}
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -f "$db" ] || { echo "no database at $db" >&2; exit 2; }
[ -x "$chromium" ] || { echo "no $chromium: apt-get install chromium (or set CHROMIUM)" >&2; exit 2; }
work=$(mktemp -d)
echo '[]' > "$work/model.json"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# no token: loopback only, and EDGE_AGENT_TOKEN from the caller's shell must not lock the page
env -u EDGE_AGENT_TOKEN edge-agent serve --model "script:$work/model.json" --db "$db" --port "$port" \
  > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port/sessions/$session"
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
  [ "$code" = 200 ] && break
  if [ "$code" = 404 ]; then echo "no session $session in $db" >&2; exit 2; fi
  kill -0 $server 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.5
done
[ "$code" = 200 ] || { echo "serve did not answer at $url (HTTP $code)" >&2; exit 1; }
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$work/profile" --hide-scrollbars \
  --window-size="$size" --screenshot="$(realpath -m "$out")" "$url" 2>/dev/null
echo "$out: $url"
