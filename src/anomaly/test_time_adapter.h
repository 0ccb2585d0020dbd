// AnoCLIP+ test-time adaptation (docs/algorithm.md §7): a per-image residual adapter on the patch
// tokens, trained for a few AdamW steps on an entropy + noise-consistency loss, then used to
// re-score the patches.
//
// Every image keeps its own W [2N,D] and b [2N] and adapts alone, so results do not depend on the
// batch; its random init comes from its own generator seeded with the seed, its noise from
// CachedTtaNoise. The loss's gradient is written out (docs/algorithm.md §7) rather than traced by
// autograd: the four products per step go through the process's GEMM library, the loss and its
// gradient are one pass over the rows (anomaly/adapter_loss.h), and a batch's images adapt one
// per thread. Stateless between calls (but for the noise cache); safe to call from several
// threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "model/onednn_ops.h"

namespace anoclip::anomaly {

enum class TtaInit {
  kText,    // W = T, b = 0 (the paper)
  kRandom,  // default nn.Linear initialisation (the authors' code)
};

inline constexpr int kMaxTtaSteps = 100;
inline constexpr double kMaxTtaLr = 1.0;
inline constexpr double kMaxTtaSigma = 10.0;

struct TtaOptions {
  int steps = 5;
  double lr = 1e-3;
  double sigma = 0.05;  // std of the Gaussian noise δ added to the patch tokens
  TtaInit init = TtaInit::kText;
  uint64_t seed = 0;
  // The dtype of the adapter's products: float32, bfloat16, or int8 (on the CPU: each operand
  // quantized per product, model::onednn::QuantizeInt8). The weights, the loss, the gradient's
  // element-wise work and AdamW stay float32.
  at::ScalarType compute_dtype = at::kFloat;
  // When set, replaces the Gaussian noise: δ for (step, image index in the batch, shape [M,D]).
  std::function<at::Tensor(int step, int64_t image, at::IntArrayRef shape)> noise;
};

struct TtaResult {
  at::Tensor patch_probs;               // [B,M] abnormal probability with the adapted W, b
  std::vector<std::vector<float>> losses;  // [B][steps], loss before each update
};

// The adapter's noise δ for `step`: N(0, sigma²), float32 on the CPU, drawn in chunks of
// kTtaNoiseChunk elements, each from its own generator seeded from (seed, step, chunk), with the
// chunks spread over libtorch's threads. The same draws whatever the thread count or device the
// adapter runs on; one generator's serial stream took about 3 ns per draw, 0.47 ms per step for
// a ViT-B-16-plus-240 image on 2 cores (docs/performance.md).
inline constexpr int64_t kTtaNoiseChunk = 16384;
at::Tensor DrawTtaNoise(uint64_t seed, int step, double sigma, at::IntArrayRef shape);

// DrawTtaNoise's result, kept for the next call with the same arguments: the draws depend on
// nothing else, and the requests of a line mostly share one seed (the default 0), so each of its
// images reuses the noise instead of drawing it (0.24-0.5 ms per step on 2 cores). The most
// recently used draws are kept within kTtaNoiseCacheBytes (five steps of a ViT-B-16-plus-240
// image are 2.9 MB); safe to call from several threads. The result must not be written to.
inline constexpr size_t kTtaNoiseCacheBytes = size_t{16} << 20;
at::Tensor CachedTtaNoise(uint64_t seed, int step, double sigma, at::IntArrayRef shape);
size_t TtaNoiseCacheBytes();  // held now, for tests

// One image's rows of T [2N,D] (float32), and their int8 copy (model::onednn::QuantizeInt8) for
// the int8 products where the caller keeps one: a class's rows do not change between requests,
// and rounding them took 0.35 ms per adaptation on 2 cores. `int8.values` undefined: the adapter
// rounds the rows itself.
struct AdapterPrompts {
  at::Tensor rows;
  model::onednn::Int8Matrix int8;
};

// rows [2N,D] (float32, CPU) as the int8 products read them: one scale, their largest magnitude.
model::onednn::Int8Matrix RoundPromptsToInt8(const at::Tensor& rows);

class TestTimeAdapter {
 public:
  // InvalidArgument for steps outside 1..100, lr outside (0, 1], sigma outside [0, 10], NaN.
  static absl::StatusOr<TestTimeAdapter> Create(const TtaOptions& options);

  // patches [B,M,D] (unnormalised patch tokens), prompts [B,2N,D] (rows of T), text_features
  // [B,2,D] (t+, t-). All float32 on one device.
  TtaResult Adapt(const at::Tensor& patches, const at::Tensor& prompts,
                  const at::Tensor& text_features) const;
  // The same with each image's rows of T apart (B of them), as the detector keeps them per class.
  TtaResult Adapt(const at::Tensor& patches, const std::vector<AdapterPrompts>& prompts,
                  const at::Tensor& text_features) const;

  const TtaOptions& options() const { return options_; }

 private:
  explicit TestTimeAdapter(TtaOptions options) : options_(std::move(options)) {}
  // patches [M,D], prompt_rows (rows [2N,D]), text_features [2,D] of batch entry `image`; appends
  // the losses.
  at::Tensor AdaptImage(int64_t image, const at::Tensor& patches, const AdapterPrompts& prompt_rows,
                        const at::Tensor& text_features, std::vector<float>& losses) const;
  TtaOptions options_;
};

}  // namespace anoclip::anomaly
