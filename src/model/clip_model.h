// OpenCLIP's CLIP (ViT image tower + causal text tower) as libtorch modules whose parameter
// names are exactly the state-dict keys of `open_clip_model.safetensors`, with AnoCLIP's
// local-aware (value-value) path in the image tower (docs/algorithm.md §4).
//
// Include only where the model runs (engine, tests, benchmarks): this pulls in torch/nn.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <vector>

#include "absl/status/statusor.h"
#include "io/state_dict.h"
#include "model/open_clip_config.h"
#include "model/transformer.h"

namespace anoclip::model {

// Which outputs a vision forward computes; the image token is always computed.
struct VisionRequest {
  bool local_aware_patches = true;  // P = ln_post(V̄[1:]) @ proj
  bool plain_patches = false;       // ln_post(Z[1:]) @ proj (the "QKV" baseline)
};

struct VisionOutput {
  at::Tensor image_embedding;   // [B,D]
  at::Tensor local_aware_patches;  // [B,M,D] when asked
  at::Tensor plain_patches;        // [B,M,D] when asked
};

// The image tower (`visual.*`): the original QKV path plus the value-value path that reuses
// each block's values. Blocks whose patch outputs nobody reads are not computed: with only
// local-aware patches asked for, the last block runs its attention and MLP for the image token
// alone.
struct LocalAwareEncoderImpl : torch::nn::Module {
  LocalAwareEncoderImpl(const VisionConfig& config, int64_t embed_dim, bool quick_gelu,
                        ParameterInit init = ParameterInit::kRandom);
  VisionOutput forward(const at::Tensor& images, const VisionRequest& request);

  VisionConfig config;
  torch::nn::Conv2d conv1{nullptr};
  at::Tensor class_embedding, positional_embedding, proj;
  torch::nn::LayerNorm ln_pre{nullptr}, ln_post{nullptr};
  Transformer transformer{nullptr};
};
TORCH_MODULE(LocalAwareEncoder);

// Prompts of one text forward: their row indices and the positions they run.
struct TextBucket {
  std::vector<int64_t> rows;
  int64_t length = 0;
};
// Sorts prompts by token count (`lengths`: end token position + 1) and cuts the sorted list into
// buckets: a bucket closes at a longer prompt once it holds min_tokens positions (rows × length),
// and before it would exceed max_tokens. Large buckets keep the GEMMs efficient; cutting at
// length changes keeps padding (positions past a prompt's end) small.
std::vector<TextBucket> TextBuckets(const std::vector<int64_t>& lengths, int64_t min_tokens, int64_t max_tokens);
inline constexpr int64_t kTextBucketMinTokens = 1024;
inline constexpr int64_t kTextBucketMaxTokens = 8192;

// The prompts of one bucket as a prefix tree: a position whose tokens up to and including it
// are the same in several prompts has the same value in all of them at every layer (no
// position attends to a later one), so it is one node, computed once. A class's prompts are
// templates around a few state words and share most of their positions.
struct TextPrefixTree {
  std::vector<int64_t> tokens, positions;  // per node: its token id and position
  int64_t length = 0;                      // the bucket's length L
  std::vector<int64_t> paths;   // [rows·L]: each prompt's node at each position (past its end: its end node)
  std::vector<int64_t> owners;  // per node: row·L + position of the prompt that first reached it
  std::vector<int64_t> ends;    // per row: the node of its end token
};
// `token_ids`: row-major [*, context]; the bucket's rows and length select from it.
TextPrefixTree BuildTextPrefixTree(const int64_t* token_ids, int64_t context, const TextBucket& bucket);

struct ClipModelImpl : torch::nn::Module {
  // kUninitialized for a model whose weights are loaded next (LoadClipWeights).
  explicit ClipModelImpl(const OpenClipConfig& config, ParameterInit init = ParameterInit::kRandom);

  // token_ids: [N,context] int64 (zero-padded, end token = largest id). Prompts run in buckets
  // of similar length (TextBuckets), each only up to its own longest prompt's end token, which
  // is exact because no position attends to a later one, and with the positions they share
  // computed once (TextPrefixTree); `full_context` runs all positions of every prompt.
  // Returns [N,D] unnormalised, in the rows' order.
  at::Tensor EncodeText(const at::Tensor& token_ids, bool full_context = false);
  VisionOutput EncodeImage(const at::Tensor& images, const VisionRequest& request) {
    return visual->forward(images, request);
  }

  // The rows of token_ids through the first `length` positions.
  at::Tensor EncodeTextPositions(const at::Tensor& token_ids, const at::Tensor& end_positions, int64_t length);
  // The prompts of one prefix tree, in its rows' order: [rows,D].
  at::Tensor EncodeTextTree(const TextPrefixTree& tree, const torch::Device& device);

  OpenClipConfig config;
  LocalAwareEncoder visual{nullptr};
  torch::nn::Embedding token_embedding{nullptr};
  at::Tensor positional_embedding, text_projection, logit_scale;
  Transformer transformer{nullptr};
  torch::nn::LayerNorm ln_final{nullptr};
};
TORCH_MODULE(ClipModel);

// Makes `weights` the model's parameters: a contiguous tensor of the parameter's dtype and device
// becomes the parameter itself (for a mapped file, its pages are the weights), anything else is
// copied and converted. Every parameter must be present with its exact shape; the error lists
// what is missing, mis-shaped or unexpected.
absl::Status LoadClipWeights(ClipModel& model, const io::StateDict& weights);

}  // namespace anoclip::model
