// The AnoCLIP engine behind one small header: loads an OpenCLIP model directory, builds text
// features for a prompt spec, and scores batches of preprocessed images (mixed classes allowed).
//
// Thread model: all methods are const and safe to call from several threads; libtorch's own
// intra-op pool does the parallel work. Nothing here knows about gRPC.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "anomaly/prompt_ensemble.h"
#include "anomaly/test_time_adapter.h"
#include "model/open_clip_config.h"

namespace anoclip::anomaly {

struct Engine;  // anomaly/engine.h

struct DetectorOptions {
  std::string model_dir;         // holds open_clip_config.json and the weights
  std::string vocab_path;        // empty: <model_dir>/bpe_simple_vocab_16e6.txt.gz, then $ANOCLIP_VOCAB
  std::string device = "cpu";    // "cpu" or "cuda:N"
  std::string dtype = "float32"; // "float32"; "float16"/"bfloat16" on CUDA only
  int threads = 0;               // intra-op threads; 0 = $OMP_NUM_THREADS if set, else all cores
  // CPU only: "fp32"; "bf16" for the vision tower and the TTA adapter's products (oneDNN's
  // bfloat16 kernels; fast where the CPU has AVX512-BF16 or AMX); "int8" for the vision tower's
  // projections and MLPs (dynamic int8 through libtorch's quantized engine, fast with VNNI or
  // AMX; the adapter stays float32). The text tower stays float32 in every mode, so cached text
  // features serve all three.
  std::string precision = "fp32";
  // CPU float32 products (docs/performance.md): "auto" times the BLAS and oneDNN on the model's
  // largest product at load and takes the faster for the process; "blas" or "onednn" forces one.
  std::string gemm = "auto";
  // Where start-up remembers what is slow to compute (src/common/memo_file.h): the model id (a
  // hash of every weight) per weight file, keyed by the file's identity (inode, size,
  // modification and change times), so that a restart need not read all the weights to know it;
  // and "auto"'s GEMM library per CPU, thread count and library builds, so that a restart need
  // not time them. Empty: both computed at every load.
  std::string memo_dir;
};

// The text side for one class: rows t+ and t- and the 2N prompt rows (docs/algorithm.md §3).
struct TextFeatures {
  at::Tensor features;  // [2,D] float32, on the detector's device
  at::Tensor prompts;   // [2N,D] float32, normal rows first

  // The prompts as the adapter takes them on `device` with its products in `tta_dtype`: under
  // int8 with their int8 copy (PromptsInt8).
  AdapterPrompts ForAdapter(at::ScalarType tta_dtype, const at::Device& device) const;
  // The prompts rounded for --precision int8's adapter (RoundPromptsToInt8, CPU): by the first
  // call, then kept for the class's later requests. Copies of these features share it; safe to
  // call from several threads.
  const model::onednn::Int8Matrix& PromptsInt8() const;
  struct RoundedPrompts {
    std::once_flag once;
    model::onednn::Int8Matrix matrix;
  };
  std::shared_ptr<RoundedPrompts> rounded_prompts = std::make_shared<RoundedPrompts>();
};

enum class TokenPath { kLocalAware, kPlainClip };

struct DetectOptions {
  int views = 1;                       // 1 or 22 (image score only)
  TokenPath path = TokenPath::kLocalAware;
  bool tta = false;
  TtaOptions tta_options;
  bool keep_tokens = false;            // fill Detection's token tensors (for --dump)
};

struct Detection {
  float image_score = 0.f;
  at::Tensor patch_probs;     // [M] abnormal probability per patch (after TTA when enabled)
  at::Tensor anomaly_map;     // [S,S] at model resolution, CPU float32 (after TTA when enabled)
  at::Tensor zero_shot_patch_probs;  // [M] before TTA (== patch_probs without TTA)
  at::Tensor zero_shot_anomaly_map;  // [S,S] before TTA
  std::vector<float> tta_losses;     // one per TTA step
  // Filled when keep_tokens: [D], [M,D], [M,D].
  at::Tensor cls_embedding, vv_tokens, qkv_tokens;
  double encode_seconds = 0;  // this image's share of the batch's vision forward
  double tta_seconds = 0;
};

class Detector {
 public:
  static absl::StatusOr<std::unique_ptr<Detector>> Create(const DetectorOptions& options);
  // On an engine already loaded (anomaly/engine.h), which others may share, e.g. a benchmark.
  static std::unique_ptr<Detector> FromEngine(std::shared_ptr<Engine> engine);
  ~Detector();

  const model::OpenClipConfig& config() const;
  // Stable identifier of the loaded weights (config + tensor content hash).
  const std::string& model_id() const;
  const std::string& device_name() const;
  // The library running the CPU float32 products: "blas" or "onednn" (DetectorOptions::gemm).
  const char* gemm_library() const;

  // Packs the vision tower's weights for oneDNN where the engine deferred that to their first use
  // (float32 on oneDNN, model::TransformerImpl::PackWeightsOnFirstUse): 1.3-1.6 s in the server
  // on a 2-core virtual machine, which it spends once it is SERVING rather than in its first
  // request. Safe beside Detect: a forward that reaches a block being packed waits for it. False
  // where nothing was deferred.
  bool PackDeferredVisionWeights() const;

  // Encodes the spec's prompts `chunk_rows` at a time (bounding memory), running `check`
  // between chunks: its error (cancelled, deadline passed) stops the build and is returned.
  struct TextBuildControl {
    PromptLimits limits;
    int64_t chunk_rows = 1024;  // the default spec's 924 rows run as one chunk
    std::function<absl::Status()> check;
  };
  absl::StatusOr<TextFeatures> EncodeText(const PromptSpec& spec, const TextBuildControl& control) const;
  absl::StatusOr<TextFeatures> EncodeText(const PromptSpec& spec) const { return EncodeText(spec, {}); }

  // `images`: [B,3,S,S] float32 CPU, preprocessed. `text[i]` and `options[i]` belong to image i
  // (`options` may hold one entry for all). One vision forward for the whole batch.
  absl::StatusOr<std::vector<Detection>> Detect(
      const at::Tensor& images, const std::vector<std::shared_ptr<const TextFeatures>>& text,
      const std::vector<DetectOptions>& options) const;

 private:
  explicit Detector(std::shared_ptr<Engine> engine);
  std::shared_ptr<Engine> engine_;
};

}  // namespace anoclip::anomaly
