#include "anomaly/test_time_adapter.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <list>
#include <mutex>
#include <optional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "anomaly/adamw.h"
#include "anomaly/adapter_loss.h"
#include "model/linear.h"
#include "model/onednn_ops.h"

namespace anoclip::anomaly {
namespace {

// splitmix64's finaliser: nearby inputs give unrelated outputs.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Each row's length as F::normalize divides by it (clamped at 1e-12), [R,1].
at::Tensor RowNorms(const at::Tensor& x) { return x.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12); }

// A product's operand in the products' dtype: a float32 or bfloat16 tensor, or an int8 matrix
// with its scale, or its rows' scales (model::onednn::Int8Matrix).
struct Operand {
  at::Tensor values;
  float int8_scale = 0;        // 0 unless int8
  at::Tensor int8_row_scales;  // W's, from AdamW's pass
  Operand t() const {  // the transpose, a view
    TORCH_CHECK(!int8_row_scales.defined(), "an operand with a scale per row is not transposed");
    return {values.t(), int8_scale};
  }
};

// x in `compute`; `largest` is max |x| where the pass that wrote x has it (int8 needs it).
Operand ForProduct(const at::Tensor& x, at::ScalarType compute, std::optional<float> largest = std::nullopt) {
  if (compute != at::kChar) return {model::ConvertForProduct(x, compute)};
  auto q = model::onednn::QuantizeInt8(x, largest ? *largest : LargestMagnitude(x));
  return {std::move(q.values), q.scale};
}

// x [R,in] · weightᵀ ([out,in]) + bias (float32), then `epilogue`, written in float32, in float32
// or bfloat16 through the process's GEMM library (model/linear.h).
at::Tensor Product(const Operand& x, const Operand& weight, const at::Tensor& bias, model::Epilogue epilogue) {
  epilogue.output_dtype = at::kFloat;
  return model::Linear(x.values, weight.values, bias.defined() ? model::ConvertForProduct(bias, x.values.scalar_type()) : bias,
                       epilogue);
}

// int8: x · weightᵀ's integer sums in float32 (model::onednn::MultiplyInt8), whose scale the pass
// that reads them applies.
at::Tensor Int8Sums(const Operand& x, const Operand& weight) {
  return model::onednn::MultiplyInt8(x.values, weight.values);
}

// The rows of 2·Φ(X) = X + tanh(norm(X)·Wᵀ + b)·T (§7) for an image's [R,D] block X, with norm(X),
// W and T already in the products' dtype, and the gate tanh(...) [R,2N] kept for the backward
// pass. 2·Φ(X) is used in place of Φ(X): the probabilities only see it normalised.
struct Forward {
  at::Tensor gate;      // [R,2N] float32
  AdapterRows doubled;  // [R,D] float32 (under int8, as the product's sums with their scale and X)
};

Forward AdapterForward(const at::Tensor& x, const Operand& normalized, const Operand& weight, const at::Tensor& bias,
                       const Operand& prompts, at::ScalarType compute) {
  if (compute == at::kChar) {
    // The scales, bias, tanh and X go into the passes that read the sums: oneDNN's int8 products
    // run faster without them (model/onednn_ops.h).
    at::Tensor gate = Int8Sums(normalized, weight);
    const at::Tensor column_scales = weight.int8_row_scales.defined()
                                         ? weight.int8_row_scales * normalized.int8_scale
                                         : at::full({gate.size(1)}, normalized.int8_scale * weight.int8_scale, gate.options());
    const Operand gate_int8 = ForProduct(gate, compute, TanhGate(gate, column_scales, bias));
    return {gate, AdapterRows(Int8Sums(gate_int8, prompts.t()), gate_int8.int8_scale * prompts.int8_scale, x)};
  }
  Forward f{Product(normalized, weight, bias, {model::Activation::kTanh, {}}), at::Tensor()};
  // gate·T as a linear layer whose weight is Tᵀ [D,2N], read in place through its strides, with X
  // added as it is written.
  f.doubled = Product(ForProduct(f.gate, compute), prompts.t(), {}, {model::Activation::kNone, x});
  return f;
}

// part(0) and part(1) of an image's work: on the CPU one per thread where two are free (at batch
// 1), else (within a batch's round, on one thread, or on another device) in turn.
template <typename Part>
void RunTwoParts(const at::Tensor& on, const Part& part) {
  if (!on.device().is_cpu()) {
    part(0);
    part(1);
    return;
  }
  at::parallel_for(0, 2, 1, [&](int64_t first, int64_t last) {
    at::NoGradGuard thread_no_grad;  // grad mode is per thread
    for (int64_t i = first; i < last; ++i) part(static_cast<int>(i));
  });
}

}  // namespace

