// The Detector's internals, for the engine itself and for benchmarks that time the raw towers.
// Pulls in torch/nn: include only from .cc files that need the model.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "anomaly/detector.h"
#include "model/clip_model.h"
#include "model/tokenizer.h"

namespace anoclip::anomaly {

struct Detector::Impl {
  DetectorOptions options;
  model::OpenClipConfig config;
  std::unique_ptr<model::BpeTokenizer> tokenizer;
  model::ClipModel model{nullptr};
  torch::Device device{torch::kCPU};
  torch::Dtype dtype = torch::kFloat32;         // the text tower's
  torch::Dtype vision_dtype = torch::kFloat32;  // the vision tower's, and the TTA products' dtype
  std::string model_id;
  std::string device_name;

  at::Tensor ToModelInput(const at::Tensor& images) const {
    return images.to(device, vision_dtype).contiguous();
  }
};

}  // namespace anoclip::anomaly
