// The machine's matrix-product rate on one shape, for reading a forward's FLOP rate as a
// fraction of what the libraries reach: the BLAS libtorch runs on (OpenBLAS, with the kernels
// the environment selects), oneDNN's BLAS-style sgemm, and oneDNN's matmul primitive reading
// the weight in place (the kernel model::Linear runs), all on the same operands.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "model/model_flops.h"

namespace anoclip::cli {

class GemmRate {
 public:
  // Random operands of `shape`: [m×k] times the transpose of a [n×k] weight, as a Linear does.
  explicit GemmRate(const model::GemmShape& shape);

  // GFLOP/s of one product (repeated `reps` times, averaged); 0 when the library is absent.
  double BlasGflops(int reps) const;
  double OneDnnSgemmGflops(int reps) const;
  double OneDnnLinearGflops(int reps) const;

  // The BLAS's short name: "openblas", else the library file's name.
  static std::string BlasName();

 private:
  model::GemmShape shape_;
  at::Tensor input_, weight_, output_;
};

}  // namespace anoclip::cli
