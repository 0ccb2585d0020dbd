#include "model/transformer.h"

#include <torch/torch.h>

#include <cmath>

#include "io/state_dict.h"
#include "model/head_attention.h"
#include "model/layer_norm.h"
#include "model/linear.h"
#include "model/onednn_ops.h"

namespace anoclip::model {
namespace {

// [B,L,C] -> [B,h,L,d]
at::Tensor SplitHeads(const at::Tensor& x, int64_t heads, int64_t head_dim) {
  return x.view({x.size(0), x.size(1), heads, head_dim}).transpose(1, 2);
}

// One head of a [B,h,L,d] float32 tensor whose rows are contiguous.
HeadRows Head(const at::Tensor& t, int64_t b, int64_t head) {
  TORCH_CHECK(t.stride(3) == 1, "attention inputs need contiguous head rows");
  return {t.data_ptr<float>() + b * t.stride(0) + head * t.stride(1), t.stride(2)};
}

// One of a layer's products: int8 where the weight was packed so, else Linear (on the packed
// weight where it is).
at::Tensor Product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const Int8Linear& int8,
                   const PackedWeight& packed, const Epilogue& epilogue = {}) {
  if (int8.packed()) return ApplyEpilogue(int8(x), epilogue);
  return Linear(x, weight, bias, epilogue, packed);
}

// `weight` packed, and its pages of the mapped weight file released
// (TransformerImpl::PackWeightsOnFirstUse). A weight on the heap (read from a torch checkpoint)
// stays plain: its copy cannot be dropped, and packing would hold two.
PackedWeight PackAndRelease(const at::Tensor& weight) {
  if (!io::InMappedFile(weight)) return {};
  PackedWeight packed = PackWeight(weight);
  if (packed.packed()) io::ReleaseMappedPages(weight);
  return packed;
}

}  // namespace

at::Tensor Normalize(const torch::nn::LayerNorm& ln, const at::Tensor& x) {
  return LayerNorm(x, ln->weight, ln->bias, ln->options.eps());
}

torch::nn::Linear MakeLinear(int64_t in, int64_t out, ParameterInit init) {
  if (init == ParameterInit::kRandom) return torch::nn::Linear(in, out);
  // A 1x1 layer draws two numbers; its parameters then take the real shapes, uninitialised.
  torch::nn::Linear linear(1, 1);
  linear->options = torch::nn::LinearOptions(in, out);
  torch::NoGradGuard no_grad;
  linear->weight.set_data(torch::empty({out, in}));
  linear->bias.set_data(torch::empty({out}));
  return linear;
}

AttentionImpl::AttentionImpl(int64_t width, int64_t heads, ParameterInit init)
    : width(width), heads(heads), head_dim(width / heads) {
  const bool random = init == ParameterInit::kRandom;
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * width, width}));
  in_proj_bias = register_parameter("in_proj_bias", random ? torch::zeros({3 * width}) : torch::empty({3 * width}));
  out_proj = register_module("out_proj", MakeLinear(width, width, init));
  if (random) torch::nn::init::xavier_uniform_(in_proj_weight);
}

void AttentionImpl::PackInt8() {
  in_proj_int8 = Int8Linear::Pack(in_proj_weight, in_proj_bias);
  value_int8 = Int8Linear::Pack(in_proj_weight.narrow(0, 2 * width, width), in_proj_bias.narrow(0, 2 * width, width));
  out_proj_int8 = Int8Linear::Pack(out_proj->weight, out_proj->bias);
}

void AttentionImpl::PackWeights() {
  // The value rows alone (ProjectValue) and the first token's query and keys run only in the
  // vision tower's last block, on the plain rows: packing them too would add a copy of a third
  // of the projection in every block.
  in_proj_packed = PackAndRelease(in_proj_weight);
  out_proj_packed = PackAndRelease(out_proj->weight);
}

