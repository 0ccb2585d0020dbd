// Elementary functions for the hot loops of our own passes: written without library calls or
// branches so that GCC vectorises the loops that call them (with ANOCLIP_VECTOR_CLONES, in
// AVX-512 and AVX2 too), and equal on every instruction set.
#pragma once

#include <cstdint>
#include <cstring>

namespace anoclip {

// e^x for x <= 0 (a softmax's inputs less their row's largest): 2^n · p(r) with n = round(x·log2 e)
// and r = x - n·ln 2 in [-ln2/2, ln2/2], p Cephes' expf polynomial of degree 7 (about one
// ulp). Below -87.3, where e^x leaves float's normal range, 0. NaN stays NaN.
inline float ExpOfNonPositive(float x) {
  constexpr float kRoundingShift = 12582912.0f;  // 1.5·2²³: adding it rounds to an integer
  constexpr uint32_t kRoundingShiftBits = 0x4B400000;
  const float shifted = x * 1.44269504088896341f + kRoundingShift;
  const float n = shifted - kRoundingShift;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln 2 in two parts: exact n·ln2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t n_bits;
  std::memcpy(&n_bits, &shifted, sizeof n_bits);  // n in the low bits, whatever x is
  const uint32_t exponent_bits = (n_bits - kRoundingShiftBits + 127u) << 23;
  float power;
  std::memcpy(&power, &exponent_bits, sizeof power);
  return x < -87.3f ? 0.0f : p * power;
}

// tanh(x) as Cephes' tanhf computes it: x + x³·q(x²) below |x| = 0.625, where 1 - 2/(e^2|x| + 1)
// would lose x's low bits, and (1 - e)/(1 + e) with e = e^-2|x| above, signed as x (two or three
// ulp); ±1 beyond |x| = 44, NaN for NaN.
inline float Tanh(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t sign = bits & 0x80000000u, magnitude_bits = bits & 0x7fffffffu;
  float magnitude;
  std::memcpy(&magnitude, &magnitude_bits, sizeof magnitude);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
       3.33332819422e-1f) * z * x + x;
  const float e = ExpOfNonPositive(-2.0f * magnitude);
  const float large_magnitude = (1.0f - e) / (1.0f + e);
  uint32_t large_bits;
  std::memcpy(&large_bits, &large_magnitude, sizeof large_bits);
  large_bits |= sign;
  float large;
  std::memcpy(&large, &large_bits, sizeof large);
  return magnitude < 0.625f ? small : large;
}

}  // namespace anoclip
