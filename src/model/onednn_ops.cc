#include "model/onednn_ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <dnnl.hpp>

#include <algorithm>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "model/huge_pages.h"

namespace anoclip::model::onednn {

using dnnl::memory;

struct BlockedLayout {
  memory::desc blocks;  // the weight as the matmul's [in,out] operand, blocked
  int64_t in, out;
  at::ScalarType dtype;
};

namespace {

const dnnl::engine& Engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// oneDNN runs on libtorch's OpenMP threads: a thread that has not run a libtorch parallel
// region yet still has OpenMP's default thread count, so set libtorch's first.
dnnl::stream& Stream() {
  at::internal::lazy_init_num_threads();
  thread_local dnnl::stream stream(Engine());
  return stream;
}

memory::data_type DataType(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              "oneDNN products take float32 or bfloat16 CPU tensors");
  return t.scalar_type() == at::kFloat ? memory::data_type::f32 : memory::data_type::bf16;
}

memory::desc Describe(const at::Tensor& t, memory::dims dims, memory::dims strides) {
  return memory::desc(dims, DataType(t), strides);
}

// The tensor as [rows, columns] with unit column stride, viewing it where it can.
at::Tensor Rows(const at::Tensor& t, int64_t columns) {
  auto rows = t.reshape({-1, columns});
  return rows.stride(1) == 1 ? rows : rows.contiguous();
}

// A plan whose kernel is oneDNN's reference loops (no JIT kernel for this shape, layout or
// post-op on this CPU) still computes the right result, but some hundred times slower: say so once.
template <typename PrimitiveDesc>
const PrimitiveDesc& WarnIfReference(const PrimitiveDesc& plan) {
  const std::string kernel = plan.impl_info_str();
  if (kernel.rfind("ref", 0) == 0) TORCH_WARN_ONCE("oneDNN runs a product on its reference kernel (", kernel, ")");
  return plan;
}

memory Bind(const memory::desc& desc, const at::Tensor& t) {
  return memory(desc, Engine(), const_cast<void*>(t.data_ptr()));
}

void AppendActivation(Activation activation, dnnl::post_ops& post_ops) {
  switch (activation) {
    case Activation::kNone: break;
    case Activation::kGelu: post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f); break;
    // x·sigmoid(1.702·x) is oneDNN's swish with alpha 1.702.
    case Activation::kQuickGelu: post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.702f, 0.0f); break;
    case Activation::kTanh: post_ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f); break;
  }
}

// The residual as dense [rows, columns] rows and its description: a strided residual would send
// the product to oneDNN's reference kernel.
std::pair<at::Tensor, memory::desc> DenseResidual(const Epilogue& epilogue, int64_t rows, int64_t columns) {
  TORCH_CHECK(epilogue.residual.numel() == rows * columns, "residual has ", epilogue.residual.numel(),
              " elements, the product ", rows * columns);
  auto residual = epilogue.residual.reshape({-1, columns}).contiguous();
  // Its own dtype, which may differ from the output's.
  auto desc = Describe(residual, {rows, columns}, {columns, 1});
  return {std::move(residual), std::move(desc)};
}

// The matrix with a unit stride on one side, as the products read it: itself where it has one.
at::Tensor WithUnitStride(const at::Tensor& t) {
  return t.stride(0) == 1 || t.stride(1) == 1 ? t : t.contiguous();
}

}  // namespace

