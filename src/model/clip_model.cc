#include "model/clip_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/linear.h"

namespace anoclip::model {

namespace {

// A parameter of `shape`: `random()` under kRandom, else uninitialised.
at::Tensor InitialValue(ParameterInit init, at::IntArrayRef shape, const std::function<at::Tensor()>& random) {
  return init == ParameterInit::kRandom ? random() : torch::empty(shape);
}

}  // namespace

LocalAwareEncoderImpl::LocalAwareEncoderImpl(const VisionConfig& cfg, int64_t embed_dim,
                                             bool quick_gelu, ParameterInit init)
    : config(cfg) {
  const int64_t width = cfg.width;
  const int64_t grid = cfg.grid();
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, width, cfg.patch_size)
                                     .stride(cfg.patch_size)
                                     .bias(false)));
  class_embedding = register_parameter(
      "class_embedding", InitialValue(init, {width}, [&] { return torch::randn({width}) * 0.02; }));
  positional_embedding = register_parameter(
      "positional_embedding",
      InitialValue(init, {grid * grid + 1, width}, [&] { return torch::randn({grid * grid + 1, width}) * 0.02; }));
  auto ln_options = torch::nn::LayerNormOptions({width}).eps(1e-5);
  ln_pre = register_module("ln_pre", torch::nn::LayerNorm(ln_options));
  transformer = register_module(
      "transformer", Transformer(width, cfg.layers, cfg.heads(),
                                 static_cast<int64_t>(width * cfg.mlp_ratio), quick_gelu, init));
  ln_post = register_module("ln_post", torch::nn::LayerNorm(ln_options));
  proj = register_parameter("proj", InitialValue(init, {width, embed_dim}, [&] {
                              return torch::randn({width, embed_dim}) * (1.0 / std::sqrt(width));
                            }));
}

VisionOutput LocalAwareEncoderImpl::forward(const at::Tensor& images, const VisionRequest& request) {
  const int64_t batch = images.size(0), patch = config.patch_size;
  const int64_t rows = images.size(2) / patch, columns = images.size(3) / patch;
  // conv1's stride is its kernel, so the patch embedding is one product of each patch's pixels
  // with the kernel, through Linear like every other product (docs/performance.md).
  auto patches = images.narrow(2, 0, rows * patch)
                     .narrow(3, 0, columns * patch)
                     .reshape({batch, images.size(1), rows, patch, columns, patch})
                     .permute({0, 2, 4, 1, 3, 5})
                     .reshape({batch, rows * columns, -1});
  auto x = Linear(patches, conv1->weight.flatten(1), {});  // [B,M,C]
  auto cls = class_embedding.view({1, 1, -1}).expand({batch, 1, -1}).to(x.dtype());
  x = torch::cat({cls, x}, 1) + positional_embedding.to(x.dtype());
  auto z = Normalize(ln_pre, x);
  at::Tensor vv = request.local_aware_patches ? z : at::Tensor();

  const size_t layers = transformer->blocks.size();
  for (size_t l = 0; l < layers; ++l) {
    auto& block = transformer->blocks[l];
    block->PackWeightsIfAsked();
    const bool last = l + 1 == layers;
    auto y = Normalize(block->ln_1, z);
    if (last && !request.plain_patches) {
      // Only the image token's original-path output is read after the last block.
      auto v = block->attn->ProjectValue(y);
      if (vv.defined()) vv = block->attn->Attend(v, v, v, {}, vv);
      auto h = z.narrow(1, 0, 1) + block->attn->AttendFromFirstToken(y, v);
      z = block->mlp->forward(Normalize(block->ln_2, h), h);
      break;
    }
    auto [q, k, v] = block->attn->Project(y);
    at::Tensor h;
    if (vv.defined()) {
      // Both attentions in one call: on the BLAS path their heads share one parallel loop, which
      // keeps the cores busy at batch 1 where the per-head matmuls are small.
      auto both = block->attn->Attend({{q, k, v, z}, {v, v, v, vv}});
      h = both[0];
      vv = both[1];
    } else {
      h = block->attn->Attend(q, k, v, {}, z);
    }
    z = block->mlp->forward(Normalize(block->ln_2, h), h);
  }

  VisionOutput out;
  // proj [C,E] is read as the [E,C] weight Linear takes, through its strides.
  out.image_embedding = Linear(Normalize(ln_post, z.select(1, 0)), proj.t(), {});
  if (request.plain_patches) {
    out.plain_patches = Linear(Normalize(ln_post, z.narrow(1, 1, z.size(1) - 1)), proj.t(), {});
  }
  if (vv.defined()) {
    out.local_aware_patches = Linear(Normalize(ln_post, vv.narrow(1, 1, vv.size(1) - 1)), proj.t(), {});
  }
  return out;
}