at::Tensor AttentionImpl::OutProject(const at::Tensor& merged, const at::Tensor& residual) const {
  return Product(merged, out_proj->weight, out_proj->bias, out_proj_int8, out_proj_packed,
                 {Activation::kNone, residual});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> AttentionImpl::Project(const at::Tensor& y) const {
  auto qkv = Product(y, in_proj_weight, in_proj_bias, in_proj_int8, in_proj_packed).chunk(3, -1);
  return {SplitHeads(qkv[0], heads, head_dim), SplitHeads(qkv[1], heads, head_dim),
          SplitHeads(qkv[2], heads, head_dim)};
}

at::Tensor AttentionImpl::ProjectValue(const at::Tensor& y) const {
  auto v = Product(y, in_proj_weight.narrow(0, 2 * width, width), in_proj_bias.narrow(0, 2 * width, width), value_int8,
                   {});
  return SplitHeads(v, heads, head_dim);
}

at::Tensor AttentionImpl::AttendFromFirstToken(const at::Tensor& y, const at::Tensor& v) const {
  const int64_t batch = y.size(0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  auto q = SplitHeads(Linear(y.narrow(1, 0, 1), in_proj_weight.narrow(0, 0, width), in_proj_bias.narrow(0, 0, width)),
                      heads, head_dim);  // [B,h,1,d]
  // q·kⱼ = q·(W_k yⱼ + b_k) = (W_kᵀ q)·yⱼ + q·b_k: one query needs no key of its own.
  auto query = q.view({batch, heads, head_dim});
  auto key_weight = in_proj_weight.narrow(0, width, width).view({heads, head_dim, width});
  auto key_bias = in_proj_bias.narrow(0, width, width).view({heads, head_dim});
  auto query_in_input_space = at::bmm(query.transpose(0, 1), key_weight).transpose(0, 1);  // [B,h,C]
  auto scores = at::bmm(query_in_input_space, y.transpose(1, 2)) + (query * key_bias).sum(-1, true);  // [B,h,L]
  auto out = at::matmul((scores * scale).softmax(-1).unsqueeze(2), v);  // [B,h,1,d]
  out = out.transpose(1, 2).reshape({batch, 1, width});
  return OutProject(out);
}

at::Tensor AttentionImpl::Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& mask, const at::Tensor& residual) const {
  return Attend({Inputs{q, k, v, residual}}, mask)[0];
}

std::vector<at::Tensor> AttentionImpl::Attend(std::initializer_list<Inputs> sets, const at::Tensor& mask) const {
  const auto merged = MergedHeads(sets, mask);
  const int64_t batch = sets.begin()->q.size(0);
  std::vector<at::Tensor> outputs;
  for (const Inputs& set : sets) {
    outputs.push_back(OutProject(merged.narrow(0, static_cast<int64_t>(outputs.size()) * batch, batch), set.residual));
  }
  return outputs;
}

at::Tensor AttentionImpl::AttendTree(const at::Tensor& y, const at::Tensor& paths, const at::Tensor& owners,
                                     const at::Tensor& mask, const at::Tensor& residual) const {
  const int64_t prompts = paths.size(0), length = paths.size(1);
  // The projections run once per node; only the small per-head products run per prompt, on its
  // path's rows gathered from the nodes.
  auto qkv = Product(y, in_proj_weight, in_proj_bias, in_proj_int8, in_proj_packed);  // [N,3C]
  auto rows = qkv.index_select(0, paths.flatten()).view({prompts, length, 3 * width}).chunk(3, -1);
  auto merged = MergedHeads({{SplitHeads(rows[0], heads, head_dim), SplitHeads(rows[1], heads, head_dim),
                              SplitHeads(rows[2], heads, head_dim)}},
                            mask);  // [R,L,C]
  merged = merged.view({prompts * length, width}).index_select(0, owners);
  return OutProject(merged, residual);
}

at::Tensor AttentionImpl::MergedHeads(std::initializer_list<Inputs> sets, const at::Tensor& mask) const {
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  const std::vector<Inputs> inputs(sets);
  const int64_t batch = inputs[0].q.size(0), queries = inputs[0].q.size(2), keys = inputs[0].k.size(2);
  const int64_t total = static_cast<int64_t>(inputs.size()) * batch;
  const auto options = inputs[0].q.options();
  const GemmLibrary library = CurrentGemmLibrary();
  at::Tensor merged;  // [n·B,Lq,C], heads side by side as out_proj expects
  if (options.device().is_cpu() && options.dtype() == at::kFloat && !torch::GradMode::is_enabled() &&
      HeadProducts::Available(library)) {
    merged = at::empty({total, queries, width}, options);
    // One head per task (model/head_attention.h), reading the heads in place from the projection
    // output and writing them in place into the merged output.
    const HeadProducts products(library);
    const at::Tensor mask_rows = mask.defined() ? mask.to(at::kFloat).expand({queries, keys}).contiguous() : mask;
    const float* mask_data = mask_rows.defined() ? mask_rows.data_ptr<float>() : nullptr;
    at::parallel_for(0, total * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(queries * keys);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t row = i / heads, head = i % heads;
        const Inputs& set = inputs[row / batch];
        float* out = merged.data_ptr<float>() + row * queries * width + head * head_dim;
        AttendHead(products, Head(set.q, row % batch, head), Head(set.k, row % batch, head),
                   Head(set.v, row % batch, head), queries, keys, head_dim, scale, mask_data, scores.data(), out,
                   width);
      }
    });
  } else if (OnOneDnn(inputs[0].q)) {  // bfloat16
    merged = at::empty({total, queries, width}, options);
    for (size_t set = 0; set < inputs.size(); ++set) {
      const auto& in = inputs[set];
      onednn::AttendInto(in.q, in.k, in.v, mask, scale, merged.narrow(0, static_cast<int64_t>(set) * batch, batch));
    }
  } else {
    std::vector<at::Tensor> outputs;
    for (const auto& set : inputs) {
      auto scores = at::matmul(set.q * scale, set.k.transpose(-2, -1));
      if (mask.defined()) scores = scores + mask;
      outputs.push_back(at::matmul(scores.softmax(-1), set.v).transpose(1, 2).reshape({batch, queries, width}));
    }
    merged = torch::cat(outputs);
  }
  return merged;
}