model::onednn::Int8Matrix RoundPromptsToInt8(const at::Tensor& rows) {
  const Operand rounded = ForProduct(rows, at::kChar);
  return {rounded.values, rounded.int8_scale};
}

at::Tensor DrawTtaNoise(uint64_t seed, int step, double sigma, at::IntArrayRef shape) {
  auto noise = at::empty(shape, at::kFloat);
  const auto flat = noise.view(-1);
  const int64_t chunks = (flat.numel() + kTtaNoiseChunk - 1) / kTtaNoiseChunk;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      // libtorch's mt19937 keeps only the low 32 bits of its seed: mix all three into them.
      const uint64_t key = SplitMix64(seed ^ SplitMix64((static_cast<uint64_t>(step) << 32) | chunk));
      at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(key ^ (key >> 32));
      flat.narrow(0, chunk * kTtaNoiseChunk, std::min(kTtaNoiseChunk, flat.numel() - chunk * kTtaNoiseChunk))
          .normal_(0, sigma, generator);
    }
  });
  return noise;
}

namespace {

// The last draws of CachedTtaNoise, most recent first, within kTtaNoiseCacheBytes.
struct NoiseCache {
  struct Entry {
    std::tuple<uint64_t, int, double, std::vector<int64_t>> key;
    at::Tensor noise;
  };
  std::mutex mutex;
  std::list<Entry> entries;
  size_t bytes = 0;
};

NoiseCache& TheNoiseCache() {
  static NoiseCache cache;
  return cache;
}

}  // namespace

at::Tensor CachedTtaNoise(uint64_t seed, int step, double sigma, at::IntArrayRef shape) {
  NoiseCache& cache = TheNoiseCache();
  auto key = std::make_tuple(seed, step, sigma, shape.vec());
  {
    std::lock_guard<std::mutex> lock(cache.mutex);
    for (auto it = cache.entries.begin(); it != cache.entries.end(); ++it) {
      if (it->key == key) {
        cache.entries.splice(cache.entries.begin(), cache.entries, it);
        return it->noise;
      }
    }
  }
  // Drawn outside the lock: another thread may draw the same noise meanwhile, which costs time
  // but not correctness (the draws are equal).
  at::Tensor noise = DrawTtaNoise(seed, step, sigma, shape);
  const size_t bytes = noise.numel() * sizeof(float);
  if (bytes > kTtaNoiseCacheBytes) return noise;
  std::lock_guard<std::mutex> lock(cache.mutex);
  for (const auto& entry : cache.entries) {
    if (entry.key == key) return entry.noise;
  }
  while (cache.bytes + bytes > kTtaNoiseCacheBytes) {
    cache.bytes -= cache.entries.back().noise.numel() * sizeof(float);
    cache.entries.pop_back();
  }
  cache.entries.push_front({std::move(key), noise});
  cache.bytes += bytes;
  return noise;
}

size_t TtaNoiseCacheBytes() {
  NoiseCache& cache = TheNoiseCache();
  std::lock_guard<std::mutex> lock(cache.mutex);
  return cache.bytes;
}

absl::StatusOr<TestTimeAdapter> TestTimeAdapter::Create(const TtaOptions& options) {
  if (options.steps < 1 || options.steps > 100) {
    return absl::InvalidArgumentError(absl::StrCat("tta steps must be in 1..100; was ", options.steps));
  }
  // Past these bounds AdamW's updates overflow float32 within a step or the noise drowns the
  // tokens (their norms are O(1..10)): nothing useful is computed there.
  if (!(options.lr > 0 && options.lr <= kMaxTtaLr)) {
    return absl::InvalidArgumentError(absl::StrCat("tta lr must be in (0, ", kMaxTtaLr, "]; was ", options.lr));
  }
  if (options.compute_dtype != at::kFloat && options.compute_dtype != at::kBFloat16 &&
      options.compute_dtype != at::kChar) {
    return absl::InvalidArgumentError("tta compute dtype must be float32, bfloat16 or int8");
  }
  if (!(options.sigma >= 0 && options.sigma <= kMaxTtaSigma)) {
    return absl::InvalidArgumentError(absl::StrCat("tta sigma must be in [0, ", kMaxTtaSigma, "]; was ", options.sigma));
  }
  return TestTimeAdapter(options);
}

