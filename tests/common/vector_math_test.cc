#include "common/vector_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace anoclip {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Units in the last place between two floats of one sign.
int64_t UlpDistance(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, sizeof ia);
  std::memcpy(&ib, &b, sizeof ib);
  return std::abs(static_cast<int64_t>(ia) - static_cast<int64_t>(ib));
}

TEST(VectorMathTest, ExponentialFollowsLibmOverFloatsNormalRange) {
  for (float x = -87.0f; x <= 0.0f; x += 0.0137f) {
    EXPECT_LE(UlpDistance(ExpOfNonPositive(x), std::exp(x)), 2) << "x = " << x;
  }
  EXPECT_EQ(ExpOfNonPositive(0.0f), 1.0f);
  EXPECT_EQ(ExpOfNonPositive(-88.0f), 0.0f);
  EXPECT_EQ(ExpOfNonPositive(-kInf), 0.0f);
  EXPECT_TRUE(std::isnan(ExpOfNonPositive(kNaN)));
}

// Both of Cephes' branches and the switch between them, tiny arguments kept to the last bit, the
// saturation, and the sign.
TEST(VectorMathTest, TanhFollowsLibmAcrossItsRange) {
  int64_t worst = 0;
  for (float x = 1e-30f; x < 50.0f; x *= 1.0007f) {
    for (const float signed_x : {x, -x}) {
      const int64_t ulps = UlpDistance(Tanh(signed_x), std::tanh(signed_x));
      worst = std::max(worst, ulps);
      ASSERT_LE(ulps, 3) << "x = " << signed_x;
    }
  }
  EXPECT_GE(worst, 1);  // an approximation, compared at the bit
  for (const float x : {0.6249999f, 0.625f, 0.6250001f, -0.625f}) {
    EXPECT_LE(UlpDistance(Tanh(x), std::tanh(x)), 3) << "x = " << x;
  }
  EXPECT_EQ(Tanh(0.0f), 0.0f);
  EXPECT_EQ(Tanh(44.0f), 1.0f);
  EXPECT_EQ(Tanh(kInf), 1.0f);
  EXPECT_EQ(Tanh(-kInf), -1.0f);
  EXPECT_TRUE(std::isnan(Tanh(kNaN)));
}

}  // namespace
}  // namespace anoclip
