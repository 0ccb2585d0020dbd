#include "common/blas_info.h"

#include <gtest/gtest.h>

namespace anoclip {
namespace {

TEST(BetterOpenBlasCoreTest, UpgradesTheSse3FallbackToTheWidestVectorsTheCpuHas) {
  EXPECT_EQ(BetterOpenBlasCore("Prescott", /*cpu_has_avx512=*/true, /*cpu_has_avx2_fma=*/true), "SkylakeX");
  EXPECT_EQ(BetterOpenBlasCore("Prescott", false, true), "Haswell");
  EXPECT_EQ(BetterOpenBlasCore("Sandybridge", false, true), "Haswell");
  EXPECT_EQ(BetterOpenBlasCore("Haswell", true, true), "SkylakeX");
}

TEST(BetterOpenBlasCoreTest, KeepsKernelsThatAlreadyMatchTheCpu) {
  EXPECT_EQ(BetterOpenBlasCore("SkylakeX", true, true), "");
  EXPECT_EQ(BetterOpenBlasCore("Cooperlake", true, true), "");
  EXPECT_EQ(BetterOpenBlasCore("Haswell", false, true), "");
  EXPECT_EQ(BetterOpenBlasCore("Prescott", false, false), "");
}

TEST(BetterOpenBlasCoreTest, LeavesNamesItDoesNotKnowToOpenBlas) {
  EXPECT_EQ(BetterOpenBlasCore("", true, true), "");
  EXPECT_EQ(BetterOpenBlasCore("Zen5", true, true), "");
}

TEST(BlasInfoTest, ReferenceBlasIsRecognisedByPath) {
  EXPECT_TRUE(IsReferenceBlas("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3"));
  EXPECT_FALSE(IsReferenceBlas("/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblasp-r0.3.21.so"));
  EXPECT_FALSE(IsReferenceBlas("unknown"));
}

}  // namespace
}  // namespace anoclip
