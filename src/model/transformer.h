// The pre-LN transformer of OpenCLIP (`transformer.resblocks.{i}`), with the attention written
// as batched matmuls (libtorch 1.13 has no public scaled_dot_product_attention).
//
// Parameter names match OpenCLIP's state dict: ln_1, attn.in_proj_weight, attn.in_proj_bias,
// attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj.
#pragma once

#include <mutex>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "model/int8_linear.h"
#include "model/linear.h"

namespace anoclip::model {

// How a freshly built model's parameters are filled: OpenCLIP's random initialisation (seeded
// test models), or left uninitialised for weights that will replace them (loading), which
// neither spends the start-up on random numbers nor makes the process hold a second,
// throw-away copy of the model while the file's pages come in.
enum class ParameterInit { kRandom, kUninitialized };

// ln(x), through model::LayerNorm: oneDNN's layer normalization where it runs the products.
at::Tensor Normalize(const torch::nn::LayerNorm& ln, const at::Tensor& x);

// torch::nn::Linear(in, out) whose weight and bias are uninitialised under kUninitialized
// (torch::nn::Linear always draws its initial weights).
torch::nn::Linear MakeLinear(int64_t in, int64_t out, ParameterInit init);

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(int64_t width, int64_t heads, ParameterInit init = ParameterInit::kRandom);

  // Splits Y·W_inᵀ + b_in into per-head [B,h,L,d] queries, keys and values.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> Project(const at::Tensor& y) const;
  // Values only: [B,h,L,d].
  at::Tensor ProjectValue(const at::Tensor& y) const;
  // The first token's attention output over all tokens of Y, out_proj applied: [B,1,C]. Its
  // query is folded into the key projection, so the keys are never computed.
  at::Tensor AttendFromFirstToken(const at::Tensor& y, const at::Tensor& v) const;
  // softmax(q kᵀ/√d [+ mask]) v, heads merged and out_proj applied, plus `residual` where
  // given: [B,Lq,C].
  at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask = {},
                    const at::Tensor& residual = {}) const;
  // The same for several sets of per-head [B,h,L,d] inputs of one shape, their heads in one
  // parallel loop: one [B,Lq,C] output per set, each with its own residual where given.
  struct Inputs {
    at::Tensor q, k, v;
    at::Tensor residual;
  };
  std::vector<at::Tensor> Attend(std::initializer_list<Inputs> sets, const at::Tensor& mask = {}) const;
  // The same before out_proj: the heads' outputs side by side, [n·B,Lq,C].
  at::Tensor MergedHeads(std::initializer_list<Inputs> sets, const at::Tensor& mask = {}) const;
  // Attention over the nodes of a prefix tree (TextPrefixTree in clip_model.h), out_proj applied:
  // y [N,C] holds one row per node; `paths` [R,L] the nodes of each prompt, position by position;
  // `owners` [N] for each node one (prompt·L + position) that reaches it; `mask` [L,L] causal.
  // Each prompt attends over its own path, and each node takes the output of its owner; plus
  // `residual` [N,C]. [N,C].
  at::Tensor AttendTree(const at::Tensor& y, const at::Tensor& paths, const at::Tensor& owners,
                        const at::Tensor& mask, const at::Tensor& residual) const;

  // Packs the projections for int8 products (--precision int8); float32 stays the reference.
  void PackInt8();
  // Packs the projections' weights into oneDNN's blocks (PackWeight) where oneDNN is selected.
  void PackWeights();
  int64_t width, heads, head_dim;
  at::Tensor in_proj_weight, in_proj_bias;
  torch::nn::Linear out_proj{nullptr};
  Int8Linear in_proj_int8, value_int8, out_proj_int8;  // packed only under --precision int8
  PackedWeight in_proj_packed, out_proj_packed;  // packed only by PackWeights

 private:
  at::Tensor OutProject(const at::Tensor& merged, const at::Tensor& residual = {}) const;
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  MlpImpl(int64_t width, int64_t hidden, bool quick_gelu, ParameterInit init = ParameterInit::kRandom);
  // c_proj(act(c_fc x)), plus `residual` where given.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& residual = {});
  void PackInt8();
  void PackWeights();
  torch::nn::Linear c_fc{nullptr}, c_proj{nullptr};
  Int8Linear c_fc_int8, c_proj_int8;
  PackedWeight c_fc_packed, c_proj_packed;
  bool quick_gelu;
};
TORCH_MODULE(Mlp);

struct ResidualAttentionBlockImpl : torch::nn::Module {
  ResidualAttentionBlockImpl(int64_t width, int64_t heads, int64_t mlp_hidden, bool quick_gelu,
                             ParameterInit init = ParameterInit::kRandom);
  // Standard block: x + attn(ln_1 x), then + mlp(ln_2 ·).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {});
  // The block over a prefix tree's nodes [N,C] (AttentionImpl::AttendTree).
  at::Tensor ForwardTree(const at::Tensor& x, const at::Tensor& paths, const at::Tensor& owners,
                         const at::Tensor& mask);
  // Where PackWeightsOnFirstUse asked for it, packs the block's weights (AttentionImpl::PackWeights,
  // MlpImpl::PackWeights) the first time it is called; the block's runs call it first.
  void PackWeightsIfAsked();
  bool pack_weights_on_first_use = false;
  std::once_flag weights_packed;
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Attention attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(ResidualAttentionBlock);

struct TransformerImpl : torch::nn::Module {
  TransformerImpl(int64_t width, int64_t layers, int64_t heads, int64_t mlp_hidden, bool quick_gelu,
                  ParameterInit init = ParameterInit::kRandom);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask = {});
  at::Tensor ForwardTree(const at::Tensor& x, const at::Tensor& paths, const at::Tensor& owners,
                         const at::Tensor& mask);
  // Every block's projections and MLP to int8 products (Int8Linear), for inference on the CPU.
  void PackInt8();
  // Every block's float32 or bfloat16 weights also in oneDNN's blocked layout (PackWeight), where
  // oneDNN is selected, for inference on the CPU, each block on its first run: packing a
  // ViT-B-16-plus-240 writes 440 MB of new memory, 0.9-1.6 s on a 2-core virtual machine, which
  // would more than double the start-up. Each weight's pages of the mapped weight file are then
  // released (io::ReleaseMappedPages): the products read the blocks, so the process holds one copy
  // of the weights, not two. Weights on the heap (read from a torch checkpoint) stay plain.
  void PackWeightsOnFirstUse();
  // Packs now what PackWeightsOnFirstUse deferred, so that no request's first run waits for it;
  // false where nothing was deferred.
  bool PackDeferredWeights();
  torch::nn::ModuleList resblocks;
  std::vector<ResidualAttentionBlock> blocks;
};
TORCH_MODULE(Transformer);

}  // namespace anoclip::model
