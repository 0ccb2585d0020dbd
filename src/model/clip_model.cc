#include "model/clip_model.h"

#include <torch/torch.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace anoclip::model {

LocalAwareEncoderImpl::LocalAwareEncoderImpl(const VisionConfig& cfg, int64_t embed_dim,
                                             bool quick_gelu)
    : config(cfg) {
  const int64_t width = cfg.width;
  const int64_t grid = cfg.grid();
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, width, cfg.patch_size)
                                     .stride(cfg.patch_size)
                                     .bias(false)));
  class_embedding = register_parameter("class_embedding", torch::randn({width}) * 0.02);
  positional_embedding =
      register_parameter("positional_embedding", torch::randn({grid * grid + 1, width}) * 0.02);
  auto ln_options = torch::nn::LayerNormOptions({width}).eps(1e-5);
  ln_pre = register_module("ln_pre", torch::nn::LayerNorm(ln_options));
  transformer = register_module(
      "transformer", Transformer(width, cfg.layers, cfg.heads(),
                                 static_cast<int64_t>(width * cfg.mlp_ratio), quick_gelu));
  ln_post = register_module("ln_post", torch::nn::LayerNorm(ln_options));
  proj = register_parameter("proj", torch::randn({width, embed_dim}) * (1.0 / std::sqrt(width)));
}

VisionOutput LocalAwareEncoderImpl::forward(const at::Tensor& images, const VisionRequest& request) {
  const int64_t batch = images.size(0);
  auto x = conv1->forward(images).flatten(2).transpose(1, 2);  // [B,M,C]
  auto cls = class_embedding.view({1, 1, -1}).expand({batch, 1, -1}).to(x.dtype());
  x = torch::cat({cls, x}, 1) + positional_embedding.to(x.dtype());
  auto z = ln_pre->forward(x);
  at::Tensor vv = request.local_aware_patches ? z : at::Tensor();

  const size_t layers = transformer->blocks.size();
  for (size_t l = 0; l < layers; ++l) {
    auto& block = transformer->blocks[l];
    const bool last = l + 1 == layers;
    auto y = block->ln_1->forward(z);
    if (last && !request.plain_patches) {
      // Only the image token's original-path output is read after the last block.
      auto v = block->attn->ProjectValue(y);
      if (vv.defined()) vv = vv + block->attn->Attend(v, v, v);
      auto h = z.narrow(1, 0, 1) + block->attn->AttendFromFirstToken(y, v);
      z = h + block->mlp->forward(block->ln_2->forward(h));
      break;
    }
    auto [q, k, v] = block->attn->Project(y);
    at::Tensor h;
    if (vv.defined()) {
      // Both attentions in one parallel loop and one out_proj: at batch 1 the per-head matmuls
      // are small, and together they keep the cores busy.
      auto both = block->attn->Attend({{q, k, v}, {v, v, v}});
      h = z + both.narrow(0, 0, batch);
      vv = vv + both.narrow(0, batch, batch);
    } else {
      h = z + block->attn->Attend(q, k, v);
    }
    z = h + block->mlp->forward(block->ln_2->forward(h));
  }

  VisionOutput out;
  out.image_embedding = at::matmul(ln_post->forward(z.select(1, 0)), proj);
  if (request.plain_patches) {
    out.plain_patches = at::matmul(ln_post->forward(z.narrow(1, 1, z.size(1) - 1)), proj);
  }
  if (vv.defined()) {
    out.local_aware_patches = at::matmul(ln_post->forward(vv.narrow(1, 1, vv.size(1) - 1)), proj);
  }
  return out;
}

