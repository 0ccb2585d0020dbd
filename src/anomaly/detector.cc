#include "anomaly/detector.h"

#include <torch/torch.h>

#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "anomaly/engine.h"
#include "anomaly/scorer.h"
#include "common/status_macros.h"
#include "common/stopwatch.h"
#include "model/clip_model.h"
#include "model/tokenizer.h"

namespace anoclip::anomaly {
namespace F = torch::nn::functional;
namespace {

using Clock = anoclip::SteadyClock;

absl::Status CheckTtaOptions(const TtaOptions& options) {
  return TestTimeAdapter::Create(options).status();
}

// Detect's options for image i: one entry for all, or one per image.
struct OptionsOf {
  const std::vector<DetectOptions>& options;
  const DetectOptions& operator()(int64_t i) const { return options.size() == 1 ? options[0] : options[i]; }
};

// Shapes, counts and every option of a Detect call, before any work.
absl::Status CheckBatch(const Engine& engine, const at::Tensor& images,
                        const std::vector<std::shared_ptr<const TextFeatures>>& text,
                        const std::vector<DetectOptions>& options) {
  const auto& vision = engine.config.vision;
  if (!images.defined() || images.dim() != 4 || images.size(1) != 3 ||
      images.size(2) != vision.image_size || images.size(3) != vision.image_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "images must be [B,3,%d,%d]; got %s", vision.image_size, vision.image_size,
        images.defined() ? c10::str(images.sizes()) : std::string("undefined")));
  }
  const int64_t batch = images.size(0);
  if (batch == 0) return absl::OkStatus();
  if (static_cast<int64_t>(text.size()) != batch) {
    return absl::InvalidArgumentError(absl::StrCat("need one text entry per image; got ", text.size(),
                                                   " for ", batch, " images"));
  }
  if (options.size() != 1 && static_cast<int64_t>(options.size()) != batch) {
    return absl::InvalidArgumentError("options must hold one entry or one per image");
  }
  const OptionsOf option{options};
  const int64_t embed = engine.config.embed_dim;
  for (int64_t i = 0; i < batch; ++i) {
    const auto& o = option(i);
    if (o.views != 1 && o.views != kDetectionViews) {
      return absl::InvalidArgumentError(absl::StrCat("views must be 1 or 22; was ", o.views));
    }
    if (o.tta) ANOCLIP_RETURN_IF_ERROR(CheckTtaOptions(o.tta_options));
    if (text[i] == nullptr || !text[i]->features.defined() || text[i]->features.dim() != 2 ||
        text[i]->features.size(0) != 2 || text[i]->features.size(1) != embed) {
      return absl::InvalidArgumentError(absl::StrCat("text features of image ", i, " must be [2,", embed, "]"));
    }
  }
  return absl::OkStatus();
}

// The vision forward of a batch: its image embeddings and, per image, the patch tokens of the
// path it asked for (docs/algorithm.md §4).
struct Encoded {
  model::VisionOutput output;
  at::Tensor cls;      // [B,D] float32
  at::Tensor patches;  // [B,M,D] float32, local-aware or plain per image
  double seconds = 0;
};

Encoded Encode(Engine& engine, const at::Tensor& images, const OptionsOf& option) {
  const int64_t batch = images.size(0);
  model::VisionRequest request{false, false};
  for (int64_t i = 0; i < batch; ++i) {
    const auto& o = option(i);
    request.local_aware_patches |= o.path == TokenPath::kLocalAware || o.keep_tokens;
    request.plain_patches |= o.path == TokenPath::kPlainClip || o.keep_tokens;
  }
  Encoded encoded;
  const auto start = Clock::now();
  encoded.output = engine.model->EncodeImage(engine.ToModelInput(images), request);
  encoded.seconds = SecondsSince(start);
  encoded.cls = encoded.output.image_embedding.to(torch::kFloat32);
  std::vector<at::Tensor> patch_rows;
  for (int64_t i = 0; i < batch; ++i) {
    const auto& tokens = option(i).path == TokenPath::kLocalAware ? encoded.output.local_aware_patches
                                                                  : encoded.output.plain_patches;
    patch_rows.push_back(tokens[i]);
  }
  encoded.patches = torch::stack(patch_rows).to(torch::kFloat32);
  return encoded;
}

