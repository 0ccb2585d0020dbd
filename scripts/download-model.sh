#!/usr/bin/env bash
# Downloads the paper's model, OpenCLIP ViT-B-16-plus-240 trained on LAION-400M (epoch 32), and
# the CLIP BPE vocabulary into models/ViT-B-16-plus-240/. Needs access to huggingface.co and
# github.com (it cannot run on machines without internet; the tests never need it).
#
#   scripts/download-model.sh [DEST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-models/ViT-B-16-plus-240}
HUB=${ANOCLIP_HUB:-https://huggingface.co}
REPO=timm/vit_base_patch16_plus_240.laion400m_e32
VOCAB_URL=https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz

mkdir -p "$DEST"
fetch() {  # url dest: resumable, fails on HTTP errors, leaves no partial file behind
  local url=$1 out=$2
  if [ -s "$out" ]; then echo "have $out"; return 0; fi
  echo "fetching $url"
  curl --fail --location --retry 3 --connect-timeout 20 --continue-at - -o "$out.part" "$url"
  mv "$out.part" "$out"
}

fetch "$HUB/$REPO/resolve/main/open_clip_config.json" "$DEST/open_clip_config.json"
# Prefer safetensors (memory-mapped, no pickle); fall back to the torch.save checkpoint.
if ! fetch "$HUB/$REPO/resolve/main/open_clip_model.safetensors" "$DEST/open_clip_model.safetensors"; then
  rm -f "$DEST/open_clip_model.safetensors.part"
  fetch "$HUB/$REPO/resolve/main/open_clip_pytorch_model.bin" "$DEST/open_clip_pytorch_model.bin"
fi
fetch "$VOCAB_URL" "$DEST/bpe_simple_vocab_16e6.txt.gz"

# The BPE file is a gzip of the merges list; a truncated download would fail later, so check now.
gzip -t "$DEST/bpe_simple_vocab_16e6.txt.gz"
echo "model ready in $DEST"
