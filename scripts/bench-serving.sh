#!/usr/bin/env bash
# Serving throughput against the engine's own batched throughput, on one machine:
#   1. offline: `anoclip bench --parts detect` (whole engine call per image at batch 8 and 1);
#   2. the same model behind anoclip-server (--max-batch 8) on loopback, driven by
#      `anoclip-client loadtest` in BENCH_ROUNDS rounds: concurrency 8, then concurrency 1, then
#      an offline run while the server idles.
# A shared machine's speed drifts over minutes, so each gRPC figure is set against offline runs
# taken right beside it: each round's concurrency-8 throughput against the mean of the offline
# batch-8 runs just before and just after it (the ratio is the median over the rounds), the
# concurrency-1 p50 (median over the rounds) against the median of the offline batch-1 times
# taken between them. Prints throughputs, their ratio, that latency ratio, p50/p99 latencies and
# the server's batch sizes; keeps the JSON reports in $BENCH_OUT (default out/bench-serving).
#
#   BENCH_MODEL_DIR=DIR   model to serve (default: a random ViT-B-16-plus-240, made once)
#   BENCH_SECONDS=S       concurrency-8 time over all rounds (default 60; concurrency 1 runs half)
#   BENCH_ROUNDS=N        rounds (default 3)
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
c8_window=$((SECONDS_C8 / ROUNDS))
[ "$c8_window" -lt 5 ] && c8_window=5
c1_window=$((SECONDS_C8 / 2 / ROUNDS))
[ "$c1_window" -lt 5 ] && c1_window=5
for round in $(seq 1 "$ROUNDS"); do
  loadtest 8 "$c8_window" "c8-$round"
  loadtest 1 "$c1_window" "c1-$round"
  offline "round-$round"  # the server idles meanwhile
done
curl -s "http://$METRICS/metrics" | grep '^anoclip_batch_size' >"$OUT/batch_size.txt" || true
kill -TERM $SERVER 2>/dev/null || true
wait $SERVER 2>/dev/null || true

median() { sort -g | awk '{ v[NR] = $1 } END { printf "%.6f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
offline_b8() { number "$OUT/offline-$1.json" detect.b8; }
previous() { [ "$1" -eq 1 ] && echo before || echo "round-$(($1 - 1))"; }
# Round r's concurrency-8 ratio: its throughput times the mean offline batch-8 time beside it.
c8_ratio=$(for round in $(seq 1 "$ROUNDS"); do
  awk -v rps="$(number "$OUT/c8-$round.json" throughput_rps)" -v a="$(offline_b8 "$(previous "$round")")" \
    -v b="$(offline_b8 "round-$round")" 'BEGIN { printf "%.6f\n", rps * (a + b) / 2 }'
done | median)
c8_rps=$(for round in $(seq 1 "$ROUNDS"); do number "$OUT/c8-$round.json" throughput_rps; done | median)
offline_b8_s=$(for run in before $(seq -f "round-%g" 1 "$ROUNDS"); do offline_b8 "$run"; done | median)
offline_b1_s=$(for round in $(seq 1 "$ROUNDS"); do number "$OUT/offline-round-$round.json" detect.b1; done | median)
c1_p50=$(for round in $(seq 1 "$ROUNDS"); do number "$OUT/c1-$round.json" p50; done | median)
echo "offline before: detect.b8 $(offline_b8 before) s per image, detect.b1 $(number "$OUT/offline-before.json" detect.b1) s"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round: concurrency 8 $(number "$OUT/c8-$round.json" throughput_rps) images/s" \
    "(p50 $(number "$OUT/c8-$round.json" p50) ms, p99 $(number "$OUT/c8-$round.json" p99) ms," \
    "server mean batch $(number "$OUT/c8-$round.json" mean_batch)); concurrency 1 p50" \
    "$(number "$OUT/c1-$round.json" p50) ms (p99 $(number "$OUT/c1-$round.json" p99) ms, server mean batch" \
    "$(number "$OUT/c1-$round.json" mean_batch)); then offline detect.b8 $(offline_b8 "round-$round") s per image," \
    "detect.b1 $(number "$OUT/offline-round-$round.json" detect.b1) s"
done
awk -v ratio="$c8_ratio" -v rps="$c8_rps" -v off="$offline_b8_s" 'BEGIN {
  printf "gRPC concurrency 8: %.2fx offline (median over the rounds of each round against the offline runs beside it); median %.3f images/s against offline %.3f images/s (%.3f s per image)\n", ratio, rps, 1 / off, off }'
awk -v b1="$offline_b1_s" -v p50="$c1_p50" 'BEGIN {
  printf "gRPC concurrency 1: p50 %.1f ms (median of the windows) = %.2fx offline detect.b1 (%.1f ms, median of the runs between them)\n", p50, p50 / 1000 / b1, b1 * 1000 }'
echo "batch sizes (server histogram, cumulative):"
cat "$OUT/batch_size.txt"