ClipModelImpl::ClipModelImpl(const OpenClipConfig& cfg) : config(cfg) {
  const auto& text = cfg.text;
  visual = register_module("visual", LocalAwareEncoder(cfg.vision, cfg.embed_dim, cfg.quick_gelu));
  token_embedding =
      register_module("token_embedding", torch::nn::Embedding(text.vocab_size, text.width));
  positional_embedding =
      register_parameter("positional_embedding", torch::randn({text.context_length, text.width}) * 0.01);
  transformer = register_module(
      "transformer", Transformer(text.width, text.layers, text.heads,
                                 static_cast<int64_t>(text.width * text.mlp_ratio), cfg.quick_gelu));
  ln_final = register_module("ln_final",
                             torch::nn::LayerNorm(torch::nn::LayerNormOptions({text.width}).eps(1e-5)));
  text_projection = register_parameter("text_projection",
                                       torch::randn({text.width, cfg.embed_dim}) * (1.0 / std::sqrt(text.width)));
  logit_scale = register_parameter("logit_scale", torch::full({}, std::log(1.0 / 0.07)));
}

at::Tensor ClipModelImpl::EncodeText(const at::Tensor& token_ids, bool full_context) {
  auto end_positions = token_ids.argmax(-1);  // the end token has the largest id
  int64_t length = token_ids.size(1);
  if (!full_context && token_ids.size(0) > 0) {
    length = std::min<int64_t>(length, end_positions.max().item<int64_t>() + 1);
  }
  auto ids = token_ids.narrow(1, 0, length);
  auto x = token_embedding->forward(ids) + positional_embedding.narrow(0, 0, length);
  auto mask = torch::full({length, length}, -std::numeric_limits<float>::infinity(), x.options())
                  .triu(1);
  x = transformer->forward(x, mask);
  x = ln_final->forward(x);
  auto rows = torch::arange(x.size(0), torch::TensorOptions().device(x.device()).dtype(torch::kLong));
  return at::matmul(x.index({rows, end_positions}), text_projection);
}

absl::Status LoadClipWeights(ClipModel& model, const io::StateDict& weights) {
  std::vector<std::string> missing, misshaped;
  std::set<std::string> expected;
  auto params = model->named_parameters(/*recurse=*/true);
  for (const auto& item : params) {
    expected.insert(item.key());
    auto it = weights.find(item.key());
    if (it == weights.end()) {
      missing.push_back(item.key());
    } else if (it->second.sizes() != item.value().sizes()) {
      misshaped.push_back(absl::StrCat(item.key(), " (expected ", c10::str(item.value().sizes()),
                                       ", file has ", c10::str(it->second.sizes()), ")"));
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [key, tensor] : weights) {
    // OpenCLIP keeps the causal mask as a non-persistent buffer; older checkpoints stored it.
    if (expected.count(key) == 0 && key != "attn_mask" && key != "visual.attn_mask") {
      unexpected.push_back(key);
    }
  }
  if (!missing.empty() || !misshaped.empty() || !unexpected.empty()) {
    auto list = [](const std::vector<std::string>& keys) {
      constexpr size_t kShown = 8;
      std::vector<std::string> shown(keys.begin(), keys.begin() + std::min(keys.size(), kShown));
      std::string text = absl::StrJoin(shown, ", ");
      if (keys.size() > kShown) absl::StrAppend(&text, ", ... (", keys.size(), " in all)");
      return text;
    };
    std::string message = "weights do not match the configured architecture:";
    if (!missing.empty()) absl::StrAppend(&message, " missing: ", list(missing), ";");
    if (!misshaped.empty()) absl::StrAppend(&message, " wrong shape: ", list(misshaped), ";");
    if (!unexpected.empty()) absl::StrAppend(&message, " unexpected: ", list(unexpected), ";");
    return absl::InvalidArgumentError(message);
  }
  torch::NoGradGuard no_grad;
  for (auto& item : params) {
    const auto& source = weights.at(item.key());
    if (!source.is_floating_point()) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight ", item.key(), " has non-floating dtype ", c10::toString(source.scalar_type())));
    }
    item.value().copy_(source);
  }
  return absl::OkStatus();
}

}  // namespace anoclip::model
