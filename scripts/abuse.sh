#!/usr/bin/env bash
# A hostile-client run against a loopback server: every request that once hurt the server
# (tools/abuse/abuse_client.cc lists them) mixed with normal Detect traffic and never-read
# Inspect streams, for SECONDS (default 300). Prints requests sent, bad requests refused, good
# requests answered, requests lost (must be 0), server restarts (must be 0) and peak RSS against
# the RSS when the run began (must stay under 2x). Exit 0 when all three hold.
#   scripts/abuse.sh [SECONDS]          (BUILD_DIR=build, MODEL=tiny reference model)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN=${1:-300}
BUILD_DIR=${BUILD_DIR:-build}
BIN=$BUILD_DIR/bin
REF=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
MODEL=${MODEL:-$REF/tiny-vit/model}
VOCAB=${VOCAB:-$REF/bpe_simple_vocab_16e6.txt.gz}
for binary in anoclip-server anoclip-abuse; do
  [ -x "$BIN/$binary" ] || cmake --build "$BUILD_DIR" --target "$binary"
done

work=$(mktemp -d)
trap 'kill "$server_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$BIN/anoclip-server" --model "$MODEL" --vocab "$VOCAB" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --warm bottle --cache-dir "$work/cache" --ready-file "$work/ready.json" --max-stream-unwritten 16 \
  --max-class-builds-per-minute 6 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
  [ -s "$work/ready.json" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
port=$(sed -E 's/.*"grpc_port":([0-9]+).*/\1/' "$work/ready.json")
metrics_port=$(sed -E 's/.*"metrics_port":([0-9]+).*/\1/' "$work/ready.json")
echo "abuse: server pid $server_pid on 127.0.0.1:$port for $SECONDS_TO_RUN s"
status=0
"$BIN/anoclip-abuse" --target "127.0.0.1:$port" --pid "$server_pid" --seconds "$SECONDS_TO_RUN" || status=$?
echo "abuse: server answers by code:"
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep '^anoclip_requests_total' | sed 's/^/  /'
kill -0 "$server_pid" 2>/dev/null || { echo "abuse: the server died"; tail -20 "$work/server.log"; exit 1; }
exit $status
