// Which BLAS library the process is running on. Debian's libtorch calls whatever libblas.so.3
// the alternatives system selects; the reference BLAS is about 15x slower than OpenBLAS.
#pragma once

#include <string>

namespace anoclip {

// Resolved path of the shared object that provides sgemm_, or "unknown".
std::string BlasLibraryPath();

// True for the netlib reference implementation (the slow one).
bool IsReferenceBlas(const std::string& path);

// One log line on stderr naming the BLAS, with a warning for the reference one.
void LogBlasAtStartup(const char* program);

}  // namespace anoclip
