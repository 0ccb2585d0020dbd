// A linear layer's product in dynamic int8 (--precision int8): the weight quantized once, per
// output channel and symmetric, and packed for libtorch's quantized engine (oneDNN on x86,
// QNNPACK elsewhere); each call quantizes its input per tensor, multiplies in int8 with int32
// sums and returns float32 (`quantized::linear_dynamic`, the op behind PyTorch's
// torch.ao.quantization.quantize_dynamic).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>

#include <string>

namespace anoclip::model {

class Int8Linear {
 public:
  Int8Linear() = default;
  // weight [out,in] and bias [out], float32 on the CPU.
  static Int8Linear Pack(const at::Tensor& weight, const at::Tensor& bias);
  bool packed() const { return !packed_.isNone(); }
  // x [..., in] float32 -> [..., out] float32.
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  c10::IValue packed_;
};

// Selects the quantized engine for Int8Linear (once per process): oneDNN where libtorch has it,
// else QNNPACK. Returns its name, or an empty string where this libtorch has neither.
std::string SelectInt8Engine();

}  // namespace anoclip::model