PackedWeight Pack(const at::Tensor& weight) {
  const int64_t out = weight.size(0), in = weight.size(1);
  const auto type = DataType(weight);
  // The matmul's choice for this weight; one row count stands for all (the vision tower's shapes
  // got the same blocks from 1 to 3,616 rows).
  constexpr int64_t kRows = 256;
  const dnnl::matmul::primitive_desc plan(
      dnnl::matmul::desc(memory::desc({kRows, in}, type, memory::format_tag::ab),
                         memory::desc({in, out}, type, memory::format_tag::any),
                         memory::desc({kRows, out}, type, memory::format_tag::ab)),
      Engine());
  const memory::desc plain = Describe(weight, {in, out}, {weight.stride(1), weight.stride(0)});
  const memory::desc blocked = plan.weights_desc();
  if (blocked == plain) return {};
  PackedWeight packed;
  packed.blocks = EmptyOnHugePages(static_cast<int64_t>(blocked.get_size()));
  packed.layout = std::make_shared<const BlockedLayout>(BlockedLayout{blocked, in, out, weight.scalar_type()});
  memory source = Bind(plain, weight), target = Bind(blocked, packed.blocks);
  dnnl::reorder(source, target).execute(Stream(), source, target);
  return packed;
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const Epilogue& epilogue,
                  const PackedWeight& packed) {
  const int64_t in = weight.size(1), out = weight.size(0);
  if (packed.packed()) {
    const BlockedLayout& layout = *packed.layout;
    TORCH_CHECK(layout.in == in && layout.out == out && layout.dtype == weight.scalar_type(),
                "the packed weight is not this layer's");
  }
  TORCH_CHECK(x.size(-1) == in, "linear input has ", x.size(-1), " features, weight expects ", in);
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  const auto output_dtype =
      epilogue.output_dtype == at::ScalarType::Undefined ? x.scalar_type() : epilogue.output_dtype;
  auto y = at::empty(sizes, x.options().dtype(output_dtype));
  // A 2-D x with contiguous rows or columns (a transposed view) is read through its strides, with
  // no copy; anything else as dense rows.
  const bool strided_matrix = x.dim() == 2 && (x.stride(1) == 1 || x.stride(0) == 1);
  const auto rows = strided_matrix ? x : Rows(x, in);
  const int64_t m = rows.size(0);
  if (m == 0 || out == 0) return y;

  dnnl::post_ops post_ops;
  AppendActivation(epilogue.activation, post_ops);
  at::Tensor residual;
  memory::desc residual_desc;
  const auto dst = Describe(y, {m, out}, {out, 1});
  if (epilogue.residual.defined()) {
    std::tie(residual, residual_desc) = DenseResidual(epilogue, m, out);
    post_ops.append_binary(dnnl::algorithm::binary_add, residual_desc);
  }
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops);

  const auto src = Describe(rows, {m, in}, {rows.stride(0), rows.stride(1)});
  std::unordered_map<int, memory> args{{DNNL_ARG_DST, Bind(dst, y)}};
  if (residual.defined()) {
    args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(post_ops.len() - 1) | DNNL_ARG_SRC_1, Bind(residual_desc, residual));
  }
  const bool dense = rows.stride(0) == in && rows.stride(1) == 1 && weight.stride(1) == 1 && weight.stride(0) == in &&
                     (!bias.defined() || bias.stride(0) == 1);
  // A packed weight goes to the matmul at any row count: at 1,808 rows it runs about as fast as
  // the inner product on the plain weight (docs/performance.md).
  const bool inner_product = m >= kInnerProductMinRows && dense && !packed.packed();
  // The inner product reads the weight as it lies, [out,in]; the matmul reads it as the [in,out]
  // matrix its product needs, through its strides, or in its blocks.
  const auto weights = packed.packed() ? packed.layout->blocks
                       : inner_product ? Describe(weight, {out, in}, {in, 1})
                                       : Describe(weight, {in, out}, {weight.stride(1), weight.stride(0)});
  memory::desc bias_desc;
  if (bias.defined()) {
    bias_desc = inner_product ? Describe(bias, {out}, {1}) : Describe(bias, {1, out}, {out, bias.stride(0)});
    args.emplace(DNNL_ARG_BIAS, Bind(bias_desc, bias));
  }
  args.emplace(DNNL_ARG_SRC, Bind(src, rows));
  args.emplace(DNNL_ARG_WEIGHTS, Bind(weights, packed.packed() ? packed.blocks : weight));
  // oneDNN's primitive cache returns the kernel built for an earlier call of the same shape.
  if (inner_product) {
    const dnnl::inner_product_forward::primitive_desc plan(
        dnnl::inner_product_forward::desc(dnnl::prop_kind::forward_inference, src, weights, bias_desc, dst), attr,
        Engine());
    dnnl::inner_product_forward(WarnIfReference(plan)).execute(Stream(), args);
  } else {
    const dnnl::matmul::primitive_desc plan(dnnl::matmul::desc(src, weights, bias_desc, dst), attr, Engine());
    dnnl::matmul(WarnIfReference(plan)).execute(Stream(), args);
  }
  return y;
}

at::Tensor Convert(const at::Tensor& x, at::ScalarType dtype) {
  // A dense x keeps its layout (a transposed view stays one, for the products to read as it is).
  auto y = at::empty_like(x, x.options().dtype(dtype));
  if (x.numel() == 0) return y;
  const memory::dims dims(x.sizes().begin(), x.sizes().end());
  memory source = Bind(Describe(x, dims, memory::dims(x.strides().begin(), x.strides().end())), x);
  memory target = Bind(Describe(y, dims, memory::dims(y.strides().begin(), y.strides().end())), y);
  dnnl::reorder(source, target).execute(Stream(), source, target);
  return y;
}