TtaResult TestTimeAdapter::Adapt(const at::Tensor& patches, const at::Tensor& prompts,
                                 const at::Tensor& text_features) const {
  std::vector<AdapterPrompts> rows;
  for (int64_t i = 0; i < prompts.size(0); ++i) rows.push_back({prompts[i], {}});
  return Adapt(patches, rows, text_features);
}

TtaResult TestTimeAdapter::Adapt(const at::Tensor& patches, const std::vector<AdapterPrompts>& prompts,
                                 const at::Tensor& text_features) const {
  TORCH_CHECK(static_cast<int64_t>(prompts.size()) == patches.size(0), "the adapter takes one set of prompts per image; ",
              prompts.size(), " for ", patches.size(0), " images");
  at::NoGradGuard no_grad;  // the gradients below are written out, not traced
  const int64_t batch = patches.size(0);
  TtaResult result;
  result.losses.assign(batch, {});
  std::vector<at::Tensor> probs(batch);
  const auto adapt = [&](int64_t i) {
    probs[i] = AdaptImage(i, patches[i], prompts[i], text_features[i], result.losses[i]);
  };
  // On the CPU, whole rounds of one image per thread, each image's products on its own thread:
  // one image's [450×640]-sized products split over the threads wait on each other at every
  // product. The images left over adapt one at a time on all threads.
  const int64_t threads = patches.device().is_cpu() ? at::get_num_threads() : 1;
  const int64_t spread = threads > 1 ? batch / threads * threads : 0;
  at::parallel_for(0, spread, 1, [&](int64_t first, int64_t last) {
    at::NoGradGuard thread_no_grad;  // grad mode is per thread
    for (int64_t i = first; i < last; ++i) adapt(i);
  });
  for (int64_t i = spread; i < batch; ++i) adapt(i);
  result.patch_probs = at::stack(probs);
  return result;
}

