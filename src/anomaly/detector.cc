#include "anomaly/detector.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "anomaly/detector_impl.h"
#include "anomaly/scorer.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/stopwatch.h"
#include "io/state_dict.h"
#include "model/clip_model.h"
#include "model/tokenizer.h"

namespace anoclip::anomaly {
namespace F = torch::nn::functional;
namespace {

using Clock = anoclip::SteadyClock;

absl::StatusOr<std::string> ResolveVocabPath(const DetectorOptions& options) {
  std::vector<std::string> candidates;
  if (!options.vocab_path.empty()) {
    candidates.push_back(options.vocab_path);
  } else {
    candidates.push_back(options.model_dir + "/bpe_simple_vocab_16e6.txt.gz");
    if (const char* env = std::getenv("ANOCLIP_VOCAB"); env != nullptr && *env != '\0') {
      candidates.push_back(env);
    }
  }
  for (const auto& path : candidates) {
    std::error_code error;
    if (std::filesystem::is_regular_file(path, error)) return path;
  }
  std::string tried;
  for (const auto& path : candidates) absl::StrAppend(&tried, tried.empty() ? "" : ", ", path);
  return absl::NotFoundError(absl::StrCat(
      "BPE vocabulary bpe_simple_vocab_16e6.txt.gz not found (tried ", tried,
      "); pass --vocab or set ANOCLIP_VOCAB"));
}

absl::StatusOr<torch::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", name, " requested but this libtorch has no usable CUDA"));
    }
    try {
      torch::Device device(name);
      if (device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count())) {
        return absl::InvalidArgumentError(absl::StrCat("no CUDA device ", name));
      }
      return device;
    } catch (const c10::Error&) {
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown device \"", name, "\"; expected cpu or cuda:N"));
}

absl::StatusOr<torch::Dtype> ParseDtype(const std::string& name, const torch::Device& device) {
  torch::Dtype dtype;
  if (name == "float32") {
    dtype = torch::kFloat32;
  } else if (name == "float16") {
    dtype = torch::kFloat16;
  } else if (name == "bfloat16") {
    dtype = torch::kBFloat16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown dtype \"", name, "\"; expected float32, float16 or bfloat16"));
  }
  if (dtype != torch::kFloat32 && device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat(name, " runs on CUDA only; use float32 on cpu"));
  }
  return dtype;
}

// SHA-256 over the config and every weight (name, shape, bytes): identifies the model for
// caches, so text features are never reused across different weights.
std::string ComputeModelId(const model::OpenClipConfig& config, const io::StateDict& weights) {
  Sha256 hash;
  hash.Update(model::OpenClipConfigToJson(config));
  for (const auto& [name, tensor] : weights) {
    hash.Update(absl::StrCat(name, c10::str(tensor.sizes()), c10::toString(tensor.scalar_type())));
    const auto contiguous = tensor.contiguous();
    hash.Update(contiguous.data_ptr(), contiguous.nbytes());
  }
  return hash.HexDigest(8);
}

// The vision tower's dtype for a precision name.
absl::StatusOr<torch::Dtype> ParsePrecision(const std::string& name, const torch::Device& device,
                                            torch::Dtype model_dtype) {
  if (name == "fp32") return model_dtype;
  if (name != "bf16") {
    return absl::InvalidArgumentError(absl::StrCat("unknown precision \"", name, "\"; expected fp32 or bf16"));
  }
  if (!device.is_cpu()) return absl::InvalidArgumentError("precision bf16 is for the CPU; on CUDA use the dtype");
  return torch::kBFloat16;
}

absl::Status CheckTtaOptions(const TtaOptions& options) {
  return TestTimeAdapter::Create(options).status();
}

}  // namespace

