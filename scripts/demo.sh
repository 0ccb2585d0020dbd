#!/usr/bin/env bash
# The README's main command (`make demo`), end to end on this machine: install what is missing,
# build, pick a model, serve it on loopback, inspect generated sample images (heatmaps, overlays
# and masks into out/results), run a short load test, stop the server.
#
#   DEMO_MODEL_DIR=DIR       serve this OpenCLIP model directory
#   DEMO_FAST=1              serve the tiny reference model (seconds; its scores mean nothing)
#   DEMO_OUT=DIR             where results go (default out)
#   DEMO_LOAD_SECONDS=S      length of the load test (default 5)
#   DEMO_CLASS=NAME          class to inspect the samples as (default bottle)
#   BUILD_DIR=DIR            build directory (default build, as scripts/test.sh)
#   ANOCLIP_VOCAB=FILE       BPE vocabulary, when the model directory has none
#   ANOCLIP_REFERENCE_DIR    golden data (default ../shared/reference): the tiny model, the vocabulary
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
OUT=${DEMO_OUT:-out}
CLASS=${DEMO_CLASS:-bottle}
LOAD_SECONDS=${DEMO_LOAD_SECONDS:-5}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
say() { echo "demo: $*"; }

# 1. Dependencies and the three binaries (only those: a demo need not build every test).
bash scripts/install-deps.sh
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DANOCLIP_REFERENCE_DIR="$REFERENCE"
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}" --target anoclip anoclip-server anoclip-client
BIN="$(cd "$BUILD_DIR" && pwd)/bin"

