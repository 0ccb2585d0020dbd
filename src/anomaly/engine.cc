#include "anomaly/engine.h"

#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/blas_info.h"
#include "common/cpu_info.h"
#include "common/memo_file.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "io/state_dict.h"
#include "model/int8_linear.h"
#include "model/onednn_ops.h"

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

// What tells a file's bytes apart without reading them: writing moves the modification and
// change times (the change time cannot be set back), and a replaced file is another inode.
struct FileIdentity {
  uint64_t device = 0, inode = 0, size = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
  bool operator==(const FileIdentity& o) const {
    return device == o.device && inode == o.inode && size == o.size && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
  }
};

std::optional<FileIdentity> Identify(const std::string& path) {
  struct stat info;
  if (stat(path.c_str(), &info) != 0) return std::nullopt;
  auto ns = [](const timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec; };
  return FileIdentity{static_cast<uint64_t>(info.st_dev), static_cast<uint64_t>(info.st_ino),
                      static_cast<uint64_t>(info.st_size), ns(info.st_mtim), ns(info.st_ctim)};
}

nlohmann::json IdentityJson(const FileIdentity& id) {
  return {{"device", id.device}, {"inode", id.inode}, {"size", id.size}, {"mtime_ns", id.mtime_ns},
          {"ctime_ns", id.ctime_ns}};
}

// The model id remembered for a weight file and config (ComputeModelId reads every byte of the
// weights, most of a start-up's work), valid while the file keeps its identity: one memo per
// weights path and config.
std::string ModelIdMemoPath(const std::string& dir, const std::string& weights_path, const std::string& config_json) {
  std::error_code error;
  const auto absolute = std::filesystem::absolute(weights_path, error);
  return absl::StrCat(dir, "/model-id-", Sha256Hex(absl::StrCat(error ? weights_path : absolute.string(), "\n", config_json), 16),
                      ".json");
}

nlohmann::json ModelIdMemoKey(const FileIdentity& identity) {
  return {{"format", "anoclip-model-id/2"}, {"weights", IdentityJson(identity)}};
}

std::optional<std::string> ReadModelIdMemo(const std::string& path, const FileIdentity& identity) {
  const auto id = ReadMemo(path, ModelIdMemoKey(identity));
  if (!id || !id->is_string()) return std::nullopt;
  const auto text = id->get<std::string>();
  if (text.size() != 16 || text.find_first_not_of("0123456789abcdef") != std::string::npos) return std::nullopt;
  return text;
}

// What `--gemm auto` chose, remembered per CPU, thread count, library builds and product shape:
// timing both libraries took 0.12-0.19 s of a 1.1 s start on a 2-core EPYC (docs/performance.md).
nlohmann::json GemmMemoKey(const model::GemmShape& shape) {
  const CpuInfo cpu = ReadCpuInfo();
  const BlasReport blas = DescribeBlas();
  return {{"format", "anoclip-gemm/1"},
          {"cpu", cpu.model_name},
          {"cpu_flags", Sha256Hex(cpu.flags, 16)},
          {"threads", at::get_num_threads()},
          {"blas", {blas.library, blas.kernels, blas.coretype}},
          {"onednn", model::onednn::LibraryVersion()},
          {"libtorch", TORCH_VERSION},
          {"shape", {shape.m, shape.k, shape.n}}};
}

model::GemmLibrary ChooseGemmLibrary(const std::string& memo_dir, const model::GemmShape& shape) {
  if (memo_dir.empty()) return model::FasterGemmLibrary(shape);
  const auto key = GemmMemoKey(shape);
  const std::string path = absl::StrCat(memo_dir, "/gemm-", Sha256Hex(key.dump(), 16), ".json");
  if (const auto remembered = ReadMemo(path, key); remembered && remembered->is_string()) {
    if (const auto library = model::ParseGemmLibrary(remembered->get<std::string>()); library.ok()) return *library;
  }
  const model::GemmLibrary library = model::FasterGemmLibrary(shape);
  WriteMemo(path, key, model::GemmLibraryName(library));
  return library;
}

