#!/bin/sh
# Renders every overlay of deploy/ with kubectl kustomize into OUT_DIR/NAME.yaml and prints the
# objects per kind. Usage: render.sh DEPLOY_DIR OUT_DIR
set -eu
deploy=$1
out=$2
mkdir -p "$out"
command -v kubectl >/dev/null || { echo "render: kubectl not found (scripts/install-deps.sh installs it)"; exit 1; }
for overlay in "$deploy"/overlays/*/; do
  name=$(basename "$overlay")
  # kustomize warns on stderr about the older patch fields kept for older kubectl; errors fail.
  kubectl kustomize "$overlay" > "$out/$name.yaml" 2> "$out/$name.stderr" || { cat "$out/$name.stderr"; exit 1; }
  total=$(grep -c '^kind:' "$out/$name.yaml")
  kinds=$(grep '^kind:' "$out/$name.yaml" | sort | uniq -c | awk '{printf "%s%s %s", sep, $3, $1; sep=", "}')
  echo "$name: $total objects ($kinds)"
done
