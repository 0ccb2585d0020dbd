#include "anomaly/engine.h"

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "io/state_dict.h"

namespace anoclip::anomaly {
namespace {

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

}  // namespace

absl::StatusOr<std::shared_ptr<Engine>> LoadEngine(const DetectorOptions& options) {
  auto engine = std::make_shared<Engine>();
  engine->options = options;
  ANOCLIP_ASSIGN_OR_RETURN(engine->config,
                           model::ReadOpenClipConfig(options.model_dir + "/open_clip_config.json"));
  ANOCLIP_ASSIGN_OR_RETURN(auto vocab_path, ResolveVocabPath(options));
  ANOCLIP_ASSIGN_OR_RETURN(engine->tokenizer, model::BpeTokenizer::FromFile(vocab_path));
  ANOCLIP_ASSIGN_OR_RETURN(engine->device, ParseDevice(options.device));
  ANOCLIP_ASSIGN_OR_RETURN(engine->dtype, ParseDtype(options.dtype, engine->device));
  ANOCLIP_ASSIGN_OR_RETURN(engine->vision_dtype, ParsePrecision(options.precision, engine->device, engine->dtype));
  if (options.threads < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threads must be >= 0; was ", options.threads));
  }
  // libtorch defaults to one intra-op thread on small machines; use the cores we have.
  const int threads = options.threads > 0 ? options.threads
                                           : std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(threads);

  ANOCLIP_ASSIGN_OR_RETURN(auto weights, io::LoadModelWeights(options.model_dir));
  try {
    engine->model = model::ClipModel(engine->config, model::ParameterInit::kUninitialized);
    ANOCLIP_RETURN_IF_ERROR(model::LoadClipWeights(engine->model, weights));
    engine->model_id = ComputeModelId(engine->config, weights);
    weights.clear();  // release the mapping
    engine->model->to(engine->device, engine->dtype);
    if (engine->vision_dtype != engine->dtype) engine->model->visual->to(engine->vision_dtype);
    engine->model->eval();
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat("loading the model failed: ", error.what_without_backtrace()));
  }
  engine->device_name = engine->device.str();
  return engine;
}

}  // namespace anoclip::anomaly
