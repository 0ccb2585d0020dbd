#!/usr/bin/env bash
# The memory and CPU one anoclip-server replica uses, to size Kubernetes requests and limits
# (deploy/README.md): resident memory after start-up (model loaded, one class warm), peak resident
# memory and mean CPU cores under a closed-loop load at concurrency 8 (--max-batch 8), read from
# /proc. Loopback only; the load stops by itself.
#
#   MEASURE_MODEL_DIR=DIR   model (default: a random ViT-B-16-plus-240, made once)
#   MEASURE_SECONDS=S       length of the load (default 60)
#   BUILD_DIR=DIR           build directory (default build)
set -euo pipefail
cd "$(dirname "$0")/.."

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

READY=$OUT/server.ready
rm -f "$READY"
"$BIN/anoclip-server" --model "$MODEL" --vocab "$VOCAB" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --max-batch 8 --warm bottle --cache-dir "$OUT/text-cache" --ready-file "$READY" 2>"$OUT/server.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 1200); do
  [ -f "$READY" ] && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/server.log" >&2; exit 1; }
  sleep 0.5
done
[ -f "$READY" ] || { echo "measure-resources: the server was not ready in 10 minutes" >&2; exit 1; }
TARGET=127.0.0.1:$(sed -E 's/.*"grpc_port": *([0-9]+).*/\1/' "$READY")

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
echo "CPU: $(lscpu | sed -nE 's/^Model name: *//p'), $(nproc) cores"
echo "resident after start-up (model loaded, bottle warm): $((idle_rss / 1024)) MiB"
echo "under load (concurrency 8, ${SECONDS_LOAD} s): resident $((load_rss / 1024)) MiB, peak $((peak_rss / 1024)) MiB, CPU $cores cores"
head -n 3 "$OUT/load.txt"
