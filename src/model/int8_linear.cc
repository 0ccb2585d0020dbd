#include "model/int8_linear.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>

namespace anoclip::model {
namespace {

// The ops are registered by libtorch's quantized kernels and have no C++ function of their own.
void Call(const char* op, torch::jit::Stack& stack) {
  c10::Dispatcher::singleton().findSchemaOrThrow(op, "").callBoxed(&stack);
}

}  // namespace

std::string SelectInt8Engine() {
  const auto& supported = at::globalContext().supportedQEngines();
  for (const auto engine : {at::QEngine::ONEDNN, at::QEngine::QNNPACK}) {
    if (std::find(supported.begin(), supported.end(), engine) != supported.end()) {
      at::globalContext().setQEngine(engine);
      return c10::toString(engine);
    }
  }
  return "";
}

Int8Linear Int8Linear::Pack(const at::Tensor& weight, const at::Tensor& bias) {
  const auto w = weight.detach().to(at::kFloat).contiguous();
  // Symmetric per output channel: the largest magnitude of each row maps to 127.
  const auto scales = (w.abs().amax(1).to(at::kDouble) / 127.0).clamp_min(1e-12);
  const auto zero_points = at::zeros({w.size(0)}, at::kLong);
  torch::jit::Stack stack{at::quantize_per_channel(w, scales, zero_points, 0, at::kQInt8),
                          c10::optional<at::Tensor>(bias.detach().to(at::kFloat).contiguous())};
  Call("quantized::linear_prepack", stack);
  Int8Linear linear;
  linear.packed_ = std::move(stack.at(0));
  return linear;
}

at::Tensor Int8Linear::operator()(const at::Tensor& x) const {
  auto sizes = x.sizes().vec();
  torch::jit::Stack stack{x.reshape({-1, sizes.back()}).contiguous(), packed_, /*reduce_range=*/false};
  Call("quantized::linear_dynamic", stack);
  auto y = stack.at(0).toTensor();
  sizes.back() = y.size(1);
  return y.view(sizes);
}

}  // namespace anoclip::model
