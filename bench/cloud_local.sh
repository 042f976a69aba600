# Sourced by the bench scripts: start the bench pair's "cloud" (Qwen2.5-Coder-1.5B on loopback, port
# $PORT or 8766), stop it when the script exits, and wait until it answers. Sets $port.
port=${PORT:-8766}
edge-agent cloud-local --model qwen2.5-coder-1.5b --port "$port" > "/tmp/edge-agent-cloud-$port.log" 2>&1 &
cloud_server=$!
trap 'kill $cloud_server 2>/dev/null' EXIT
trap 'exit 143' TERM INT  # so a kill of the script runs the EXIT trap too
for _ in $(seq 1 240); do
  curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null && break
  sleep 0.5
done
