// Float32 linear layers on the CPU through the faster of the two GEMM libraries libtorch carries:
// the BLAS it calls (OpenBLAS, with the kernels the environment selects) and oneDNN, which has
// its own AVX-512 and AMX kernels and on some machines runs the model's products 1.5-1.8x
// faster. The choice is measured once per process on the model's own largest product
// (LoadEngine, `--gemm auto`) or set by the operator (`--gemm blas|onednn`).
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "model/model_flops.h"

namespace anoclip::model {

enum class GemmLibrary { kBlas, kOneDnn };

const char* GemmLibraryName(GemmLibrary library);  // "blas" or "onednn"
// "blas" or "onednn"; InvalidArgument otherwise, and FailedPrecondition for oneDNN where this
// libtorch was built without it.
absl::StatusOr<GemmLibrary> ParseGemmLibrary(const std::string& name);

// The library Linear uses, for the whole process (kBlas until set: libtorch's own path).
void SetGemmLibrary(GemmLibrary library);
GemmLibrary CurrentGemmLibrary();

// Runs Linear's product of `shape` with each library, alternating, and returns the faster (kBlas
// where libtorch has no oneDNN). Ten products: 0.12-0.2 s for a ViT-B on 2 cores, first calls
// included, which is why the server remembers the result (src/anomaly/engine.cc).
GemmLibrary FasterGemmLibrary(const GemmShape& shape);

enum class Activation { kNone, kGelu, kQuickGelu, kTanh };  // kQuickGelu: x·sigmoid(1.702·x)

// What a layer applies to its product: the activation, then the residual added (same shape as
// the output), written in `output_dtype` (undefined: the input's). oneDNN applies all three while
// it writes the output (a bfloat16 product written as float32 needs no conversion pass);
// elsewhere they are libtorch ops.
struct Epilogue {
  Activation activation = Activation::kNone;
  at::Tensor residual;
  at::ScalarType output_dtype = at::ScalarType::Undefined;
};

// `epilogue` applied to y with libtorch's ops.
at::Tensor ApplyEpilogue(at::Tensor y, const Epilogue& epilogue);

// Whether oneDNN is selected and takes x's products: float32 or bfloat16 on the CPU, outside
// autograd.
bool OnOneDnn(const at::Tensor& x);

// x in `dtype` (itself where it already is). Where oneDNN is selected, a CPU conversion between
// float32 and bfloat16 runs as oneDNN's reorder, with the CPU's vector conversions: libtorch's
// copy converts to bfloat16 one element at a time, about 1 ns each on a 2-core EPYC, which made
// up two thirds of the bfloat16 test-time adapter's time (docs/performance.md).
at::Tensor ConvertForProduct(const at::Tensor& x, at::ScalarType dtype);

namespace onednn {
struct BlockedLayout;  // oneDNN's description of the blocks (onednn_ops.cc)
}

// A layer's weight [out,in] copied once into the blocked layout that oneDNN's matmul reads on this
// CPU. Given the plain layout, the matmul first copies the weight into those blocks on every call:
// packed, a ViT-B-16-plus-240's batch-1 forward took 6-12% less time, its batch-8 forward about
// the same (docs/performance.md). Empty where the plain layout is already the kernel's.
struct PackedWeight {
  at::Tensor blocks;  // the weight's bytes in the blocked layout
  std::shared_ptr<const onednn::BlockedLayout> layout;
  bool packed() const { return blocks.defined(); }
};

// `weight` (float32 or bfloat16, on the CPU) packed for oneDNN where oneDNN is selected; else empty.
PackedWeight PackWeight(const at::Tensor& weight);

// x [..., in] · weightᵀ + bias -> [..., out], then `epilogue`. Through onednn::Linear when
// OnOneDnn(x), reading `packed` (the same weight, PackWeight) where given; everything else is
// libtorch's linear (the BLAS for float32) on `weight`.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                  const Epilogue& epilogue = {}, const PackedWeight& packed = {});

}  // namespace anoclip::model
