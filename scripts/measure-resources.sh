#!/usr/bin/env bash
# The memory and CPU one anoclip-server replica uses, to size Kubernetes requests and limits
# (deploy/README.md): resident memory after start-up (model loaded, one class warm), peak resident
# memory (VmHWM: start-up included) and mean CPU cores under a closed-loop load at concurrency 8
# (--max-batch 8), resident memory once the load is over, each against the weight file; and the
# time from process start to SERVING, first with an empty text cache, then with the class in the
# persisted cache. Read from /proc. Loopback only; the load stops by itself.
#
#   MEASURE_MODEL_DIR=DIR   model (default: a random ViT-B-16-plus-240, made once)
#   MEASURE_SECONDS=S       length of the load (default 60)
#   BUILD_DIR=DIR           build directory (default build)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/server-ready.sh

BIN="$(cd "${BUILD_DIR:-build}" && pwd)/bin"
OUT=${MEASURE_OUT:-out/measure-resources}
SECONDS_LOAD=${MEASURE_SECONDS:-60}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
VOCAB=${ANOCLIP_VOCAB:-$REFERENCE/bpe_simple_vocab_16e6.txt.gz}
MODEL=${MEASURE_MODEL_DIR:-models/random-ViT-B-16-plus-240}
mkdir -p "$OUT"
if [ ! -f "$MODEL/open_clip_config.json" ]; then
  "$BIN/anoclip" make-test-model --arch ViT-B-16-plus-240 --seed 0 --out "$MODEL"
fi

# Starts a server with "bottle" warm and waits for its ready file (written once it is SERVING);
# sets SERVER and STARTUP_S (process start to SERVING, polled every 10 ms).
start_server() {
  local ready=$OUT/server.ready
  rm -f "$ready"
  local t0
  t0=$(date +%s.%N)
  "$BIN/anoclip-server" --model "$MODEL" --vocab "$VOCAB" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --max-batch 8 --warm bottle --cache-dir "$OUT/text-cache" --ready-file "$ready" 2>"$OUT/server.log" &
  SERVER=$!
  wait_ready "$ready" "$SERVER" "$OUT/server.log" measure-resources
  STARTUP_S=$(awk -v t0="$t0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.2f", t1 - t0}')
  TARGET=127.0.0.1:$(ready_port "$ready" grpc_port)
}
stop_server() { kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
trap stop_server EXIT

rm -rf "$OUT/text-cache"
start_server  # builds the class's text features and persists them
cold_startup_s=$STARTUP_S
stop_server
start_server  # the class from the persisted cache
warm_startup_s=$STARTUP_S

# The server restarts itself once to pick OpenBLAS kernels (same pid: exec), so /proc/$SERVER holds.
kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$SERVER/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
idle_rss=$(kib VmRSS)
ticks0=$(cpu_ticks)
t0=$(date +%s.%N)
"$BIN/anoclip-client" loadtest --target "$TARGET" --concurrency 8 --duration "$SECONDS_LOAD" --classes bottle \
  --json "$OUT/load.json" >"$OUT/load.txt"
t1=$(date +%s.%N)
ticks1=$(cpu_ticks)
peak_rss=$(kib VmHWM)
load_rss=$(kib VmRSS)
hz=$(getconf CLK_TCK)
cores=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.2f", (b - a) / hz / (t1 - t0)}')
sleep 2  # the last batch's buffers released
steady_rss=$(kib VmRSS)
weights_kib=$(($(stat -c %s "$MODEL/open_clip_model.safetensors") / 1024))
ratio() { awk -v a="$1" -v b="$weights_kib" 'BEGIN {printf "%.2f", a / b}'; }
echo "CPU: $(lscpu | sed -nE 's/^Model name: *//p'), $(nproc) cores"
echo "weight file: $((weights_kib / 1024)) MiB"
echo "start to SERVING: ${cold_startup_s} s with an empty text cache, ${warm_startup_s} s with bottle persisted"
echo "resident after start-up (model loaded, bottle warm): $((idle_rss / 1024)) MiB ($(ratio "$idle_rss")x the weight file)"
echo "under load (concurrency 8, ${SECONDS_LOAD} s): resident $((load_rss / 1024)) MiB, peak $((peak_rss / 1024)) MiB ($(ratio "$peak_rss")x, start-up included), CPU $cores cores"
echo "steady after the load: resident $((steady_rss / 1024)) MiB ($(ratio "$steady_rss")x the weight file)"
head -n 3 "$OUT/load.txt"