Int8Matrix QuantizeInt8(const at::Tensor& x, std::optional<float> largest) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "QuantizeInt8 takes a 2-D float32 CPU matrix");
  Int8Matrix q;
  // A dense x keeps its layout (a transposed view stays one, for the products to read as it is).
  q.values = at::empty_like(x, x.options().dtype(at::kChar));
  if (x.numel() == 0) return q;
  // amax and amin reduce any layout at memory speed; linalg_vector_norm(x, inf) ran some 20x
  // slower, and abs().max() 100x slower on a transposed view.
  if (!largest) largest = std::max(at::amax(x).item<float>(), -at::amin(x).item<float>());
  // A NaN or infinity among x's values makes the scale NaN or infinite, and the products NaN:
  // seen, not hidden.
  if (!(*largest == 0)) q.scale = *largest / 127;
  float inverse = 1 / q.scale;
  dnnl::primitive_attr attr;
  attr.set_output_scales(0, {DNNL_RUNTIME_F32_VAL});  // one plan for every scale
  const auto source_desc = Describe(x, {x.size(0), x.size(1)}, {x.stride(0), x.stride(1)});
  const memory::desc target_desc({x.size(0), x.size(1)}, memory::data_type::s8,
                                 {q.values.stride(0), q.values.stride(1)});
  const dnnl::reorder::primitive_desc plan(Engine(), source_desc, Engine(), target_desc, attr);
  memory scale(memory::desc({1}, memory::data_type::f32, memory::format_tag::a), Engine(), &inverse);
  dnnl::reorder(plan).execute(Stream(), {{DNNL_ARG_FROM, Bind(source_desc, x)},
                                         {DNNL_ARG_TO, Bind(target_desc, q.values)},
                                         {DNNL_ARG_ATTR_OUTPUT_SCALES, scale}});
  return q;
}

at::Tensor MultiplyInt8(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.scalar_type() == at::kChar && weight.scalar_type() == at::kChar &&
                  x.device().is_cpu() && weight.device().is_cpu(),
              "MultiplyInt8 takes 2-D int8 CPU matrices");
  const int64_t m = x.size(0), in = x.size(1), n = weight.size(0);
  TORCH_CHECK(weight.size(1) == in, "the product's input has ", in, " columns, its weight ", weight.size(1));
  auto out = at::empty({m, n}, x.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  if (in == 0) return out.zero_();
  const auto rows = WithUnitStride(x), w = WithUnitStride(weight);
  const memory::desc src({m, in}, memory::data_type::s8, {rows.stride(0), rows.stride(1)});
  const memory::desc weights({in, n}, memory::data_type::s8, {w.stride(1), w.stride(0)});
  const auto dst = Describe(out, {m, n}, {n, 1});
  const dnnl::matmul::primitive_desc plan(dnnl::matmul::desc(src, weights, dst), Engine());
  dnnl::matmul(WarnIfReference(plan))
      .execute(Stream(), {{DNNL_ARG_SRC, Bind(src, rows)}, {DNNL_ARG_WEIGHTS, Bind(weights, w)}, {DNNL_ARG_DST, Bind(dst, out)}});
  return out;
}

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  TORCH_CHECK(x.is_contiguous() && x.dim() >= 1, "LayerNorm takes dense rows");
  const int64_t columns = x.size(-1), rows = columns == 0 ? 0 : x.numel() / columns;
  TORCH_CHECK(weight.numel() == columns && bias.numel() == columns, "LayerNorm's weight and bias have ", columns,
              " elements");
  auto y = at::empty_like(x);
  if (rows == 0 || columns == 0) return y;
  // The primitive's scale and shift are float32 whatever the rows' type.
  const auto scale = weight.to(at::kFloat).contiguous(), shift = bias.to(at::kFloat).contiguous();
  const memory::desc rows_desc({rows, columns}, DataType(x), memory::format_tag::ab);
  const memory::desc channel_desc({columns}, memory::data_type::f32, memory::format_tag::a);
  const dnnl::layer_normalization_forward::primitive_desc plan(
      dnnl::layer_normalization_forward::desc(dnnl::prop_kind::forward_inference, rows_desc, static_cast<float>(eps),
                                              dnnl::normalization_flags::use_scale |
                                                  dnnl::normalization_flags::use_shift),
      Engine());
  dnnl::layer_normalization_forward(plan).execute(Stream(), {{DNNL_ARG_SRC, Bind(rows_desc, x)},
                                                             {DNNL_ARG_DST, Bind(rows_desc, y)},
                                                             {DNNL_ARG_SCALE, Bind(channel_desc, scale)},
                                                             {DNNL_ARG_SHIFT, Bind(channel_desc, shift)}});
  return y;
}

void Sgemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y) {
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && y.is_contiguous(), "Sgemm takes contiguous operands");
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  at::internal::lazy_init_num_threads();
  const dnnl_status_t status = dnnl_sgemm('N', 'T', m, n, k, 1.0f, x.data_ptr<float>(), k, weight.data_ptr<float>(), k,
                                          0.0f, y.data_ptr<float>(), n);
  TORCH_CHECK(status == dnnl_success, "dnnl_sgemm failed with status ", static_cast<int>(status));
}