# 2. The model: a given one; the tiny reference model (DEMO_FAST=1); the real ViT-B-16-plus-240
#    (downloaded first where the network allows); or a random model of that architecture.
has_weights() {
  [ -f "$1/open_clip_config.json" ] &&
    { [ -f "$1/open_clip_model.safetensors" ] || [ -f "$1/open_clip_pytorch_model.bin" ]; }
}
online() { curl --silent --head --max-time 5 --output /dev/null https://huggingface.co; }
MEANINGLESS=0
if [ -n "${DEMO_MODEL_DIR:-}" ]; then
  MODEL=$DEMO_MODEL_DIR
  has_weights "$MODEL" || { echo "demo: no OpenCLIP weights in $MODEL" >&2; exit 1; }
elif [ "${DEMO_FAST:-0}" = 1 ]; then
  MODEL=$REFERENCE/tiny-vit/model
  has_weights "$MODEL" || { echo "demo: no tiny reference model in $MODEL (set ANOCLIP_REFERENCE_DIR)" >&2; exit 1; }
  MEANINGLESS=1
else
  MODEL=models/ViT-B-16-plus-240
  if ! has_weights "$MODEL" && [ -f scripts/download-model.sh ]; then
    if online; then
      say "downloading ViT-B-16-plus-240 into $MODEL"
      timeout 1800 bash scripts/download-model.sh "$MODEL" || say "the download failed; going on without it"
    else
      say "no network: the real ViT-B-16-plus-240 cannot be downloaded here"
    fi
  fi
  if ! has_weights "$MODEL"; then
    MODEL=models/random-ViT-B-16-plus-240
    MEANINGLESS=1
    if ! has_weights "$MODEL"; then
      say "making a random ViT-B-16-plus-240 in $MODEL (seed 0)"
      "$BIN/anoclip" make-test-model --arch ViT-B-16-plus-240 --seed 0 --out "$MODEL"
    fi
  fi
fi

# 3. The BPE vocabulary: the model directory, $ANOCLIP_VOCAB, the shared reference copy, or a download.
VOCAB=""
for candidate in "$MODEL/bpe_simple_vocab_16e6.txt.gz" "${ANOCLIP_VOCAB:-}" "$REFERENCE/bpe_simple_vocab_16e6.txt.gz" \
                 models/bpe_simple_vocab_16e6.txt.gz; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then VOCAB=$candidate; break; fi
done
if [ -z "$VOCAB" ] && online; then
  mkdir -p models
  curl --fail --location --max-time 120 -o models/bpe_simple_vocab_16e6.txt.gz.part \
    https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz &&
    mv models/bpe_simple_vocab_16e6.txt.gz.part models/bpe_simple_vocab_16e6.txt.gz &&
    VOCAB=models/bpe_simple_vocab_16e6.txt.gz
fi
[ -n "$VOCAB" ] || { echo "demo: no BPE vocabulary found; set ANOCLIP_VOCAB=FILE" >&2; exit 1; }

if [ "$MEANINGLESS" = 1 ]; then
  cat <<'WARN'
##############################################################################
#  WARNING: no real CLIP weights. This demo serves a RANDOM test model, so    #
#  every score, heatmap and verdict below is MEANINGLESS. For real results    #
#  run scripts/download-model.sh on a machine with internet access.           #
##############################################################################
WARN
fi
say "model $MODEL"
say "vocabulary $VOCAB"

# 4. Serve on loopback (ports picked by the kernel, read back from the ready file).
mkdir -p "$OUT"
rm -rf "$OUT/samples" "$OUT/results" "$OUT/results.csv" "$OUT/loadtest.json" "$OUT/loadtest.csv" "$OUT/server.ready"
READY=$OUT/server.ready
"$BIN/anoclip-server" --model "$MODEL" --vocab "$VOCAB" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --warm "$CLASS" --cache-dir "$OUT/text-cache" --ready-file "$READY" 2>"$OUT/server.log" &
SERVER=$!
stop_server() {
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -TERM "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM
say "anoclip-server pid $SERVER; loading the model and building the text features of '$CLASS'..."
for _ in $(seq 1 1200); do
  [ -f "$READY" ] && break
  if ! kill -0 "$SERVER" 2>/dev/null; then
    cat "$OUT/server.log" >&2
    echo "demo: the server failed to start (log above)" >&2
    exit 1
  fi
  sleep 0.5
done
[ -f "$READY" ] || { echo "demo: the server was not ready within 10 minutes (see $OUT/server.log)" >&2; exit 1; }
GRPC_PORT=$(sed -E 's/.*"grpc_port": *([0-9]+).*/\1/' "$READY")
METRICS_PORT=$(sed -E 's/.*"metrics_port": *([0-9]+).*/\1/' "$READY")
TARGET="127.0.0.1:$GRPC_PORT"
client() { "$BIN/anoclip-client" "$@"; }

# 5. The client: health, model, sample images with drawn defects, inspection, a short load test.
say "serving on $TARGET, metrics on 127.0.0.1:$METRICS_PORT"
echo "\$ anoclip-client health --target $TARGET"
client health --target "$TARGET"
echo "\$ anoclip-client info --target $TARGET"
client info --target "$TARGET"
client make-samples --out "$OUT/samples" >/dev/null
say "sample parts in $OUT/samples: $(cd "$OUT/samples" && echo *.png)"
echo "\$ anoclip-client inspect $OUT/samples --class $CLASS --threshold 0.5 --out $OUT/results --target $TARGET"
client inspect "$OUT/samples" --class "$CLASS" --threshold 0.5 --out "$OUT/results" --csv "$OUT/results.csv" \
  --target "$TARGET"
echo "\$ anoclip-client detect $OUT/samples/defect_scratch.png --class $CLASS --threshold 0.5 --json --target $TARGET"
client detect "$OUT/samples/defect_scratch.png" --class "$CLASS" --threshold 0.5 --json --target "$TARGET"
echo "\$ anoclip-client loadtest --concurrency 2 --duration $LOAD_SECONDS --classes $CLASS --metrics 127.0.0.1:$METRICS_PORT --target $TARGET"
client loadtest --concurrency 2 --duration "$LOAD_SECONDS" --classes "$CLASS" --metrics "127.0.0.1:$METRICS_PORT" \
  --json "$OUT/loadtest.json" --csv "$OUT/loadtest.csv" --target "$TARGET"

# 6. Stop: SIGTERM drains the server, which exits 0.
kill -TERM "$SERVER"
status=0
wait "$SERVER" || status=$?
trap - EXIT
[ "$status" = 0 ] || { echo "demo: the server exited with $status (see $OUT/server.log)" >&2; exit 1; }
say "server stopped"
say "heatmaps, overlays and masks in $OUT/results/, scores in $OUT/results.csv, load test in $OUT/loadtest.json"
if [ "$MEANINGLESS" = 1 ]; then say "(random test model: the scores above are meaningless)"; fi