ClipModelImpl::ClipModelImpl(const OpenClipConfig& cfg, ParameterInit init) : config(cfg) {
  const auto& text = cfg.text;
  visual = register_module("visual", LocalAwareEncoder(cfg.vision, cfg.embed_dim, cfg.quick_gelu, init));
  if (init == ParameterInit::kRandom) {
    token_embedding = register_module("token_embedding", torch::nn::Embedding(text.vocab_size, text.width));
  } else {
    // As MakeLinear: a one-row table, then the real shape uninitialised.
    torch::nn::Embedding embedding(1, text.width);
    embedding->options = torch::nn::EmbeddingOptions(text.vocab_size, text.width);
    torch::NoGradGuard no_grad;
    embedding->weight.set_data(torch::empty({text.vocab_size, text.width}));
    token_embedding = register_module("token_embedding", embedding);
  }
  positional_embedding = register_parameter(
      "positional_embedding", InitialValue(init, {text.context_length, text.width}, [&] {
        return torch::randn({text.context_length, text.width}) * 0.01;
      }));
  transformer = register_module(
      "transformer", Transformer(text.width, text.layers, text.heads,
                                 static_cast<int64_t>(text.width * text.mlp_ratio), cfg.quick_gelu, init));
  ln_final = register_module("ln_final",
                             torch::nn::LayerNorm(torch::nn::LayerNormOptions({text.width}).eps(1e-5)));
  text_projection = register_parameter("text_projection", InitialValue(init, {text.width, cfg.embed_dim}, [&] {
                                         return torch::randn({text.width, cfg.embed_dim}) * (1.0 / std::sqrt(text.width));
                                       }));
  logit_scale = register_parameter("logit_scale", torch::full({}, std::log(1.0 / 0.07)));
}

std::vector<TextBucket> TextBuckets(const std::vector<int64_t>& lengths, int64_t min_tokens, int64_t max_tokens) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] < lengths[b]; });
  std::vector<TextBucket> buckets;
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t length = lengths[order[i]];
    TextBucket* open = buckets.empty() ? nullptr : &buckets.back();
    const int64_t rows = open ? static_cast<int64_t>(open->rows.size()) : 0;
    // A longer prompt starts a new bucket once this one is big enough for efficient GEMMs; any
    // prompt does once the next one would be too big.
    const bool full = open && (rows + 1) * length > max_tokens;
    const bool big_enough = open && rows * open->length >= min_tokens && length > open->length;
    if (open == nullptr || full || big_enough) {
      buckets.push_back({});
      open = &buckets.back();
    }
    open->rows.push_back(order[i]);
    open->length = length;
  }
  return buckets;
}

