#!/usr/bin/env bash
# Serving throughput against the engine's own batched throughput, on one machine:
#   1. offline: `anoclip bench --parts detect` (whole engine call per image at batch 8 and 1);
#   2. the same model behind anoclip-server (--max-batch 8) on loopback, driven by
#      `anoclip-client loadtest` at concurrency 8, then at concurrency 1 in BENCH_ROUNDS windows,
#      each followed by an offline run while the server idles.
# A shared machine's speed drifts over minutes, so each gRPC figure is set against offline runs
# taken right beside it: concurrency 8 against the mean of the runs just before and just after
# it, the concurrency-1 p50 (median over the windows) against the median of the offline batch-1
# times taken between the windows. Prints throughputs, their ratio, that latency ratio, p50/p99
# latencies and the server's batch sizes; keeps the JSON reports in $BENCH_OUT (default
# out/bench-serving).
#
#   BENCH_MODEL_DIR=DIR   model to serve (default: a random ViT-B-16-plus-240, made once)
#   BENCH_SECONDS=S       length of the concurrency-8 run (default 60; concurrency 1 runs half,
#                         split over the windows)
#   BENCH_ROUNDS=N        concurrency-1 windows, each followed by an offline run (default 3)
#   BENCH_THREADS=N       libtorch threads (default: all cores)
#   BUILD_DIR=DIR         build directory (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/server-ready.sh

BUILD_DIR=${BUILD_DIR:-build}
BIN="$(cd "$BUILD_DIR" && pwd)/bin"
OUT=${BENCH_OUT:-out/bench-serving}
SECONDS_C8=${BENCH_SECONDS:-60}
ROUNDS=${BENCH_ROUNDS:-3}
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

loadtest() {  # concurrency, seconds, report name
  echo "gRPC: anoclip-client loadtest --concurrency $1 --warmup 10 --duration $2"
  "$BIN/anoclip-client" loadtest --target "$TARGET" --metrics "$METRICS" --concurrency "$1" --warmup 10 \
    --duration "$2" --classes bottle --json "$OUT/$3.json" >"$OUT/$3.txt"
}
loadtest 8 "$SECONDS_C8" c8
window=$((SECONDS_C8 / 2 / ROUNDS))
[ "$window" -lt 5 ] && window=5
for round in $(seq 1 "$ROUNDS"); do
  loadtest 1 "$window" "c1-$round"
  offline "round-$round"  # the server idles meanwhile
done
curl -s "http://$METRICS/metrics" | grep '^anoclip_batch_size' >"$OUT/batch_size.txt" || true
kill -TERM $SERVER 2>/dev/null || true
wait $SERVER 2>/dev/null || true

median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.6f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
offline_s=$(awk -v a="$(number "$OUT/offline-before.json" detect.b8)" -v b="$(number "$OUT/offline-round-1.json" detect.b8)" \
  'BEGIN { printf "%.6f", (a + b) / 2 }')
offline_b1_s=$(for round in $(seq 1 "$ROUNDS"); do number "$OUT/offline-round-$round.json" detect.b1; done | median)
c1_p50=$(for round in $(seq 1 "$ROUNDS"); do number "$OUT/c1-$round.json" p50; done | median)
echo "offline before: detect.b8 $(number "$OUT/offline-before.json" detect.b8) s per image," \
  "detect.b1 $(number "$OUT/offline-before.json" detect.b1) s"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: concurrency 1 p50 $(number "$OUT/c1-$round.json" p50) ms; then offline" \
    "detect.b8 $(number "$OUT/offline-round-$round.json" detect.b8) s per image," \
    "detect.b1 $(number "$OUT/offline-round-$round.json" detect.b1) s"
done

c8_rps=$(number "$OUT/c8.json" throughput_rps)
awk -v off="$offline_s" -v rps="$c8_rps" 'BEGIN {
  printf "offline batch 8 (mean of the runs before and after concurrency 8): %.3f images/s (%.3f s per image)\n", 1 / off, off
  printf "gRPC concurrency 8: %.3f images/s = %.2fx offline\n", rps, rps * off }'
awk -v b1="$offline_b1_s" -v p50="$c1_p50" 'BEGIN {
  printf "gRPC concurrency 1: p50 %.1f ms (median of the windows) = %.2fx offline detect.b1 (%.1f ms, median of the runs between them)\n", p50, p50 / 1000 / b1, b1 * 1000 }'
echo "concurrency 8: p50 $(number "$OUT/c8.json" p50) ms, p99 $(number "$OUT/c8.json" p99) ms," \
  "server mean batch $(number "$OUT/c8.json" mean_batch)"
for round in $(seq 1 "$ROUNDS"); do
  echo "concurrency 1, window $round: p50 $(number "$OUT/c1-$round.json" p50) ms, p99 $(number "$OUT/c1-$round.json" p99) ms," \
    "server mean batch $(number "$OUT/c1-$round.json" mean_batch)"
done
echo "batch sizes (server histogram, cumulative):"
cat "$OUT/batch_size.txt"