Detector::Detector(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Detector::~Detector() = default;

const model::OpenClipConfig& Detector::config() const { return impl_->config; }
const std::string& Detector::model_id() const { return impl_->model_id; }
const std::string& Detector::device_name() const { return impl_->device_name; }

absl::StatusOr<std::unique_ptr<Detector>> Detector::Create(const DetectorOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  ANOCLIP_ASSIGN_OR_RETURN(impl->config,
                           model::ReadOpenClipConfig(options.model_dir + "/open_clip_config.json"));
  ANOCLIP_ASSIGN_OR_RETURN(auto vocab_path, ResolveVocabPath(options));
  ANOCLIP_ASSIGN_OR_RETURN(impl->tokenizer, model::BpeTokenizer::FromFile(vocab_path));
  ANOCLIP_ASSIGN_OR_RETURN(impl->device, ParseDevice(options.device));
  ANOCLIP_ASSIGN_OR_RETURN(impl->dtype, ParseDtype(options.dtype, impl->device));
  ANOCLIP_ASSIGN_OR_RETURN(impl->vision_dtype, ParsePrecision(options.precision, impl->device, impl->dtype));
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 0; was ", options.threads));
  }
  // libtorch defaults to one intra-op thread on small machines; use the cores we have.
  const int threads = options.threads > 0 ? options.threads
                                           : std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(threads);

  ANOCLIP_ASSIGN_OR_RETURN(auto weights, io::LoadModelWeights(options.model_dir));
  try {
    impl->model = model::ClipModel(impl->config);
    ANOCLIP_RETURN_IF_ERROR(model::LoadClipWeights(impl->model, weights));
    impl->model_id = ComputeModelId(impl->config, weights);
    weights.clear();  // release the mapping
    impl->model->to(impl->device, impl->dtype);
    if (impl->vision_dtype != impl->dtype) impl->model->visual->to(impl->vision_dtype);
    impl->model->eval();
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat("loading the model failed: ", error.what_without_backtrace()));
  }
  impl->device_name = impl->device.str();
  return std::unique_ptr<Detector>(new Detector(std::move(impl)));
}