TextPrefixTree BuildTextPrefixTree(const int64_t* token_ids, int64_t context, const TextBucket& bucket) {
  TextPrefixTree tree;
  const int64_t length = tree.length = bucket.length;
  const int64_t rows = static_cast<int64_t>(bucket.rows.size());
  tree.paths.resize(rows * length);
  tree.ends.resize(rows);
  absl::flat_hash_map<std::pair<int64_t, int64_t>, int64_t> children;  // (parent node or -1, token) -> node
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t* ids = token_ids + bucket.rows[r] * context;
    // The end token has the largest id; positions after it never reach the output.
    const int64_t end = std::max_element(ids, ids + length) - ids;
    int64_t node = -1;
    for (int64_t p = 0; p <= end; ++p) {
      auto [it, added] = children.try_emplace({node, ids[p]}, static_cast<int64_t>(tree.tokens.size()));
      if (added) {
        tree.tokens.push_back(ids[p]);
        tree.positions.push_back(p);
        tree.owners.push_back(r * length + p);
      }
      node = it->second;
      tree.paths[r * length + p] = node;
    }
    tree.ends[r] = node;
    for (int64_t p = end + 1; p < length; ++p) tree.paths[r * length + p] = node;
  }
  return tree;
}

at::Tensor ClipModelImpl::EncodeText(const at::Tensor& token_ids, bool full_context) {
  auto end_positions = token_ids.argmax(-1);  // the end token has the largest id
  if (full_context || token_ids.size(0) == 0) {
    return EncodeTextPositions(token_ids, end_positions, token_ids.size(1));
  }
  const auto ids_cpu = token_ids.to(torch::kCPU, torch::kLong).contiguous();
  const auto ends_cpu = end_positions.to(torch::kCPU).contiguous();
  std::vector<int64_t> lengths(ends_cpu.data_ptr<int64_t>(), ends_cpu.data_ptr<int64_t>() + ends_cpu.numel());
  for (auto& length : lengths) ++length;
  at::Tensor out;
  for (const auto& bucket : TextBuckets(lengths, kTextBucketMinTokens, kTextBucketMaxTokens)) {
    auto encoded =
        EncodeTextTree(BuildTextPrefixTree(ids_cpu.data_ptr<int64_t>(), token_ids.size(1), bucket), token_ids.device());
    if (!out.defined()) out = at::empty({token_ids.size(0), encoded.size(1)}, encoded.options());
    out.index_copy_(0, torch::tensor(bucket.rows, torch::kLong).to(token_ids.device()), encoded);
  }
  return out;
}

at::Tensor ClipModelImpl::EncodeTextTree(const TextPrefixTree& tree, const torch::Device& device) {
  auto index = [&device](const std::vector<int64_t>& values) {
    return torch::tensor(values, torch::kLong).to(device);
  };
  const int64_t length = tree.length;
  auto x = token_embedding->forward(index(tree.tokens)) + positional_embedding.index_select(0, index(tree.positions));
  auto mask = torch::full({length, length}, -std::numeric_limits<float>::infinity(), x.options()).triu(1);
  const int64_t rows = static_cast<int64_t>(tree.ends.size());
  x = transformer->ForwardTree(x, index(tree.paths).view({rows, length}), index(tree.owners), mask);
  return at::matmul(Normalize(ln_final, x.index_select(0, index(tree.ends))), text_projection);
}

at::Tensor ClipModelImpl::EncodeTextPositions(const at::Tensor& token_ids, const at::Tensor& end_positions,
                                              int64_t length) {
  auto ids = token_ids.narrow(1, 0, length);
  auto x = token_embedding->forward(ids) + positional_embedding.narrow(0, 0, length);
  auto mask = torch::full({length, length}, -std::numeric_limits<float>::infinity(), x.options())
                  .triu(1);
  x = transformer->forward(x, mask);
  auto rows = torch::arange(x.size(0), torch::TensorOptions().device(x.device()).dtype(torch::kLong));
  return at::matmul(Normalize(ln_final, x.index({rows, end_positions})), text_projection);
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
    if (source.scalar_type() == item.value().scalar_type() && source.device() == item.value().device() &&
        source.is_contiguous()) {
      item.value().set_data(source);  // share the loaded (mapped) bytes: no second copy of the model
    } else {
      item.value().copy_(source);
    }
  }
  return absl::OkStatus();
}

}  // namespace anoclip::model
