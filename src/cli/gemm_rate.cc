#include "cli/gemm_rate.h"

#include <torch/torch.h>

#include <chrono>

#include "common/blas_info.h"
#include "model/onednn_ops.h"

namespace anoclip::cli {
namespace {

template <typename Fn>
double Gflops(const model::GemmShape& shape, int reps, Fn&& fn) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) fn();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return shape.flops() * reps / seconds / 1e9;
}

}  // namespace

GemmRate::GemmRate(const model::GemmShape& shape) : shape_(shape) {
  torch::NoGradGuard no_grad;
  input_ = torch::randn({shape.m, shape.k});
  weight_ = torch::randn({shape.n, shape.k});
  output_ = torch::empty({shape.m, shape.n});
}

double GemmRate::BlasGflops(int reps) const {
  const SgemmFunction sgemm = BlasSgemm();
  if (sgemm == nullptr) return 0;
  // Column-major: outputᵀ [n×m] = weight [n×k] · inputᵀ [k×m].
  const int m = shape_.n, n = shape_.m, k = shape_.k;
  const float one = 1.0f, zero = 0.0f;
  return Gflops(shape_, reps, [&] {
    sgemm("T", "N", &m, &n, &k, &one, weight_.data_ptr<float>(), &k, input_.data_ptr<float>(), &k, &zero,
          output_.data_ptr<float>(), &m);
  });
}

double GemmRate::OneDnnSgemmGflops(int reps) const {
  return Gflops(shape_, reps, [&] { model::onednn::Sgemm(input_, weight_, output_); });
}

double GemmRate::OneDnnLinearGflops(int reps) const {
  torch::NoGradGuard no_grad;
  return Gflops(shape_, reps, [&] { (void)model::onednn::Linear(input_, weight_, {}, {}); });
}

std::string GemmRate::BlasName() {
  if (!OpenBlasCoreName().empty()) return "openblas";
  const std::string path = BlasLibraryPath();
  return path.substr(path.find_last_of('/') + 1);
}

}  // namespace anoclip::cli
