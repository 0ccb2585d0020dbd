// A loaded OpenCLIP model, ready to run: its config, tokenizer and towers on their device and
// dtypes, identified by a hash of config and weights. The Detector runs AnoCLIP on an Engine;
// benchmarks (anoclip bench) time its towers directly on the same Engine. Pulls in torch/nn:
// include only from .cc files that need the model.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "anomaly/detector.h"
#include "model/clip_model.h"
#include "model/linear.h"
#include "model/tokenizer.h"

namespace anoclip::anomaly {

struct Engine {
  DetectorOptions options;
  model::OpenClipConfig config;
  std::unique_ptr<model::BpeTokenizer> tokenizer;
  model::ClipModel model{nullptr};
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat32;         // the text tower's
  torch::Dtype vision_dtype = torch::kFloat32;  // the vision tower's
  torch::Dtype tta_dtype = torch::kFloat32;     // the TTA adapter's products' (TtaOptions::compute_dtype)
  std::string model_id;
  std::string device_name;
  model::GemmLibrary gemm_library = model::GemmLibrary::kBlas;  // selected for the process at load

  // Preprocessed images as the vision tower takes them.
  at::Tensor ToModelInput(const at::Tensor& images) const {
    return images.to(device, vision_dtype).contiguous();
  }
};

// Reads the model directory, loads the weights (a safetensors file is mapped, not copied),
// moves the towers to the device and dtypes of `options` and sets libtorch's thread count.
absl::StatusOr<std::shared_ptr<Engine>> LoadEngine(const DetectorOptions& options);

}  // namespace anoclip::anomaly