// One image's adaptation. Images adapt apart: each has its own W and b, AdamW is element-wise
// and the summed loss separates per image, so this equals adapting the batch at once, and one
// image's tensors stay in its core's cache.
at::Tensor TestTimeAdapter::AdaptImage(int64_t image, const at::Tensor& patches, const AdapterPrompts& prompt_rows,
                                       const at::Tensor& text_features, std::vector<float>& losses) const {
  const at::Tensor& prompts = prompt_rows.rows;
  const int64_t tokens = patches.size(0), dim = patches.size(1), rows = prompts.size(0);
  const auto options = patches.options();
  // The random initialisation's generator, one per image, so its draws do not depend on the batch.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options_.seed);

  at::Tensor weight, bias;
  const bool from_text = options_.init == TtaInit::kText;
  if (from_text) {
    weight = at::empty({rows, dim}, options);  // written by the first step, from the prompts
    bias = at::zeros({rows}, options);
  } else {
    // nn.Linear's default: kaiming_uniform(a=√5) and a bias of the same bound, both 1/√fan_in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(dim));
    weight = at::empty({rows, dim}).uniform_(-bound, bound, generator).to(options);
    bias = at::empty({rows}).uniform_(-bound, bound, generator).to(options);
  }
  const auto compute = options_.compute_dtype;
  TORCH_CHECK(compute != at::kChar || patches.device().is_cpu(), "int8 adaptation runs on the CPU");
  // The weight's gradient, norm(X)ᵀ-weighted sums of ∂/∂A, stays out of int8, in bfloat16 where
  // oneDNN multiplies it natively: norm(X) rounded to int8 left errors in the gradient's small
  // elements, and AdamW, which moves each element by about lr whatever its gradient's size, made
  // that a different adaptation (docs/performance.md).
  const bool native_bfloat16 =
      model::CurrentGemmLibrary() == model::GemmLibrary::kOneDnn && model::onednn::HasNativeBfloat16();
  const auto weight_gradient_compute =
      compute != at::kChar ? compute : native_bfloat16 ? at::kBFloat16 : at::kFloat;
  // The prompts in the products' dtype once, not at every product (in int8 the caller's copy
  // where it keeps one).
  const bool int8_given = compute == at::kChar && prompt_rows.int8.values.defined();
  TORCH_CHECK(!int8_given || prompt_rows.int8.values.sizes() == prompts.sizes(),
              "the prompts' int8 copy is not of their shape");
  const Operand prompts_compute = int8_given ? Operand{prompt_rows.int8.values, prompt_rows.int8.scale}
                                             : ForProduct(prompts, compute);
  AdamWSettings settings;
  settings.lr = options_.lr;
  AdamW weight_optimizer(weight, settings, from_text ? prompts : at::Tensor()), bias_optimizer(bias, settings);
  // The largest magnitudes scale the int8 operands; the other dtypes need none.
  const bool int8 = compute == at::kChar;
  // In int8, W rounded row by row by AdamW's update as it writes W, for the next step's product.
  at::Tensor weight_int8, weight_row_scales;
  if (int8) {
    weight_int8 = at::empty({rows, dim}, options.dtype(at::kChar));
    weight_row_scales = at::empty({rows}, options);
  }
  const auto updated_weight = [&] {
    return int8 ? Operand{weight_int8, 0, weight_row_scales} : ForProduct(weight, compute);
  };

  // The clean and noisy tokens are one [2M,D] block X, whose halves go through the adapter apart
  // within a step (every term of the loss sees only its own row) and meet in the weight's
  // gradient, one product over the whole block. The clean rows and their normalised rows are
  // written once. The noisy rows of a step are written while the step before is still in use
  // (below), so they alternate between two places around the clean rows: rows [M,3M) of the
  // buffers below are the block at even steps, rows [0,2M) at odd ones (the order of a block's
  // rows does not matter to the weight's gradient, a sum over them).
  const int64_t clean_row = tokens;
  const auto noisy_row = [&](int step) { return step % 2 == 0 ? 2 * tokens : int64_t{0}; };
  const auto block_row = [&](int step) { return step % 2 == 0 ? tokens : int64_t{0}; };
  const auto x = at::empty({3 * tokens, dim}, options), normalized = at::empty({3 * tokens, dim}, options);
  x.narrow(0, clean_row, tokens).copy_(patches);
  auto clean_normalized = normalized.narrow(0, clean_row, tokens);
  at::div_out(clean_normalized, patches, RowNorms(patches));
  // norm(X) in bfloat16 where a product takes it so: the clean rows converted once, the noisy
  // rows written by the pass that writes their float32 rows.
  at::Tensor normalized_bfloat16;
  if (compute == at::kBFloat16 || weight_gradient_compute == at::kBFloat16) {
    normalized_bfloat16 = at::empty({3 * tokens, dim}, options.dtype(at::kBFloat16));
    normalized_bfloat16.narrow(0, clean_row, tokens).copy_(model::ConvertForProduct(clean_normalized, at::kBFloat16));
  }
  // Rows first..first+count of norm(X) in `dtype` (int8 at `largest`).
  const auto normalized_in = [&](at::ScalarType dtype, int64_t first, int64_t count, float largest) {
    return dtype == at::kBFloat16 ? Operand{normalized_bfloat16.narrow(0, first, count)}
                                  : ForProduct(normalized.narrow(0, first, count), dtype, largest);
  };
  const float clean_largest = int8 ? LargestMagnitude(clean_normalized) : 0;
  const Operand clean_compute = normalized_in(compute, clean_row, tokens, clean_largest);
  // ∂loss/∂A, each half writing its rows where its norm(X) rows lie, in the weight gradient's
  // dtype; with norm(X) in that dtype, the operands of dW = d_preactivationᵀ·norm(X) for each of
  // the two blocks, whose transposes are views read through their strides.
  const auto d_preactivation = at::empty({3 * tokens, rows}, options.dtype(weight_gradient_compute));
  Operand d_preactivation_t[2], normalized_for_weight_t[2];
  for (int parity = 0; parity < 2; ++parity) {
    d_preactivation_t[parity] = Operand{d_preactivation.narrow(0, block_row(parity), 2 * tokens)}.t();
    normalized_for_weight_t[parity] = normalized_in(weight_gradient_compute, block_row(parity), 2 * tokens, 0).t();
  }

  // A step's noisy rows: noise added to rows first..first+count of P and normalised, written where
  // that step's noisy rows lie; returns the largest magnitude written. The rows are split between
  // the halves: the clean half, the shorter, writes the first part of the next step's while the
  // noisy half still works on its own (at batch 1 they are on two threads, which otherwise waited
  // on the noisy half about 0.2 ms per step), and the noisy half the rest before it starts.
  at::Tensor noise[2];  // δ of the step being prepared, by parity
  const auto prepare_noisy_rows = [&](int step, int64_t first, int64_t count) {
    if (count == 0) return 0.0f;
    const int64_t row = noisy_row(step) + first;
    return AddNoiseAndNormalize(
        patches.narrow(0, first, count), noise[step % 2].narrow(0, first, count), x.narrow(0, row, count),
        normalized.narrow(0, row, count),
        normalized_bfloat16.defined() ? normalized_bfloat16.narrow(0, row, count) : at::Tensor());
  };
  const auto draw_noise = [&](int step) {
    noise[step % 2] = options_.noise ? options_.noise(step, image, {tokens, dim})
                                     : CachedTtaNoise(options_.seed, step, options_.sigma, {tokens, dim});
  };
  const int64_t noisy_rows_first_part = tokens / 2;  // written by the clean half, from the second step
  float noisy_first_part_largest[2] = {};  // by parity, as the halves may run in turn
  float half_losses[2] = {};
  at::Tensor half_d_bias[2];
  for (int step = 0; step < options_.steps; ++step) {
    // W starts as T, whose operand is at hand.
    const Operand weight_compute =
        step > 0 ? updated_weight() : from_text ? prompts_compute : ForProduct(weight, compute);
    // One half's forward pass, loss and way back to ∂loss/∂A (its rows) and its share of ∂loss/∂b.
    const auto adapt_half = [&](int half) {
      const int64_t row = half == 0 ? clean_row : noisy_row(step);
      Operand normalized_compute = clean_compute;
      if (half == 1) {
        float noisy_largest;
        if (step == 0) {
          draw_noise(0);
          noisy_largest = prepare_noisy_rows(0, 0, tokens);
        } else {
          noisy_largest = LargerMagnitude(
              noisy_first_part_largest[step % 2],
              prepare_noisy_rows(step, noisy_rows_first_part, tokens - noisy_rows_first_part));
        }
        normalized_compute = normalized_in(compute, row, tokens, noisy_largest);
      }
      const Forward f = AdapterForward(x.narrow(0, row, tokens), normalized_compute, weight_compute, bias,
                                       prompts_compute, compute);
      const AdapterLoss g = AdapterLossGradient(f.doubled, text_features, tokens, half * tokens);
      half_losses[half] = g.loss.item<float>();
      const Operand d_doubled = ForProduct(g.d_doubled, compute, g.d_doubled_largest);
      const auto d_preactivation_rows = d_preactivation.narrow(0, row, tokens);
      half_d_bias[half] = int8 ? BackThroughGate(Int8Sums(d_doubled, prompts_compute), f.gate, d_preactivation_rows,
                                                 d_doubled.int8_scale * prompts_compute.int8_scale)
                               : BackThroughGate(Product(d_doubled, prompts_compute, {}, {}), f.gate, d_preactivation_rows);
      if (half == 0 && step + 1 < options_.steps) {
        draw_noise(step + 1);
        noisy_first_part_largest[(step + 1) % 2] = prepare_noisy_rows(step + 1, 0, noisy_rows_first_part);
      }
    };
    // One half per thread at batch 1: a half's [M×D]-sized products on one thread ran about 10%
    // faster than the block's on two, which wait on each other at every product.
    RunTwoParts(patches, adapt_half);
    losses.push_back(half_losses[0] + half_losses[1]);

    // dW over both halves.
    // In int8 W's rows are rounded by the same pass (weight_int8 is undefined otherwise).
    weight_optimizer.Step(Product(d_preactivation_t[step % 2], normalized_for_weight_t[step % 2], {}, {}),
                          weight_int8, weight_row_scales);
    bias_optimizer.Step(half_d_bias[0] + half_d_bias[1]);
  }
  // prob(P) with the adapted W and b, the clean rows in two parts as a step's halves run: one per
  // thread at batch 1.
  const Operand adapted_weight = updated_weight();
  auto probabilities = at::empty({tokens}, options);
  const int64_t tokens_per_part = (tokens + 1) / 2;
  const auto adapted_part = [&](int part) {
    const int64_t first = part * tokens_per_part, count = std::min(tokens_per_part, tokens - first);
    if (count <= 0) return;
    const Operand part_normalized{clean_compute.values.narrow(0, first, count), clean_compute.int8_scale};
    const Forward f = AdapterForward(patches.narrow(0, first, count), part_normalized, adapted_weight, bias,
                                     prompts_compute, compute);
    probabilities.narrow(0, first, count).copy_(AbnormalProbabilities(f.doubled, text_features));
  };
  RunTwoParts(patches, adapted_part);
  return probabilities;
}

}  // namespace anoclip::anomaly