MlpImpl::MlpImpl(int64_t width, int64_t hidden, bool quick_gelu, ParameterInit init) : quick_gelu(quick_gelu) {
  c_fc = register_module("c_fc", MakeLinear(width, hidden, init));
  c_proj = register_module("c_proj", MakeLinear(hidden, width, init));
}

void MlpImpl::PackInt8() {
  c_fc_int8 = Int8Linear::Pack(c_fc->weight, c_fc->bias);
  c_proj_int8 = Int8Linear::Pack(c_proj->weight, c_proj->bias);
}

void MlpImpl::PackWeights() {
  c_fc_packed = PackAndRelease(c_fc->weight);
  c_proj_packed = PackAndRelease(c_proj->weight);
}

at::Tensor MlpImpl::forward(const at::Tensor& x, const at::Tensor& residual) {
  const Activation activation = quick_gelu ? Activation::kQuickGelu : Activation::kGelu;
  auto h = Product(x, c_fc->weight, c_fc->bias, c_fc_int8, c_fc_packed, {activation, {}});
  return Product(h, c_proj->weight, c_proj->bias, c_proj_int8, c_proj_packed, {Activation::kNone, residual});
}

ResidualAttentionBlockImpl::ResidualAttentionBlockImpl(int64_t width, int64_t heads, int64_t mlp_hidden,
                                                       bool quick_gelu, ParameterInit init) {
  auto ln_options = torch::nn::LayerNormOptions({width}).eps(1e-5);
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln_options));
  attn = register_module("attn", Attention(width, heads, init));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln_options));
  mlp = register_module("mlp", Mlp(width, mlp_hidden, quick_gelu, init));
}

void ResidualAttentionBlockImpl::PackWeightsIfAsked() {
  if (!pack_weights_on_first_use) return;
  std::call_once(weights_packed, [this] {
    attn->PackWeights();
    mlp->PackWeights();
  });
}

at::Tensor ResidualAttentionBlockImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  PackWeightsIfAsked();
  auto [q, k, v] = attn->Project(Normalize(ln_1, x));
  auto h = attn->Attend(q, k, v, mask, x);
  return mlp->forward(Normalize(ln_2, h), h);
}

at::Tensor ResidualAttentionBlockImpl::ForwardTree(const at::Tensor& x, const at::Tensor& paths,
                                                   const at::Tensor& owners, const at::Tensor& mask) {
  PackWeightsIfAsked();
  auto h = attn->AttendTree(Normalize(ln_1, x), paths, owners, mask, x);
  return mlp->forward(Normalize(ln_2, h), h);
}

TransformerImpl::TransformerImpl(int64_t width, int64_t layers, int64_t heads, int64_t mlp_hidden,
                                 bool quick_gelu, ParameterInit init) {
  resblocks = register_module("resblocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    blocks.push_back(ResidualAttentionBlock(width, heads, mlp_hidden, quick_gelu, init));
    resblocks->push_back(blocks.back());
  }
}

at::Tensor TransformerImpl::forward(const at::Tensor& x, const at::Tensor& mask) {
  auto h = x;
  for (auto& block : blocks) h = block->forward(h, mask);
  return h;
}

void TransformerImpl::PackInt8() {
  for (auto& block : blocks) {
    block->attn->PackInt8();
    block->mlp->PackInt8();
  }
}

void TransformerImpl::PackWeightsOnFirstUse() {
  for (auto& block : blocks) block->pack_weights_on_first_use = true;
}

bool TransformerImpl::PackDeferredWeights() {
  bool deferred = false;
  for (auto& block : blocks) {
    deferred = deferred || block->pack_weights_on_first_use;
    block->PackWeightsIfAsked();
  }
  return deferred;
}

at::Tensor TransformerImpl::ForwardTree(const at::Tensor& x, const at::Tensor& paths, const at::Tensor& owners,
                                        const at::Tensor& mask) {
  auto h = x;
  for (auto& block : blocks) h = block->ForwardTree(h, paths, owners, mask);
  return h;
}

}  // namespace anoclip::model
