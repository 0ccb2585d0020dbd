#!/usr/bin/env bash
# Builds the unit and service tests with AddressSanitizer + UndefinedBehaviorSanitizer and with
# ThreadSanitizer, each in its own build folder (build-asan/, build-tsan/), and runs them.
# Too slow for CI (every translation unit is rebuilt twice and the tests run several times
# slower); run it by hand after changes to threading, parsing or memory handling.
#   scripts/sanitizers.sh [asan|tsan|all] [extra ctest arguments...]
# Suppressions for reports inside third-party libraries are in scripts/sanitizers/, each one
# justified there; nothing in the project is suppressed.
set -euo pipefail
cd "$(dirname "$0")/.."

WHICH=${1:-all}
[ $# -gt 0 ] && shift
JOBS=${JOBS:-$(nproc)}
REFERENCE=${ANOCLIP_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}
SUPPRESSIONS=$(pwd)/scripts/sanitizers
# The unit and service tests. Left out: the demo, client integration and CLI tests, which start
# the real binaries for minutes each and cover the same code as server_test,
# client_run_load_test and the unit tests, which run here.
# SANITIZER_TESTS="a_test b_test" runs a subset.
DEFAULT_TESTS="blas_info_test memo_file_test engine_test image_test state_dict_test tokenizer_test clip_model_test regions_test
  calibration_test detector_golden_test test_time_adapter_test server_test security_test dynamic_batcher_test
  client_load_core_test client_run_load_test"
read -r -d '' -a TESTS <<< "${SANITIZER_TESTS:-$DEFAULT_TESTS}" || true
ONLY="^($(IFS='|'; echo "${TESTS[*]}"))\$"

bash scripts/install-deps.sh

build() {  # build folder, sanitizer flags, extra link inputs
  # Line tables for readable reports; frame pointers for ASan's fast unwinder.
  local flags="$2 -g1 -fno-omit-frame-pointer"
  cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DANOCLIP_REFERENCE_DIR="$REFERENCE" \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="$2 ${3:-}" -DCMAKE_SHARED_LINKER_FLAGS="$2"
  cmake --build "$1" -j "$JOBS" --target "${TESTS[@]}"
}

status=0
if [ "$WHICH" = asan ] || [ "$WHICH" = all ]; then
  # vptr is left out: it needs the RTTI of every class it sees, and libtorch's classes cross
  # shared-library boundaries without exported type_info, which it reports as bad casts.
  build build-asan "-fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=undefined"
  echo "sanitizers: running the ASan+UBSan build"
  ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1" \
  LSAN_OPTIONS="suppressions=$SUPPRESSIONS/lsan.supp:print_suppressions=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    ctest --test-dir build-asan --output-on-failure -j "$JOBS" -R "$ONLY" "$@" || status=1
fi
if [ "$WHICH" = tsan ] || [ "$WHICH" = all ]; then
  # abseil's locks made visible to TSan: see scripts/sanitizers/absl_mutex_tsan.cc.
  mkdir -p build-tsan
  shim=build-tsan/absl_mutex_tsan.o
  if [ ! -e "$shim" ] || [ scripts/sanitizers/absl_mutex_tsan.cc -nt "$shim" ]; then
    # No exceptions: the object is also linked into CMake's C compiler checks, which lack the C++ runtime.
    g++ -std=c++17 -O1 -fno-exceptions -fsanitize=thread -c scripts/sanitizers/absl_mutex_tsan.cc -o "$shim"
    rm -rf build-tsan/bin  # the shim is a link input CMake does not track: relink every test
  fi
  build build-tsan "-fsanitize=thread" "$(pwd)/$shim"
  echo "sanitizers: running the TSan build"
  # OMP_NUM_THREADS=1: libgomp is not instrumented, so TSan cannot see the barriers that order
  # the work of an OpenMP team and would report every parallel torch kernel; the project's own
  # threads (batcher, workers, streams, gRPC handlers) are what this build checks. (Engines take
  # their thread count from OMP_NUM_THREADS where the test leaves it at 0.)
  # ignore_noninstrumented_modules: accesses made inside uninstrumented libraries (libtorch,
  # OpenBLAS, gRPC's core, abseil) through TSan's interceptors are not checked.
  OMP_NUM_THREADS=1 \
  TSAN_OPTIONS="suppressions=$SUPPRESSIONS/tsan.supp:halt_on_error=0:second_deadlock_stack=1:report_signal_unsafe=0:ignore_noninstrumented_modules=1" \
    ctest --test-dir build-tsan --output-on-failure -j "$JOBS" -R "$ONLY" "$@" || status=1
fi
exit $status
