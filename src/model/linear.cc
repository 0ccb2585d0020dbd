#include "model/linear.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "model/onednn_ops.h"

namespace anoclip::model {
namespace {

std::atomic<GemmLibrary> selected{GemmLibrary::kBlas};

// oneDNN takes the float32 and bfloat16 CPU products; everything else stays on libtorch's own path.
bool OnOneDnn(GemmLibrary library, const at::Tensor& x, const at::Tensor& weight) {
  return library == GemmLibrary::kOneDnn && x.device().is_cpu() &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
         weight.scalar_type() == x.scalar_type();
}

at::Tensor LinearWith(GemmLibrary library, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                      const Epilogue& epilogue, const PackedWeight& packed = {}) {
  if (OnOneDnn(library, x, weight) && !at::GradMode::is_enabled()) {
    return onednn::Linear(x, weight, bias, epilogue, packed);
  }
  return ApplyEpilogue(at::linear(x, weight, bias), epilogue);
}

}  // namespace

const char* GemmLibraryName(GemmLibrary library) { return library == GemmLibrary::kOneDnn ? "onednn" : "blas"; }

absl::StatusOr<GemmLibrary> ParseGemmLibrary(const std::string& name) {
  if (name == "blas") return GemmLibrary::kBlas;
  if (name != "onednn") return absl::InvalidArgumentError(absl::StrCat("unknown GEMM library \"", name, "\""));
  if (!at::hasMKLDNN()) return absl::FailedPreconditionError("this libtorch was built without oneDNN");
  return GemmLibrary::kOneDnn;
}

void SetGemmLibrary(GemmLibrary library) { selected.store(library); }
GemmLibrary CurrentGemmLibrary() { return selected.load(); }

GemmLibrary FasterGemmLibrary(const GemmShape& shape) {
  if (!at::hasMKLDNN()) return GemmLibrary::kBlas;
  at::NoGradGuard no_grad;
  const auto x = at::randn({shape.m, shape.k}), weight = at::randn({shape.n, shape.k}), bias = at::randn({shape.n});
  // Two calls each warm up (the BLAS starts its threads, oneDNN builds and caches its kernel: the
  // first two oneDNN calls took 4x and 3x a warm one); then the fastest of three, alternated.
  double fastest[2] = {1e30, 1e30};
  for (int run = -2; run < 3; ++run) {
    for (const GemmLibrary library : {GemmLibrary::kBlas, GemmLibrary::kOneDnn}) {
      const auto start = std::chrono::steady_clock::now();
      (void)LinearWith(library, x, weight, bias, {});
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (run >= 0) fastest[static_cast<int>(library)] = std::min(fastest[static_cast<int>(library)], seconds);
    }
  }
  return fastest[1] < fastest[0] ? GemmLibrary::kOneDnn : GemmLibrary::kBlas;
}

at::Tensor ApplyEpilogue(at::Tensor y, const Epilogue& epilogue) {
  switch (epilogue.activation) {
    case Activation::kNone: break;
    case Activation::kGelu: y = at::gelu(y); break;
    case Activation::kQuickGelu: y = y * at::sigmoid(1.702 * y); break;
    case Activation::kTanh: y = at::tanh(y); break;
  }
  if (epilogue.residual.defined()) y = epilogue.residual + y;
  return epilogue.output_dtype == at::ScalarType::Undefined ? y : y.to(epilogue.output_dtype);
}

bool OnOneDnn(const at::Tensor& x) {
  return OnOneDnn(selected.load(std::memory_order_relaxed), x, x) && !at::GradMode::is_enabled();
}

at::Tensor ConvertForProduct(const at::Tensor& x, at::ScalarType dtype) {
  if (x.scalar_type() == dtype) return x;
  const bool float_types = (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
                           (dtype == at::kFloat || dtype == at::kBFloat16);
  if (float_types && selected.load(std::memory_order_relaxed) == GemmLibrary::kOneDnn && x.device().is_cpu() &&
      !at::GradMode::is_enabled()) {
    return onednn::Convert(x, dtype);
  }
  return x.to(dtype);
}

PackedWeight PackWeight(const at::Tensor& weight) {
  if (!OnOneDnn(selected.load(), weight, weight)) return {};
  return onednn::Pack(weight);
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const Epilogue& epilogue,
                  const PackedWeight& packed) {
  return LinearWith(selected.load(std::memory_order_relaxed), x, weight, bias, epilogue, packed);
}

}  // namespace anoclip::model
