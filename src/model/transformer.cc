#include "model/transformer.h"

#include <torch/torch.h>

#include <cmath>

namespace anoclip::model {
namespace {

// [B,L,C] -> [B,h,L,d]
at::Tensor SplitHeads(const at::Tensor& x, int64_t heads, int64_t head_dim) {
  return x.view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

}  // namespace

AttentionImpl::AttentionImpl(int64_t width, int64_t heads)
    : width(width), heads(heads), head_dim(width / heads) {
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * width, width}));
  in_proj_bias = register_parameter("in_proj_bias", torch::zeros({3 * width}));
  out_proj = register_module("out_proj", torch::nn::Linear(width, width));
  torch::nn::init::xavier_uniform_(in_proj_weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> AttentionImpl::Project(const at::Tensor& y) const {
  auto qkv = torch::nn::functional::linear(y, in_proj_weight, in_proj_bias).chunk(3, -1);
  return {SplitHeads(qkv[0], heads, head_dim), SplitHeads(qkv[1], heads, head_dim),
          SplitHeads(qkv[2], heads, head_dim)};
}

std::tuple<at::Tensor, at::Tensor> AttentionImpl::ProjectKeyValue(const at::Tensor& y) const {
  auto kv = torch::nn::functional::linear(y, in_proj_weight.narrow(0, width, 2 * width),
                                          in_proj_bias.narrow(0, width, 2 * width))
                .chunk(2, -1);
  return {SplitHeads(kv[0], heads, head_dim), SplitHeads(kv[1], heads, head_dim)};
}

at::Tensor AttentionImpl::ProjectFirstQuery(const at::Tensor& y) const {
  auto q = torch::nn::functional::linear(y.narrow(1, 0, 1), in_proj_weight.narrow(0, 0, width),
                                         in_proj_bias.narrow(0, 0, width));
  return SplitHeads(q, heads, head_dim);
}

at::Tensor AttentionImpl::Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& mask) const {
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const int64_t batch = q.size(0), queries = q.size(2), keys = k.size(2);
  at::Tensor out;
  if (torch::GradMode::is_enabled()) {
    auto scores = at::matmul(q * scale, k.transpose(-2, -1));
    if (mask.defined()) scores = scores + mask;
    out = at::matmul(scores.softmax(-1), v);  // [B,h,Lq,d]
  } else {
    // The per-head products are small (L x d x L): one head per thread, each product on one
    // core, keeps both cores busy where a threaded BLAS call per head would mostly synchronise.
    auto qs = q.reshape({batch * heads, queries, head_dim});
    auto ks = k.reshape({batch * heads, keys, head_dim});
    auto vs = v.reshape({batch * heads, keys, head_dim});
    out = at::empty({batch * heads, queries, head_dim}, q.options());
    at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        auto scores = at::mm(qs[i], ks[i].t()).mul_(scale);
        if (mask.defined()) scores.add_(mask);
        out[i].copy_(at::mm(scores.softmax(-1), vs[i]));
      }
    });
    out = out.view({batch, heads, queries, head_dim});
  }
  out = out.transpose(1, 2).reshape({batch, queries, width});
  return torch::nn::functional::linear(out, out_proj->weight, out_proj->bias);
}

MlpImpl::MlpImpl(int64_t width, int64_t hidden, bool quick_gelu) : quick_gelu(quick_gelu) {
  c_fc = register_module("c_fc", torch::nn::Linear(width, hidden));
  c_proj = register_module("c_proj", torch::nn::Linear(hidden, width));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  auto h = c_fc->forward(x);
  h = quick_gelu ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return c_proj->forward(h);
}

ResidualAttentionBlockImpl::ResidualAttentionBlockImpl(int64_t width, int64_t heads,
                                                       int64_t mlp_hidden, bool quick_gelu) {
  auto ln_options = torch::nn::LayerNormOptions({width}).eps(1e-5);
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln_options));
  attn = register_module("attn", Attention(width, heads));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln_options));
  mlp = register_module("mlp", Mlp(width, mlp_hidden, quick_gelu));
}

at::Tensor ResidualAttentionBlockImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  auto [q, k, v] = attn->Project(ln_1->forward(x));
  auto h = x + attn->Attend(q, k, v, mask);
  return h + mlp->forward(ln_2->forward(h));
}

TransformerImpl::TransformerImpl(int64_t width, int64_t layers, int64_t heads, int64_t mlp_hidden,
                                 bool quick_gelu) {
  resblocks = register_module("resblocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    blocks.push_back(ResidualAttentionBlock(width, heads, mlp_hidden, quick_gelu));
    resblocks->push_back(blocks.back());
  }
}

at::Tensor TransformerImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  auto h = x;
  for (auto& block : blocks) h = block->forward(h, mask);
  return h;
}

}  // namespace anoclip::model