// Image scores [B]: the abnormal probability of the image embedding, averaged over 22 views
// for the images that ask for them (the other 21 views need only the image token).
at::Tensor ScoreImages(Engine& engine, const at::Tensor& images, const Encoded& encoded,
                       const at::Tensor& features, const OptionsOf& option) {
  const auto& vision = engine.config.vision;
  const int64_t batch = images.size(0), embed = engine.config.embed_dim;
  auto image_scores = StateProbabilities(encoded.cls.unsqueeze(1), features).select(-1, 1).squeeze(1);  // [B]
  std::vector<int64_t> multi_view;
  for (int64_t i = 0; i < batch; ++i) {
    if (option(i).views == kDetectionViews) multi_view.push_back(i);
  }
  if (multi_view.empty()) return image_scores;
  auto index = torch::tensor(multi_view, torch::kLong);
  auto views = DetectionViews(images.index_select(0, index)).narrow(0, 1, kDetectionViews - 1);
  const int64_t n = static_cast<int64_t>(multi_view.size());
  auto flat = views.reshape({-1, 3, vision.image_size, vision.image_size});
  auto view_cls = engine.model->EncodeImage(engine.ToModelInput(flat), {false, false})
                      .image_embedding.to(torch::kFloat32)
                      .view({kDetectionViews - 1, n, embed});
  auto device_index = index.to(engine.device);
  auto view_features = features.index_select(0, device_index);  // [n,2,D]
  auto view_scores = StateProbabilities(view_cls.transpose(0, 1), view_features).select(-1, 1);  // [n,21]
  auto mean = (view_scores.sum(1) + image_scores.index_select(0, device_index)) / kDetectionViews;
  return image_scores.index_copy(0, device_index, mean);
}

// The zero-shot answer per image: its score, patch probabilities and anomaly map.
std::vector<Detection> ScorePatches(const Engine& engine, const Encoded& encoded, const at::Tensor& features,
                                    const at::Tensor& image_scores, const OptionsOf& option) {
  const auto& vision = engine.config.vision;
  const int64_t batch = encoded.patches.size(0);
  const auto patch_probs = StateProbabilities(encoded.patches, features).select(-1, 1);  // [B,M]
  const auto maps = AnomalyMap(patch_probs, vision.grid(), vision.image_size);
  std::vector<Detection> detections(batch);
  const auto scores_cpu = image_scores.cpu();
  const auto probs_cpu = patch_probs.cpu();
  const auto maps_cpu = maps.cpu();
  for (int64_t i = 0; i < batch; ++i) {
    auto& d = detections[i];
    d.image_score = scores_cpu[i].item<float>();
    d.zero_shot_patch_probs = d.patch_probs = probs_cpu[i];
    d.zero_shot_anomaly_map = d.anomaly_map = maps_cpu[i];
    d.encode_seconds = encoded.seconds / batch;
    if (option(i).keep_tokens) {
      d.cls_embedding = encoded.cls[i].cpu();
      d.vv_tokens = encoded.output.local_aware_patches[i].to(torch::kFloat32).cpu();
      d.qkv_tokens = encoded.output.plain_patches[i].to(torch::kFloat32).cpu();
    }
  }
  return detections;
}

// Test-time adaptation (AnoCLIP+), batched over images that share their adapter settings and
// prompt count; replaces the patch probabilities and maps of those images.
absl::Status Adapt(const Engine& engine, const at::Tensor& patches, const at::Tensor& features,
                   const std::vector<std::shared_ptr<const TextFeatures>>& text, const OptionsOf& option,
                   std::vector<Detection>& detections) {
  const auto& vision = engine.config.vision;
  std::map<std::string, std::vector<int64_t>> groups;
  for (int64_t i = 0; i < static_cast<int64_t>(detections.size()); ++i) {
    const auto& o = option(i);
    if (!o.tta) continue;
    const auto& t = o.tta_options;
    // %a prints doubles exactly: settings that differ in any bit never share an adapter.
    std::string key = absl::StrFormat("%d/%a/%a/%d/%d/%d", t.steps, t.lr, t.sigma, static_cast<int>(t.init),
                                      t.seed, text[i]->prompts.size(0));
    if (t.noise) absl::StrAppend(&key, "/noise", i);  // injected noise: adapt on its own
    groups[key].push_back(i);
  }
  for (const auto& [key, members] : groups) {
    auto tta_options = option(members.front()).tta_options;
    tta_options.compute_dtype = engine.tta_dtype;
    ANOCLIP_ASSIGN_OR_RETURN(auto adapter, TestTimeAdapter::Create(tta_options));
    const auto start = Clock::now();
    auto index = torch::tensor(members, torch::kLong).to(engine.device);
    std::vector<AdapterPrompts> prompts;
    for (int64_t i : members) prompts.push_back(text[i]->ForAdapter(engine.tta_dtype, engine.device));
    auto result = adapter.Adapt(patches.index_select(0, index), prompts, features.index_select(0, index));
    auto adapted_maps = AnomalyMap(result.patch_probs.detach(), vision.grid(), vision.image_size).cpu();
    auto adapted_probs = result.patch_probs.detach().cpu();
    const double seconds = SecondsSince(start) / members.size();
    for (size_t j = 0; j < members.size(); ++j) {
      auto& d = detections[members[j]];
      d.patch_probs = adapted_probs[j];
      d.anomaly_map = adapted_maps[j];
      d.tta_losses = result.losses[j];
      d.tta_seconds = seconds;
    }
  }
  return absl::OkStatus();
}

}  // namespace

