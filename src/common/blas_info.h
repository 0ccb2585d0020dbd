// Which BLAS library the process is running on, and making OpenBLAS use this CPU's best kernels.
// Debian's libtorch calls whatever libblas.so.3 the alternatives system selects; the reference
// BLAS is about 15x slower than OpenBLAS. OpenBLAS 0.3.21 picks its kernels from the CPU model
// when the library loads, and on CPU models it does not know (Sapphire Rapids behind a
// hypervisor, for one) it falls back to its SSE3 "Prescott" kernels: 4x slower than its
// AVX-512 ones on the same core.
#pragma once

#include <string>

namespace anoclip {

// Resolved path of the shared object that provides sgemm_, or "unknown".
std::string BlasLibraryPath();

// True for the netlib reference implementation (the slow one).
bool IsReferenceBlas(const std::string& path);

// OpenBLAS's name for the kernels it runs ("SkylakeX", "Haswell", "Prescott"), or "" when the
// BLAS is not OpenBLAS.
std::string OpenBlasCoreName();

// The OPENBLAS_CORETYPE this CPU should run when OpenBLAS chose `core`, or "" when `core` is
// already as good as the CPU allows (or unknown to us: then OpenBLAS knows better).
// `cpu_has_avx512` and `cpu_has_avx2_fma` describe the CPU, OS support included.
std::string BetterOpenBlasCore(const std::string& core, bool cpu_has_avx512, bool cpu_has_avx2_fma);

// Called first thing in main(): when OpenBLAS chose weaker kernels than this CPU runs and the
// user did not set OPENBLAS_CORETYPE, sets it and re-executes the program (OpenBLAS reads it only
// when it loads). Returns only when no restart is needed or the restart failed.
void RestartWithBestBlasKernels(char** argv);

// The Fortran-interface sgemm_ of the BLAS libtorch runs on (column-major), for products too
// small to pay libtorch's per-op dispatch; nullptr when the process has no BLAS.
using SgemmFunction = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                               const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                               const float* beta, float* c, const int* ldc);
SgemmFunction BlasSgemm();

// What start-up logs about the BLAS libtorch calls.
struct BlasReport {
  std::string library;      // path of the libblas.so.3 in use
  std::string kernels;      // OpenBLAS's kernel name; empty for other BLAS
  std::string coretype;     // $OPENBLAS_CORETYPE, when set
  bool reference = false;   // the reference BLAS, about 15x slower
};
BlasReport DescribeBlas();
inline constexpr char kReferenceBlasWarning[] =
    "this is the reference BLAS, about 15x slower; install libopenblas0-openmp (scripts/install-deps.sh selects it)";

// DescribeBlas as one line on stderr, with the warning for the reference BLAS.
void LogBlasAtStartup(const char* program);

}  // namespace anoclip
