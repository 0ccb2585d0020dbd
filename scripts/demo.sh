#!/usr/bin/env bash
# The main job, end to end on this machine: install what is missing, build, pick a model, serve it
# on loopback, inspect generated sample images (heatmaps and overlays into out/), run a short
# load test, stop the server.
#
#   DEMO_MODEL_DIR=DIR   use this model directory
#   DEMO_FAST=1          use the tiny reference model (seconds instead of minutes; meaningless scores)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
OUT=${DEMO_OUT:-out}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}

bash scripts/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target anoclip anoclip-server anoclip-client
BIN="$(cd "$BUILD_DIR" && pwd)/bin"

has_weights() { [ -f "$1/open_clip_config.json" ] && { [ -f "$1/open_clip_model.safetensors" ] || [ -f "$1/open_clip_pytorch_model.bin" ]; }; }

# The model: a given one, the real ViT-B-16-plus-240 (downloaded where the network allows), or
# a random stand-in.
MODEL=${DEMO_MODEL_DIR:-}
CLASS=bottle
if [ -z "$MODEL" ] && [ "${DEMO_FAST:-0}" = 1 ]; then
  MODEL="$REFERENCE/tiny-vit/model"
fi
if [ -z "$MODEL" ]; then
  MODEL=models/ViT-B-16-plus-240
  has_weights "$MODEL" || timeout 900 bash scripts/download-model.sh "$MODEL" || true
fi
RANDOM_MODEL=0
if ! has_weights "$MODEL"; then
  MODEL=models/random-ViT-B-16-plus-240
  has_weights "$MODEL" || "$BIN/anoclip" make-test-model --arch ViT-B-16-plus-240 --seed 0 --out "$MODEL"
  RANDOM_MODEL=1
fi
case "$MODEL" in */tiny-vit/model) RANDOM_MODEL=1 ;; esac

# The BPE vocabulary: model dir, $ANOCLIP_VOCAB, the shared reference copy, or a download.
VOCAB=""
for candidate in "$MODEL/bpe_simple_vocab_16e6.txt.gz" "${ANOCLIP_VOCAB:-}" "$REFERENCE/bpe_simple_vocab_16e6.txt.gz"; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then VOCAB=$candidate; break; fi
done
if [ -z "$VOCAB" ]; then
  mkdir -p models
  curl --fail --location -o models/bpe_simple_vocab_16e6.txt.gz \
    https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz && VOCAB=models/bpe_simple_vocab_16e6.txt.gz
fi
[ -n "$VOCAB" ] || { echo "demo: no BPE vocabulary found; set ANOCLIP_VOCAB" >&2; exit 1; }

if [ "$RANDOM_MODEL" = 1 ]; then
  cat <<'WARN'
##############################################################################
#  WARNING: no real CLIP weights here. The demo runs on a RANDOM model:       #
#  every score and heatmap below is MEANINGLESS. For real results, run        #
#  scripts/download-model.sh on a machine with internet access.               #
##############################################################################
WARN
fi
echo "demo: model $MODEL"

rm -rf "$OUT" && mkdir -p "$OUT"
READY="$OUT/server.ready"
"$BIN/anoclip-server" --model "$MODEL" --vocab "$VOCAB" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --warm "$CLASS" --ready-file "$READY" --cache-dir "$OUT/text-cache" 2>"$OUT/server.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
echo "demo: starting the server (building the text features of '$CLASS' first)..."
for _ in $(seq 1 600); do
  [ -f "$READY" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log" >&2; echo "demo: the server failed to start" >&2; exit 1; }
  sleep 1
done
[ -f "$READY" ] || { echo "demo: the server did not become ready" >&2; exit 1; }
GRPC_PORT=$(sed -E 's/.*"grpc_port":([0-9]+).*/\1/' "$READY")
METRICS_PORT=$(sed -E 's/.*"metrics_port":([0-9]+).*/\1/' "$READY")
CLIENT=("$BIN/anoclip-client")
TARGET=(--target "127.0.0.1:$GRPC_PORT")

"${CLIENT[@]}" health "${TARGET[@]}"
"${CLIENT[@]}" info "${TARGET[@]}"
"${CLIENT[@]}" make-samples --out "$OUT/samples"
echo "demo: inspecting the samples (heatmaps, overlays and masks into $OUT/results)"
"${CLIENT[@]}" inspect "$OUT/samples" --class "$CLASS" --threshold 0.5 --out "$OUT/results" \
  --csv "$OUT/results.csv" "${TARGET[@]}"
echo "demo: a short load test"
"${CLIENT[@]}" loadtest "${TARGET[@]}" --concurrency 2 --duration "${DEMO_LOAD_SECONDS:-5}" --classes "$CLASS" \
  --metrics "127.0.0.1:$METRICS_PORT" --json "$OUT/loadtest.json"
kill -TERM $SERVER
wait $SERVER
trap - EXIT
echo "demo: done; results in $OUT/"