AdapterPrompts TextFeatures::ForAdapter(at::ScalarType tta_dtype, const at::Device& device) const {
  return {prompts.to(device), tta_dtype == at::kChar ? PromptsInt8() : model::onednn::Int8Matrix{}};
}

const model::onednn::Int8Matrix& TextFeatures::PromptsInt8() const {
  std::call_once(rounded_prompts->once, [this] { rounded_prompts->matrix = RoundPromptsToInt8(prompts); });
  return rounded_prompts->matrix;
}

Detector::Detector(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}
Detector::~Detector() = default;

const model::OpenClipConfig& Detector::config() const { return engine_->config; }
const std::string& Detector::model_id() const { return engine_->model_id; }
const std::string& Detector::device_name() const { return engine_->device_name; }
const char* Detector::gemm_library() const { return model::GemmLibraryName(engine_->gemm_library); }

bool Detector::PackDeferredVisionWeights() const {
  torch::NoGradGuard no_grad;
  return engine_->model->visual->transformer->PackDeferredWeights();
}

absl::StatusOr<std::unique_ptr<Detector>> Detector::Create(const DetectorOptions& options) {
  ANOCLIP_ASSIGN_OR_RETURN(auto engine, LoadEngine(options));
  return FromEngine(std::move(engine));
}

std::unique_ptr<Detector> Detector::FromEngine(std::shared_ptr<Engine> engine) {
  return std::unique_ptr<Detector>(new Detector(std::move(engine)));
}

absl::StatusOr<TextFeatures> Detector::EncodeText(const PromptSpec& spec, const TextBuildControl& control) const {
  ANOCLIP_ASSIGN_OR_RETURN(auto prompts, BuildPromptSet(spec, control.limits));
  if (control.chunk_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_rows must be positive; was ", control.chunk_rows));
  }
  const int context = engine_->config.text.context_length;
  const int64_t count = static_cast<int64_t>(prompts.normal.size());
  std::vector<int64_t> ids;
  ids.reserve(2 * count * context);
  for (const auto* list : {&prompts.normal, &prompts.abnormal}) {
    for (const auto& text : *list) {
      auto row = engine_->tokenizer->EncodeForModel(text, context);
      ids.insert(ids.end(), row.begin(), row.end());
    }
  }
  try {
    torch::NoGradGuard no_grad;
    auto tokens = torch::from_blob(ids.data(), {2 * count, context}, torch::kLong);
    std::vector<at::Tensor> chunks;
    for (int64_t row = 0; row < 2 * count; row += control.chunk_rows) {
      if (control.check) ANOCLIP_RETURN_IF_ERROR(control.check());
      const int64_t rows = std::min(control.chunk_rows, 2 * count - row);
      chunks.push_back(
          engine_->model->EncodeText(tokens.narrow(0, row, rows).to(engine_->device)).to(torch::kFloat32));
    }
    auto encoded = torch::cat(chunks);  // [2N,D]
    auto normal = encoded.narrow(0, 0, count);
    auto abnormal = encoded.narrow(0, count, count);
    auto unit = [](const at::Tensor& x) { return F::normalize(x, F::NormalizeFuncOptions().dim(-1)); };
    TextFeatures features;
    features.features = unit(torch::stack({normal.mean(0), abnormal.mean(0)}));
    features.prompts = unit(encoded).contiguous();
    return features;
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat("text encoding failed: ", error.what_without_backtrace()));
  } catch (const std::exception& error) {
    return absl::InternalError(absl::StrCat("text encoding failed: ", error.what()));
  }
}

absl::StatusOr<std::vector<Detection>> Detector::Detect(
    const at::Tensor& images, const std::vector<std::shared_ptr<const TextFeatures>>& text,
    const std::vector<DetectOptions>& options) const {
  ANOCLIP_RETURN_IF_ERROR(CheckBatch(*engine_, images, text, options));
  const int64_t batch = images.size(0);
  if (batch == 0) return std::vector<Detection>{};
  const OptionsOf option{options};
  try {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> feature_rows;
    for (int64_t i = 0; i < batch; ++i) feature_rows.push_back(text[i]->features.to(engine_->device));
    const auto features = torch::stack(feature_rows);  // [B,2,D]

    const auto encoded = Encode(*engine_, images, option);
    const auto image_scores = ScoreImages(*engine_, images, encoded, features, option);
    auto detections = ScorePatches(*engine_, encoded, features, image_scores, option);
    ANOCLIP_RETURN_IF_ERROR(Adapt(*engine_, encoded.patches, features, text, option, detections));
    return detections;
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat("detection failed: ", error.what_without_backtrace()));
  } catch (const std::exception& error) {
    // Anything else the libraries throw (std::runtime_error from a numeric edge case) fails this
    // batch, never the process.
    return absl::InternalError(absl::StrCat("detection failed: ", error.what()));
  }
}

}  // namespace anoclip::anomaly
