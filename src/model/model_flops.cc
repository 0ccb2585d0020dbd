#include "model/model_flops.h"

namespace anoclip::model {
namespace {

// Attention of `queries` over `keys` rows of width C (all heads): scores and weighted values.
double AttentionFlops(double queries, double keys, double width) { return 4.0 * queries * keys * width; }

}  // namespace

double VisionForwardFlops(const OpenClipConfig& config, bool local_aware_patches, bool plain_patches) {
  const auto& v = config.vision;
  const double patches = static_cast<double>(v.grid()) * v.grid();
  const double tokens = patches + 1;
  const double c = v.width;
  const double hidden = static_cast<double>(static_cast<int64_t>(v.width * v.mlp_ratio));
  const double embed = config.embed_dim;
  const double attention_sets = local_aware_patches ? 2 : 1;  // the original and the value-value path

  double flops = 2.0 * patches * 3 * v.patch_size * v.patch_size * c;  // conv1
  const double full_block = 2.0 * tokens * c * 3 * c                   // in_proj
                            + attention_sets * (AttentionFlops(tokens, tokens, c) + 2.0 * tokens * c * c)
                            + 4.0 * tokens * c * hidden;  // c_fc, c_proj
  const int full_blocks = plain_patches ? v.layers : v.layers - 1;
  flops += full_blocks * full_block;
  if (!plain_patches) {
    // Last block: values for every token, the image token's query folded into the keys.
    flops += 2.0 * tokens * c * c;
    if (local_aware_patches) flops += AttentionFlops(tokens, tokens, c) + 2.0 * tokens * c * c;
    flops += 2.0 * c * c * 2          // query, folded into key space
             + AttentionFlops(1, tokens, c) + 2.0 * c * c  // one query's attention, out_proj
             + 4.0 * c * hidden;                           // its MLP
  }
  flops += 2.0 * c * embed;  // image embedding
  if (local_aware_patches) flops += 2.0 * patches * c * embed;
  if (plain_patches) flops += 2.0 * patches * c * embed;
  return flops;
}

double TextForwardFlops(const OpenClipConfig& config, int64_t positions) {
  const auto& t = config.text;
  const double l = static_cast<double>(positions);
  const double w = t.width;
  const double hidden = static_cast<double>(static_cast<int64_t>(t.width * t.mlp_ratio));
  const double block = 2.0 * l * w * 3 * w + AttentionFlops(l, l, w) + 2.0 * l * w * w + 4.0 * l * w * hidden;
  return t.layers * block + 2.0 * w * config.embed_dim;
}

double TextTreeForwardFlops(const OpenClipConfig& config, int64_t nodes, int64_t prompts, int64_t length) {
  const auto& t = config.text;
  const double n = static_cast<double>(nodes), r = static_cast<double>(prompts), l = static_cast<double>(length);
  const double w = t.width;
  const double hidden = static_cast<double>(static_cast<int64_t>(t.width * t.mlp_ratio));
  const double block = 2.0 * n * w * 3 * w + r * AttentionFlops(l, l, w) + 2.0 * n * w * w + 4.0 * n * w * hidden;
  return t.layers * block + r * 2.0 * w * config.embed_dim;
}

GemmShape LargestVisionGemm(const OpenClipConfig& config, int64_t batch) {
  const auto& v = config.vision;
  const int64_t tokens = static_cast<int64_t>(v.grid()) * v.grid() + 1;
  return {batch * tokens, v.width, static_cast<int64_t>(v.width * v.mlp_ratio)};
}

}  // namespace anoclip::model
