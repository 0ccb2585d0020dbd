#!/usr/bin/env bash
# Serving throughput against the engine's own batched throughput, on one machine:
#   1. offline: `anoclip bench --parts detect` (whole engine call per image at batch 8 and 1),
#      before and after the gRPC runs, averaged;
#   2. the same model behind anoclip-server (--max-batch 8) on loopback, driven by
#      `anoclip-client loadtest` at concurrency 8 and 1, with the server's own split from /metrics.
# Prints throughputs, their ratio, the concurrency-1 p50 latency against the offline batch-1
# time, p50/p99 latencies and the server's batch sizes; keeps the JSON
# reports in $BENCH_OUT (default out/bench-serving).
#
#   BENCH_MODEL_DIR=DIR   model to serve (default: a random ViT-B-16-plus-240, made once)
#   BENCH_SECONDS=S       length of the concurrency-8 run (default 60; concurrency 1 runs half)
#   BENCH_THREADS=N       libtorch threads (default: all cores)
#   BUILD_DIR=DIR         build directory (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/server-ready.sh

BUILD_DIR=${BUILD_DIR:-build}
BIN="$(cd "$BUILD_DIR" && pwd)/bin"
OUT=${BENCH_OUT:-out/bench-serving}
SECONDS_C8=${BENCH_SECONDS:-60}
THREADS=${BENCH_THREADS:-$(nproc)}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
VOCAB=${ANOCLIP_VOCAB:-$REFERENCE/bpe_simple_vocab_16e6.txt.gz}
MODEL=${BENCH_MODEL_DIR:-models/random-ViT-B-16-plus-240}
mkdir -p "$OUT"

if [ ! -f "$MODEL/open_clip_config.json" ]; then
  "$BIN/anoclip" make-test-model --arch ViT-B-16-plus-240 --seed 0 --out "$MODEL"
fi
# First number after "KEY": in a JSON file (the reports are nlohmann dumps, one key per line).
number() { sed -nE "s/.*\"$2\": *(-?[0-9.e+-]+).*/\1/p" "$1" | head -n1; }

# The offline figures are taken before and after the gRPC runs and averaged: a shared machine's
# speed drifts over the minutes between them, and the bracket spreads that drift evenly.
offline() {
  echo "offline ($1): anoclip bench --parts detect (batch 1 and 8)"
  "$BIN/anoclip" bench --model "$MODEL" --vocab "$VOCAB" --threads "$THREADS" --runs 5 --parts detect --json \
    >"$OUT/offline-$1.json"
}
offline before

READY=$OUT/server.ready
rm -f "$READY"
"$BIN/anoclip-server" --model "$MODEL" --vocab "$VOCAB" --threads "$THREADS" --listen 127.0.0.1:0 \
  --metrics-listen 127.0.0.1:0 --max-batch 8 --warm bottle \
  --cache-dir "$OUT/text-cache" --ready-file "$READY" 2>"$OUT/server.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
wait_ready "$READY" "$SERVER" "$OUT/server.log" bench-serving
TARGET=127.0.0.1:$(ready_port "$READY" grpc_port)
METRICS=127.0.0.1:$(ready_port "$READY" metrics_port)

for c in 8 1; do
  duration=$SECONDS_C8
  [ "$c" = 1 ] && duration=$((SECONDS_C8 / 2))
  echo "gRPC: anoclip-client loadtest --concurrency $c --warmup 10 --duration $duration"
  "$BIN/anoclip-client" loadtest --target "$TARGET" --metrics "$METRICS" --concurrency "$c" --warmup 10 \
    --duration "$duration" --classes bottle --json "$OUT/c$c.json" >"$OUT/c$c.txt"
done
curl -s "http://$METRICS/metrics" | grep '^anoclip_batch_size' >"$OUT/batch_size.txt" || true
kill -TERM $SERVER 2>/dev/null || true
wait $SERVER 2>/dev/null || true
offline after
mean_of() { awk -v a="$(number "$OUT/offline-before.json" "$1")" -v b="$(number "$OUT/offline-after.json" "$1")" \
  'BEGIN { printf "%.6f", (a + b) / 2 }'; }
offline_s=$(mean_of detect.b8)
offline_b1_s=$(mean_of detect.b1)
for when in before after; do
  echo "offline $when: detect.b8 $(number "$OUT/offline-$when.json" detect.b8) s per image," \
    "detect.b1 $(number "$OUT/offline-$when.json" detect.b1) s"
done

c8_rps=$(number "$OUT/c8.json" throughput_rps)
awk -v off="$offline_s" -v rps="$c8_rps" 'BEGIN {
  printf "offline batch 8 (mean of before and after): %.3f images/s (%.3f s per image)\n", 1 / off, off
  printf "gRPC concurrency 8: %.3f images/s = %.2fx offline\n", rps, rps * off }'
awk -v b1="$offline_b1_s" -v p50="$(number "$OUT/c1.json" p50)" 'BEGIN {
  printf "gRPC concurrency 1: p50 %.1f ms = %.2fx offline detect.b1 (%.1f ms)\n", p50, p50 / 1000 / b1, b1 * 1000 }'
for c in 8 1; do
  echo "concurrency $c: p50 $(number "$OUT/c$c.json" p50) ms, p99 $(number "$OUT/c$c.json" p99) ms," \
    "server mean batch $(number "$OUT/c$c.json" mean_batch)"
done
echo "batch sizes (server histogram, cumulative):"
cat "$OUT/batch_size.txt"
