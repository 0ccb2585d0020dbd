#!/usr/bin/env bash
# `anoclip eval`'s throughput beside the engine's own batch-8 figure (`anoclip bench --parts
# detect`), same model, one run; then the metrics stage alone on a synthetic set the size of
# MVTec AD's test split (1,725 images, 240x240 maps). Not part of the test suite.
#   MODEL=DIR (default: the tiny reference model)  IMAGES=K test images per class (default 24)
#   THREADS=N intra-op threads for both (default 0: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BUILD_DIR:-build}/bin
REF=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
MODEL=${MODEL:-$REF/tiny-vit/model}
VOCAB=${VOCAB:-$REF/bpe_simple_vocab_16e6.txt.gz}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p')"
"$BIN/anoclip" make-dataset --layout mvtec --out "$WORK/data" --classes 2 --images "${IMAGES:-24}" --size 256 --seed 0
THREADS=${THREADS:-0}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN/anoclip" bench --model "$MODEL" --vocab "$VOCAB" --threads "$THREADS" --runs 5 --parts detect --json > "$WORK/bench.json" 2>/dev/null
"$BIN/anoclip" eval --data "$WORK/data" --dataset mvtec --model "$MODEL" --vocab "$VOCAB" --batch 8 --threads "$THREADS" \
  --out "$WORK/eval" > /dev/null 2>"$WORK/eval.log" || { cat "$WORK/eval.log"; exit 1; }
/usr/bin/python3 - "$WORK/bench.json" "$WORK/eval/metrics.json" <<'PY'
import json, sys
bench = json.load(open(sys.argv[1]))
timings = json.load(open(sys.argv[2]))["timings_s"]
engine = bench["detect.b8_images_per_s"]
whole = timings["images_per_s"]
print(f"model {bench['model']} (image size {bench['image_size']}), {bench['threads']} threads, BLAS {bench['blas_kernels']}")
print(f"anoclip bench detect.b8: {engine:.2f} images/s")
print(f"anoclip eval scoring:    {whole:.2f} images/s ({timings['images_scored']} images: decode, resize, masks, "
      f"engine, stored results; text features {timings['text_features']:.2f} s apart)")
print(f"eval / bench: {whole / engine:.3f}")
print(f"eval metrics stage {timings['metrics']:.3f} s, reports {timings['report']:.3f} s, whole run {timings['total']:.2f} s")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BIN/eval_metrics_bench"