absl::StatusOr<TextFeatures> Detector::EncodeText(const PromptSpec& spec, const TextBuildControl& control) const {
  ANOCLIP_ASSIGN_OR_RETURN(auto prompts, BuildPromptSet(spec, control.limits));
  if (control.chunk_rows < 1) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_rows must be positive; was ", control.chunk_rows));
  }
  const int context = impl_->config.text.context_length;
  const int64_t count = static_cast<int64_t>(prompts.normal.size());
  std::vector<int64_t> ids;
  ids.reserve(2 * count * context);
  for (const auto* list : {&prompts.normal, &prompts.abnormal}) {
    for (const auto& text : *list) {
      auto row = impl_->tokenizer->EncodeForModel(text, context);
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
      chunks.push_back(impl_->model->EncodeText(tokens.narrow(0, row, rows).to(impl_->device)).to(torch::kFloat32));
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
  const auto& vision = impl_->config.vision;
  if (!images.defined() || images.dim() != 4 || images.size(1) != 3 ||
      images.size(2) != vision.image_size || images.size(3) != vision.image_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "images must be [B,3,%d,%d]; got %s", vision.image_size, vision.image_size,
        images.defined() ? c10::str(images.sizes()) : std::string("undefined")));
  }
  const int64_t batch = images.size(0);
  if (batch == 0) return std::vector<Detection>{};
  if (static_cast<int64_t>(text.size()) != batch) {
    return absl::InvalidArgumentError(absl::StrCat("need one text entry per image; got ", text.size(),
                                                   " for ", batch, " images"));
  }
  if (options.size() != 1 && static_cast<int64_t>(options.size()) != batch) {
    return absl::InvalidArgumentError("options must hold one entry or one per image");
  }
  auto option = [&](int64_t i) -> const DetectOptions& { return options.size() == 1 ? options[0] : options[i]; };
  const int64_t embed = impl_->config.embed_dim;
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

  try {
    model::VisionRequest request{false, false};
    for (int64_t i = 0; i < batch; ++i) {
      const auto& o = option(i);
      request.local_aware_patches |= o.path == TokenPath::kLocalAware || o.keep_tokens;
      request.plain_patches |= o.path == TokenPath::kPlainClip || o.keep_tokens;
    }

    torch::NoGradGuard no_grad;
    auto start = Clock::now();
    auto output = impl_->model->EncodeImage(impl_->ToModelInput(images), request);
    const double encode_seconds = SecondsSince(start);

    std::vector<at::Tensor> feature_rows;
    for (int64_t i = 0; i < batch; ++i) feature_rows.push_back(text[i]->features.to(impl_->device));
    const auto features = torch::stack(feature_rows);  // [B,2,D]
    const auto cls = output.image_embedding.to(torch::kFloat32);
    auto image_scores = StateProbabilities(cls.unsqueeze(1), features).select(-1, 1).squeeze(1);  // [B]

    // 22-view image scores: the other 21 views need only the image token.
    std::vector<int64_t> multi_view;
    for (int64_t i = 0; i < batch; ++i) {
      if (option(i).views == kDetectionViews) multi_view.push_back(i);
    }
    if (!multi_view.empty()) {
      auto index = torch::tensor(multi_view, torch::kLong);
      auto views = DetectionViews(images.index_select(0, index)).narrow(0, 1, kDetectionViews - 1);
      const int64_t n = static_cast<int64_t>(multi_view.size());
      auto flat = views.reshape({-1, 3, vision.image_size, vision.image_size});
      auto view_cls = impl_->model->EncodeImage(impl_->ToModelInput(flat), {false, false})
                          .image_embedding.to(torch::kFloat32)
                          .view({kDetectionViews - 1, n, embed});
      auto view_features = features.index_select(0, index.to(impl_->device));  // [n,2,D]
      auto view_scores = StateProbabilities(view_cls.transpose(0, 1), view_features).select(-1, 1);  // [n,21]
      auto mean = (view_scores.sum(1) + image_scores.index_select(0, index.to(impl_->device))) / kDetectionViews;
      image_scores = image_scores.index_copy(0, index.to(impl_->device), mean);
    }

    std::vector<at::Tensor> patch_rows;
    for (int64_t i = 0; i < batch; ++i) {
      const auto& tokens = option(i).path == TokenPath::kLocalAware ? output.local_aware_patches
                                                                    : output.plain_patches;
      patch_rows.push_back(tokens[i]);
    }
    const auto patches = torch::stack(patch_rows).to(torch::kFloat32);  // [B,M,D]
    const auto patch_probs = StateProbabilities(patches, features).select(-1, 1);  // [B,M]
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
      d.encode_seconds = encode_seconds / batch;
      if (option(i).keep_tokens) {
        d.cls_embedding = cls[i].cpu();
        d.vv_tokens = output.local_aware_patches[i].to(torch::kFloat32).cpu();
        d.qkv_tokens = output.plain_patches[i].to(torch::kFloat32).cpu();
      }
    }

    // Test-time adaptation, batched over images that share their adapter settings and prompt count.
    std::map<std::string, std::vector<int64_t>> groups;
    for (int64_t i = 0; i < batch; ++i) {
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
      if (impl_->vision_dtype == torch::kBFloat16) tta_options.compute_dtype = torch::kBFloat16;
      ANOCLIP_ASSIGN_OR_RETURN(auto adapter, TestTimeAdapter::Create(tta_options));
      auto tta_start = Clock::now();
      auto index = torch::tensor(members, torch::kLong).to(impl_->device);
      std::vector<at::Tensor> prompt_rows;
      for (int64_t i : members) prompt_rows.push_back(text[i]->prompts.to(impl_->device));
      auto result = adapter.Adapt(patches.index_select(0, index), torch::stack(prompt_rows),
                                  features.index_select(0, index));
      auto adapted_maps = AnomalyMap(result.patch_probs.detach(), vision.grid(), vision.image_size).cpu();
      auto adapted_probs = result.patch_probs.detach().cpu();
      const double seconds = SecondsSince(tta_start) / members.size();
      for (size_t j = 0; j < members.size(); ++j) {
        auto& d = detections[members[j]];
        d.patch_probs = adapted_probs[j];
        d.anomaly_map = adapted_maps[j];
        d.tta_losses = result.losses[j];
        d.tta_seconds = seconds;
      }
    }
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
