#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, ASan and UBSan in build-fuzz/ and runs each
# for SECONDS, starting from its committed seeds (fuzz/corpus/NAME/). New inputs go to
# build-fuzz/corpus/NAME/, crashes, leaks and timeouts to build-fuzz/artifacts/NAME/.
#   scripts/fuzz.sh SECONDS [NAME...]      (default: every target in fuzz/CMakeLists.txt)
# Exits non-zero if any target found a crash. Each crash, once fixed, is committed to
# fuzz/corpus/NAME/, where the normal suite's fuzz_replay_NAME test runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:?usage: scripts/fuzz.sh SECONDS [NAME...]}
shift
BUILD_DIR=${BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-$(nproc)}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}

bash scripts/install-deps.sh --fuzz
CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DANOCLIP_FUZZ=ON -DANOCLIP_REFERENCE_DIR="$REFERENCE" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target anoclip_fuzzers

if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < "$BUILD_DIR/fuzzers.txt"; fi
export ANOCLIP_REFERENCE_DIR="$REFERENCE"
# A fuzz input that needs over 2 GB or 10 s is a finding, as is any leak.
# Leaks inside third-party libraries that the project cannot free are listed, each with its
# reason, in scripts/sanitizers/lsan.supp.
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1"
export LSAN_OPTIONS="suppressions=$(pwd)/scripts/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

failed=()
for name in "${targets[@]}"; do
  [ -n "$name" ] || continue
  corpus="$BUILD_DIR/corpus/$name"
  artifacts="$BUILD_DIR/artifacts/$name"
  mkdir -p "$corpus" "$artifacts"
  echo "fuzz: $name for ${SECONDS_EACH}s"
  if "$BUILD_DIR/bin/fuzz_$name" "$corpus" "fuzz/corpus/$name" \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$artifacts/" -print_final_stats=1 >"$BUILD_DIR/$name.log" 2>&1; then
    echo "fuzz: $name: no crash ($(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$BUILD_DIR/$name.log" | grep -o '[0-9]*$') runs, corpus $(ls "$corpus" | wc -l) inputs)"
  else
    echo "fuzz: $name: FOUND A CRASH; see $BUILD_DIR/$name.log and $artifacts/"
    grep -m5 -E 'ERROR|SUMMARY|runtime error|Test unit written' "$BUILD_DIR/$name.log" || tail -20 "$BUILD_DIR/$name.log"
    failed+=("$name")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