// libtorch's intra-op threads: the option; for 0, $OMP_NUM_THREADS where it is a positive number
// (as PyTorch reads it; containers set it to their CPU limit), else every core the machine
// has (libtorch itself would start with one on small machines).
int IntraOpThreads(int option) {
  if (option > 0) return option;
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && value > 0 && value <= 1024) return static_cast<int>(value);
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// The vision tower's dtype for a precision name (int8 keeps float32 activations).
absl::StatusOr<torch::Dtype> ParsePrecision(const std::string& name, const torch::Device& device,
                                            torch::Dtype model_dtype) {
  if (name == "fp32") return model_dtype;
  if (name != "bf16" && name != "int8") {
    return absl::InvalidArgumentError(absl::StrCat("unknown precision \"", name, "\"; expected fp32, bf16 or int8"));
  }
  if (!device.is_cpu()) {
    return absl::InvalidArgumentError(absl::StrCat("precision ", name, " is for the CPU; on CUDA use the dtype"));
  }
  if (name == "int8" && model::SelectInt8Engine().empty()) {
    return absl::FailedPreconditionError("precision int8: this libtorch has no quantized engine (oneDNN or QNNPACK)");
  }
  return name == "bf16" ? torch::kBFloat16 : torch::kFloat32;
}

// The library `--gemm` forces, or none for "auto".
absl::StatusOr<std::optional<model::GemmLibrary>> ParseGemmOption(const std::string& option) {
  if (option == "auto") return std::nullopt;
  auto library = model::ParseGemmLibrary(option);
  if (!library.ok() && library.status().code() == absl::StatusCode::kInvalidArgument) {
    return absl::InvalidArgumentError(absl::StrCat("unknown gemm \"", option, "\"; expected auto, blas or onednn"));
  }
  ANOCLIP_RETURN_IF_ERROR(library.status());
  return *library;
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
  at::set_num_threads(IntraOpThreads(options.threads));
  ANOCLIP_ASSIGN_OR_RETURN(const auto forced_gemm, ParseGemmOption(options.gemm));

  ANOCLIP_ASSIGN_OR_RETURN(const std::string weights_path, io::ModelWeightsPath(options.model_dir));
  const auto identity = Identify(weights_path);
  ANOCLIP_ASSIGN_OR_RETURN(auto weights, io::ReadModelWeights(weights_path));
  // A memo holds only for a file that stayed the same while it was read.
  std::string memo;
  if (!options.memo_dir.empty() && identity && identity == Identify(weights_path)) {
    memo = ModelIdMemoPath(options.memo_dir, weights_path, model::OpenClipConfigToJson(engine->config));
  }
  try {
    engine->model = model::ClipModel(engine->config, model::ParameterInit::kUninitialized);
    ANOCLIP_RETURN_IF_ERROR(model::LoadClipWeights(engine->model, weights));
    const auto remembered = memo.empty() ? std::nullopt : ReadModelIdMemo(memo, *identity);
    engine->model_id = remembered ? *remembered : ComputeModelId(engine->config, weights);
    if (!memo.empty() && !remembered) WriteMemo(memo, ModelIdMemoKey(*identity), engine->model_id);
    weights.clear();  // release the mapping
    engine->model->to(engine->device, engine->dtype);
    if (engine->vision_dtype != engine->dtype) engine->model->visual->to(engine->vision_dtype);
    if (options.precision == "int8") engine->model->visual->transformer->PackInt8();
    engine->model->eval();
    if (engine->device.is_cpu()) {
      // "auto" times the vision tower's largest product at batch 1, a lone request's.
      engine->gemm_library = forced_gemm ? *forced_gemm
                                         : ChooseGemmLibrary(options.memo_dir, model::LargestVisionGemm(engine->config, 1));
      model::SetGemmLibrary(engine->gemm_library);
      // The vision tower runs every request: its float32 weights in oneDNN's blocks (int8 packs
      // its own). The text tower runs once per class and keeps the plain weights.
      if (engine->gemm_library == model::GemmLibrary::kOneDnn && options.precision == "fp32") {
        engine->model->visual->transformer->PackWeightsOnFirstUse();
      }
    }
    // The adapter's products: under --precision int8 where the CPU has int8 dot products, int8
    // through oneDNN whichever GEMM library the rest uses (the weight gradient's in bfloat16:
    // TestTimeAdapter); else bfloat16 under bf16, and under int8 where the CPU multiplies
    // bfloat16 natively; else float32 (docs/performance.md).
    const bool native_bf16 = engine->gemm_library == model::GemmLibrary::kOneDnn && model::onednn::HasNativeBfloat16();
    if (options.precision == "int8" && model::onednn::HasNativeInt8()) {
      engine->tta_dtype = torch::kInt8;
    } else if (engine->vision_dtype == torch::kBFloat16 || (options.precision == "int8" && native_bf16)) {
      engine->tta_dtype = torch::kBFloat16;
    } else {
      engine->tta_dtype = torch::kFloat32;
    }
  } catch (const c10::Error& error) {
    return absl::InternalError(absl::StrCat("loading the model failed: ", error.what_without_backtrace()));
  }
  engine->device_name = engine->device.str();
  return engine;
}

}  // namespace anoclip::anomaly
