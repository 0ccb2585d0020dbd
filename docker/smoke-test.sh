#!/bin/sh
# Runs inside the runtime image as its user: a tiny random model, the server on loopback, health
# SERVING, one Detect through anoclip-client, then SIGTERM and a clean drain (exit 0).
set -eu
work=$(mktemp -d)
cd /tmp/smoke
anoclip make-test-model --config smoke-model.json --seed 0 --out "$work/model" --vocab vocab/bpe_simple_vocab_16e6.txt.gz
anoclip-server --model "$work/model" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --cache-dir "$work/cache" \
  --warm bottle --drain-timeout-s 10 --ready-file "$work/ready.json" &
server=$!
i=0
while [ ! -s "$work/ready.json" ]; do
  kill -0 "$server" 2>/dev/null || { echo "smoke: the server exited before it was ready"; exit 1; }
  i=$((i + 1)); [ "$i" -le 600 ] || { echo "smoke: not ready after 120 s"; kill "$server"; exit 1; }
  sleep 0.2
done
port=$(sed 's/.*"grpc_port":\([0-9]*\).*/\1/' "$work/ready.json")
target="127.0.0.1:$port"
test "$(anoclip-client health --target "$target")" = SERVING
anoclip-client make-samples --out "$work/samples" --size 64 >/dev/null
anoclip-client detect "$work/samples/defect_scratch.png" --class bottle --threshold 0.5 --json --target "$target" \
  > "$work/detect.json"
grep -q '"image_score"' "$work/detect.json"
cat "$work/detect.json"
kill -TERM "$server"
wait "$server"
echo "smoke: SERVING, one Detect answered, drained with exit 0"
rm -rf "$work"
