#!/usr/bin/env bash
# Installs the Debian packages anoclip-serve needs (scripts/packages.txt). Idempotent.
# Usage: install-deps.sh [SECTION...]   sections of packages.txt; without any, what building,
#                                       the tests and CI need (runtime build test deploy-test).
#        install-deps.sh --fuzz         that and clang with libFuzzer (scripts/fuzz.sh).
# docker/Dockerfile runs it with "runtime build" in its build stage and "runtime" in the image.
set -euo pipefail
here=$(dirname "$0")

sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
  sections=(runtime build test deploy-test)
elif [ "${sections[0]}" = "--fuzz" ]; then
  sections=(runtime build test deploy-test fuzz)
fi
mapfile -t PACKAGES < <(sh "$here/packages.sh" "${sections[@]}")
missing=()
for pkg in "${PACKAGES[@]}"; do
  # A tool already on the PATH from elsewhere will do (any kubectl has kustomize built in; a
  # node from another repository brings its own npm, which Debian's npm would conflict with).
  case "$pkg" in
    kubernetes-client) command -v kubectl >/dev/null && continue ;;
    nodejs) command -v node >/dev/null && continue ;;
    npm) command -v npm >/dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# libtorch calls whatever libblas.so.3 is selected; the reference BLAS is ~15x slower.
blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/{print $2}')
case "$blas" in
  *openblas*) ;;
  *)
    cand=$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas | head -n1 || true)
    if [ -n "$cand" ]; then
      $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu "$cand"
    fi
    ;;
esac
echo "install-deps: all packages present"
