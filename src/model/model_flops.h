// Floating-point operations of the towers' forwards, counted from the shapes as the encoders run
// them: 2 per multiply-add of every matrix product (projections, attention, MLP, patch
// embedding). Element-wise work (layer norm, GELU, softmax, residuals) is left out, so the count
// divided by a forward's time is directly comparable with a GEMM rate.
#pragma once

#include <cstdint>

#include "model/open_clip_config.h"

namespace anoclip::model {

// One image through LocalAwareEncoder with the given outputs (VisionRequest's two flags).
double VisionForwardFlops(const OpenClipConfig& config, bool local_aware_patches, bool plain_patches);

// One prompt through the text tower, run over `positions` positions (the causal attention is
// computed over the whole square, as the encoder does).
double TextForwardFlops(const OpenClipConfig& config, int64_t positions);

// A prefix tree of `prompts` prompts run over `length` positions (ClipModel's text pass): the
// projections and MLPs once per node, the attention per prompt over the whole square.
double TextTreeForwardFlops(const OpenClipConfig& config, int64_t nodes, int64_t prompts, int64_t length);

// The largest matrix product of a vision forward of `batch` images: the MLP's first layer,
// [batch·tokens × width] · [width × hidden].
struct GemmShape {
  int64_t m, k, n;
  double flops() const { return 2.0 * static_cast<double>(m) * k * n; }
};
GemmShape LargestVisionGemm(const OpenClipConfig& config, int64_t batch);

}  // namespace anoclip::model
