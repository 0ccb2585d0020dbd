#include "common/blas_info.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/ascii.h"

namespace anoclip {
namespace {

bool OneOf(const std::string& name, std::initializer_list<const char*> names) {
  return std::any_of(names.begin(), names.end(), [&](const char* n) { return name == n; });
}

// OpenBLAS kernel sets by the widest vector instructions they use (DYNAMIC_ARCH names).
bool IsAvx512Core(const std::string& core) { return OneOf(core, {"skylakex", "cooperlake", "sapphirerapids"}); }
bool IsAvx2Core(const std::string& core) { return OneOf(core, {"haswell", "zen"}); }
bool IsPreAvx2Core(const std::string& core) {
  return OneOf(core, {"prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge", "atom", "katmai",
                      "coppermine", "northwood", "banias", "athlon", "opteron", "opteron_sse3", "barcelona",
                      "bobcat", "bulldozer", "piledriver", "steamroller", "excavator"});
}

}  // namespace

std::string BlasLibraryPath() {
  void* symbol = reinterpret_cast<void*>(BlasSgemm());
  Dl_info info;
  if (symbol == nullptr || dladdr(symbol, &info) == 0 || info.dli_fname == nullptr) return "unknown";
  char resolved[PATH_MAX];
  if (realpath(info.dli_fname, resolved) != nullptr) return resolved;
  return info.dli_fname;
}

bool IsReferenceBlas(const std::string& path) {
  return path.find("openblas") == std::string::npos && path.find("mkl") == std::string::npos &&
         path.find("blis") == std::string::npos && path.find("atlas") == std::string::npos &&
         path != "unknown";
}

SgemmFunction BlasSgemm() {
  static const SgemmFunction sgemm = reinterpret_cast<SgemmFunction>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return sgemm;
}

std::string OpenBlasCoreName() {
  using CoreNameFunction = char* (*)();
  auto core_name = reinterpret_cast<CoreNameFunction>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (core_name == nullptr) return "";
  const char* name = core_name();
  return name == nullptr ? "" : name;
}

std::string BetterOpenBlasCore(const std::string& core, bool cpu_has_avx512, bool cpu_has_avx2_fma) {
  const std::string name = absl::AsciiStrToLower(core);
  if (cpu_has_avx512 && (IsAvx2Core(name) || IsPreAvx2Core(name))) return "SkylakeX";
  if (cpu_has_avx2_fma && IsPreAvx2Core(name)) return "Haswell";
  return "";
}

void RestartWithBestBlasKernels(char** argv) {
  if (getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's choice, and our own after a restart
  __builtin_cpu_init();
  // SkylakeX kernels use AVX-512 F, BW, DQ and VL; GCC's checks include the OS saving the registers.
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const bool avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const std::string better = BetterOpenBlasCore(OpenBlasCoreName(), avx512, avx2_fma);
  if (better.empty()) return;
  setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "%s: could not restart with OPENBLAS_CORETYPE=%s (%s); continuing on slower kernels\n",
               argv[0], better.c_str(), std::strerror(errno));
  unsetenv("OPENBLAS_CORETYPE");
}

BlasReport DescribeBlas() {
  BlasReport report;
  report.library = BlasLibraryPath();
  report.kernels = OpenBlasCoreName();
  if (const char* forced = getenv("OPENBLAS_CORETYPE")) report.coretype = forced;
  report.reference = IsReferenceBlas(report.library);
  return report;
}

void LogBlasAtStartup(const char* program) {
  const BlasReport blas = DescribeBlas();
  std::string kernels;
  if (!blas.kernels.empty()) {
    kernels = ", OpenBLAS kernels " + blas.kernels;
    if (!blas.coretype.empty()) kernels += " (OPENBLAS_CORETYPE=" + blas.coretype + ")";
  }
  std::fprintf(stderr, "%s: BLAS %s%s\n", program, blas.library.c_str(), kernels.c_str());
  if (blas.reference) std::fprintf(stderr, "%s: WARNING: %s\n", program, kReferenceBlasWarning);
}

}  // namespace anoclip
