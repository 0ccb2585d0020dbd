// Float32 and bfloat16 products straight through oneDNN's primitives (the same libdnnl that
// libtorch runs on), reading and writing libtorch's tensors in place. libtorch's own oneDNN linear
// copies its input into oneDNN's tensor type and its output back, and runs bias, activation and
// residual as separate passes over memory; here one matmul or inner-product primitive reads the
// rows and weights as they lie and applies bias, GELU and the residual add as it writes. The
// bfloat16 attention runs as two batched matmuls and a softmax over all heads at once (float32's
// goes one head at a time, model/head_attention.h). See docs/performance.md.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "model/linear.h"

namespace anoclip::model::onednn {

// From this many rows on, a product whose operands are dense and whose weight is not packed runs
// as oneDNN's inner product, whose gemm:jit kernel outruns the matmul primitive's brgemm on a
// plain weight there (on a 2-core AVX-512 EPYC, 1808 rows, float32: 360 against 336 GFLOP/s with
// GELU fused, 380 against 347 without; bfloat16: 633 against 557, 757 against 652); below it the
// brgemm is as fast or faster (226 rows: 333-368 against 255-328 in float32, 616 against 546 in
// bfloat16). docs/performance.md.
inline constexpr int64_t kInnerProductMinRows = 1536;

// x [..., in] · weightᵀ ([out,in], any strides) + bias, then `epilogue`; float32 or bfloat16 CPU
// tensors of one type (bfloat16 products accumulate in float32), written in the epilogue's
// output dtype (float32 or bfloat16). Where `packed` holds this weight (Pack), the matmul reads
// its blocks instead, whatever the row count.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const Epilogue& epilogue,
                  const PackedWeight& packed = {});

// weight [out,in] (float32 or bfloat16 on the CPU, any strides) in the blocked layout oneDNN's
// matmul chooses for it, the same at every row count; empty where that is the plain layout.
PackedWeight Pack(const at::Tensor& weight);

// x (float32 or bfloat16 on the CPU, any strides) as a tensor of `dtype` (either), through
// oneDNN's reorder; dense in x's layout where x is dense (a transposed view stays transposed),
// else contiguous.
at::Tensor Convert(const at::Tensor& x, at::ScalarType dtype);

// A float32 matrix in int8: x ≈ scale · values, symmetric, one scale for the whole matrix (its
// largest magnitude maps to 127).
struct Int8Matrix {
  at::Tensor values;  // int8, [rows, columns], any strides
  float scale = 1;
  Int8Matrix t() const { return {values.t(), scale}; }  // the transpose, a view
};

// x (float32 on the CPU, 2-D, any strides) rounded to Int8Matrix through oneDNN's reorder; dense in
// x's layout where x is dense (a transposed view stays transposed), else contiguous. `largest` is
// max |x| where the caller has it from the pass that wrote x (else it is reduced here); an
// all-zero x gets scale 1, one with a NaN or infinity a NaN or infinite scale.
Int8Matrix QuantizeInt8(const at::Tensor& x, std::optional<float> largest = std::nullopt);

// x [m,k] · weightᵀ (weight [n,k]), int8 matrices read in place through their strides where one
// of each is 1, with int32 sums, written as float32 [m,n]. Exact while k·127² < 2²⁴ (k <= 1040),
// else rounded as float32 rounds.
// No scale, bias or activation: the pass that reads the sums applies them. oneDNN 2.6 runs a
// product with run-time scales or post-ops on its older int8 gemm, without them on its brgemm
// kernels: on one thread, 0.30 against 0.47-0.52 ms for the adapter's [225×640]·[640×924] with
// run-time scales, bias and tanh (docs/performance.md).
at::Tensor MultiplyInt8(const at::Tensor& x, const at::Tensor& weight);

// Whether the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX), where
// MultiplyInt8 runs about twice as fast as bfloat16's products.
bool HasNativeInt8();

// Layer normalisation of x's rows (dense float32 or bfloat16, [..., C]) with weight and bias ([C]),
// through oneDNN's layer normalization primitive (model/layer_norm.h).
at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

// y [m,n] = x [m,k] · weightᵀ ([n,k]), all contiguous, through oneDNN's BLAS-style sgemm: the
// bench's reference rate for oneDNN next to the primitive that Linear runs.
void Sgemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y);

// The libdnnl in use, "2.6.3".
std::string LibraryVersion();

// Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bfloat16 products
// run about twice as fast as float32's; elsewhere oneDNN emulates them, slower than float32.
bool HasNativeBfloat16();

// Per head, softmax(scale · q·kᵀ + mask)·v, written into `out` [B,Lq,h·d] with the heads side by
// side. q [B,h,Lq,d], k and v [B,h,Lk,d]: float32 or bfloat16 CPU views with any strides (the
// projection's output, split into heads, is read in place); mask [Lq,Lk], added to the scaled
// scores, or undefined. The transformer sends it bfloat16 only: float32 runs faster one head at a
// time (model/head_attention.h).
void AttendInto(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, float scale,
                const at::Tensor& out);

}  // namespace anoclip::model::onednn