std::string LibraryVersion() {
  const dnnl_version_t* version = dnnl::version();
  return std::to_string(version->major) + "." + std::to_string(version->minor) + "." + std::to_string(version->patch);
}

bool HasNativeBfloat16() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
  return (isa & bf16) == bf16;  // oneDNN's ISA values contain the bits of every ISA below them
}

bool HasNativeInt8() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto has = [isa](dnnl::cpu_isa bits) { return (isa & static_cast<unsigned>(bits)) == static_cast<unsigned>(bits); };
  return has(dnnl::cpu_isa::avx512_core_vnni) || has(dnnl::cpu_isa::avx2_vnni);  // AMX's value holds VNNI's bits
}

void AttendInto(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, float scale,
                const at::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), keys = k.size(2), depth = q.size(3);
  TORCH_CHECK(out.size(0) == batch && out.size(1) == queries && out.size(2) == heads * depth && out.stride(2) == 1,
              "attention output must be [B,Lq,h·d] with contiguous rows");
  if (batch == 0 || queries == 0) return;
  // Images in chunks whose scores fit in the cache (a ViT-B/16's are 2.9 MB per image): the
  // softmax and the second product then read them from the cache rather than from memory.
  constexpr int64_t kScoreBytesPerChunk = 4 << 20;
  const int64_t chunk = std::clamp<int64_t>(kScoreBytesPerChunk / (heads * queries * keys * 4), 1, batch);
  auto scores = at::empty({chunk, heads, queries, keys}, q.options());

  const auto query = Describe(q, {chunk, heads, queries, depth}, {q.stride(0), q.stride(1), q.stride(2), q.stride(3)});
  // k read as kᵀ [d,Lk] per head.
  const auto key = Describe(k, {chunk, heads, depth, keys}, {k.stride(0), k.stride(1), k.stride(3), k.stride(2)});
  const auto value = Describe(v, {chunk, heads, keys, depth}, {v.stride(0), v.stride(1), v.stride(2), v.stride(3)});
  const auto score = Describe(scores, {chunk, heads, queries, keys}, {heads * queries * keys, queries * keys, keys, 1});
  const auto merged = Describe(out, {chunk, heads, queries, depth}, {out.stride(0), depth, out.stride(1), 1});

  dnnl::primitive_attr score_attr;
  score_attr.set_output_scales(0, {scale});  // applied to the product alone
  at::Tensor mask_rows;
  if (mask.defined()) {
    // The mask is written into the scores first and the product added onto it: oneDNN's batched
    // matmul has no fast kernel for a broadcast binary post-op (it falls back to its reference
    // loops), but it has one for accumulating into its output.
    mask_rows = mask.to(q.scalar_type()).expand({chunk, heads, queries, keys});
    dnnl::post_ops post_ops;
    post_ops.append_sum(1.0f);
    score_attr.set_post_ops(post_ops);
  }
  const dnnl::matmul score_product(
      WarnIfReference(dnnl::matmul::primitive_desc(dnnl::matmul::desc(query, key, score), score_attr, Engine())));
  const dnnl::softmax_forward softmax(dnnl::softmax_forward::primitive_desc(
      dnnl::softmax_forward::desc(dnnl::prop_kind::forward_inference, score, 3), Engine()));
  const dnnl::matmul output_product(
      WarnIfReference(dnnl::matmul::primitive_desc(dnnl::matmul::desc(score, value, merged), Engine())));

  dnnl::stream& stream = Stream();
  const memory score_memory = Bind(score, scores);
  for (int64_t first = 0; first < batch; first += chunk) {
    const int64_t images = std::min(chunk, batch - first);
    if (images < chunk) {  // the last, shorter chunk: the same work on fewer images
      AttendInto(q.narrow(0, first, images), k.narrow(0, first, images), v.narrow(0, first, images), mask, scale,
                 out.narrow(0, first, images));
      break;
    }
    std::unordered_map<int, memory> score_args{{DNNL_ARG_SRC, Bind(query, q[first])},
                                               {DNNL_ARG_WEIGHTS, Bind(key, k[first])},
                                               {DNNL_ARG_DST, score_memory}};
    if (mask_rows.defined()) scores.copy_(mask_rows);
    score_product.execute(stream, score_args);
    softmax.execute(stream, {{DNNL_ARG_SRC, score_memory}, {DNNL_ARG_DST, score_memory}});
    output_product.execute(stream, {{DNNL_ARG_SRC, score_memory},
                                    {DNNL_ARG_WEIGHTS, Bind(value, v[first])},
                                    {DNNL_ARG_DST, Bind(merged, out[first])}});
  }
}

}  // namespace anoclip::model::onednn
