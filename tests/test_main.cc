// GoogleTest main for every test: the tests run on the same BLAS kernels as the binaries.
#include <gtest/gtest.h>

#include "common/blas_info.h"

int main(int argc, char** argv) {
  anoclip::RestartWithBestBlasKernels(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
