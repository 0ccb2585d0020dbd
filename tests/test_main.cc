// GoogleTest main for every test: the tests run on the same BLAS kernels as the binaries, and
// ::testing::TempDir() is a directory of this process's own, removed when its tests end, so that
// test programs running at once (ctest -j, two build trees) never share a scratch file.
#include <gtest/gtest.h>

#include <stdlib.h>

#include "common/blas_info.h"
#include "test_util.h"

int main(int argc, char** argv) {
  anoclip::RestartWithBestBlasKernels(argv);  // may restart the process: before the directory
  ::testing::InitGoogleTest(&argc, argv);
  const anoclip::testing::ScopedTempDir scratch;
  setenv("TEST_TMPDIR", scratch.path().c_str(), /*overwrite=*/1);  // what ::testing::TempDir() returns
  const int result = RUN_ALL_TESTS();
  return result;
}
