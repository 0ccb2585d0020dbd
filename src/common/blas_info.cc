#include "common/blas_info.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

#include <cstdio>

namespace anoclip {

std::string BlasLibraryPath() {
  void* symbol = dlsym(RTLD_DEFAULT, "sgemm_");
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

void LogBlasAtStartup(const char* program) {
  const std::string path = BlasLibraryPath();
  std::fprintf(stderr, "%s: BLAS %s\n", program, path.c_str());
  if (IsReferenceBlas(path)) {
    std::fprintf(stderr,
                 "%s: WARNING: this is the reference BLAS, about 15x slower; install "
                 "libopenblas0-openmp (scripts/install-deps.sh selects it)\n",
                 program);
  }
}

}  // namespace anoclip
