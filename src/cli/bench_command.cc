#include "common/arguments.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "anomaly/detector.h"
#include "anomaly/engine.h"
#include "anomaly/test_time_adapter.h"
#include "absl/strings/str_cat.h"
#include "cli/gemm_rate.h"
#include "common/blas_info.h"
#include "common/cpu_info.h"
#include "model/model_flops.h"

namespace anoclip::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  int runs = 3;       // timed runs per vision/TTA figure (median)
  int text_runs = 1;  // a full-context class takes tens of seconds on a CPU
  bool json = false;
};

double Seconds(const std::function<void()>& fn) {
  auto start = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// A "VmHWM"/"VmRSS" line of /proc/self/status in MB, 0 where absent.
double ProcessMemoryMb(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::strtod(line.c_str() + field.size() + 1, nullptr) / 1024.0;
  }
  return 0;
}

// Pearson correlation of two maps.
double Correlation(const at::Tensor& a, const at::Tensor& b) {
  const auto x = a.flatten().to(torch::kDouble), y = b.flatten().to(torch::kDouble);
  const auto dx = x - x.mean(), dy = y - y.mean();
  return ((dx * dy).sum() / (dx.norm() * dy.norm())).item<double>();
}

constexpr char kUsage[] =
    "usage: anoclip bench --model DIR [--vocab FILE] [--device cpu|cuda:N] [--threads N]\n"
    "                     [--precision fp32|bf16|int8] [--gemm auto|blas|onednn] [--runs N (>=3)] [--text-runs N]\n"
    "                     [--parts vision,text,tta,detect,precision,batches] [--json]\n"
    "default parts: vision,text,tta,detect,precision\n";

}  // namespace

int RunBenchCommand(const std::vector<std::string>& words) {
  auto value_flags = EngineValueFlags();
  value_flags.insert({"runs", "text-runs", "parts"});
  auto args = Arguments::Parse(words, value_flags, {"json", "help"});
  if (!args.ok() || args->Flag("help")) {
    if (!args.ok()) std::cerr << "anoclip bench: " << args.status().message() << "\n";
    std::cerr << kUsage;
    return args.ok() ? 0 : 2;
  }
  auto runs = args->Int("runs", 3, 3, 1000);
  auto text_runs = args->Int("text-runs", 1, 1, 1000);
  if (!runs.ok() || !text_runs.ok()) {
    std::cerr << "anoclip bench: " << (runs.ok() ? text_runs.status() : runs.status()).message() << "\n";
    return 2;
  }
  BenchOptions options;
  options.runs = static_cast<int>(*runs);
  options.text_runs = static_cast<int>(*text_runs);
  options.json = args->Flag("json");
  const std::string parts = args->String("parts", "vision,text,tta,detect,precision");
  auto wants = [&parts](const std::string& part) { return parts.find(part) != std::string::npos; };
  auto detector_options = DetectorOptionsFromArguments(*args);
  if (!detector_options.ok()) {
    std::cerr << "anoclip bench: " << detector_options.status().message() << "\n";
    return 2;
  }
  // One engine: the Detector runs on it, and the tower timings below call it directly.
  const auto load_start = Clock::now();
  auto engine = anomaly::LoadEngine(*detector_options);
  const double load_s = std::chrono::duration<double>(Clock::now() - load_start).count();
  const double rss_after_load_mb = ProcessMemoryMb("VmRSS"), hwm_after_load_mb = ProcessMemoryMb("VmHWM");
  if (!engine.ok()) {
    std::cerr << "anoclip bench: " << engine.status().message() << "\n";
    return 1;
  }
  const auto detector = anomaly::Detector::FromEngine(*engine);
  const anomaly::Engine& loaded = **engine;
  auto model = loaded.model;
  const auto& config = loaded.config;
  const int64_t size = config.vision.image_size;
  const bool cuda = loaded.device.is_cuda();
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };

  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  nlohmann::ordered_json out;

  // Vision: plain CLIP and AnoCLIP at batch 1 and 8, all alternated inside each run, with the
  // GEMM rate on the forward's largest product shape at each batch size, so drift hits all alike
  // and efficiency and the batch-8 over batch-1 time are same-run ratios.
  std::map<std::string, std::vector<double>> vision;
  const model::VisionRequest clip{false, true}, anoclip{true, false};
  if (wants("vision")) {
    const std::vector<int64_t> batches = {1, 8};
    std::map<int64_t, at::Tensor> images;
    std::map<int64_t, GemmRate> gemms;
    for (const int64_t batch : batches) {
      images[batch] = loaded.ToModelInput(torch::randn({batch, 3, size, size}));
      gemms.emplace(batch, GemmRate(model::LargestVisionGemm(config, batch)));
    }
    for (int run = -1; run < options.runs; ++run) {  // run -1 warms up
      for (const int64_t batch : batches) {
        const std::string b = ".b" + std::to_string(batch);
        const int gemm_reps = static_cast<int>(std::max<int64_t>(1, 8 / batch));
        const double clip_s = Seconds([&] { model->EncodeImage(images[batch], clip); sync(); });
        const double anoclip_s = Seconds([&] { model->EncodeImage(images[batch], anoclip); sync(); });
        const GemmRate& gemm = gemms.at(batch);
        const double blas = gemm.BlasGflops(gemm_reps), onednn_sgemm = gemm.OneDnnSgemmGflops(gemm_reps),
                     onednn_linear = gemm.OneDnnLinearGflops(gemm_reps);
        if (run < 0) continue;
        vision["vision.clip" + b].push_back(clip_s / batch);
        vision["vision.anoclip" + b].push_back(anoclip_s / batch);
        vision["sgemm_gflops." + GemmRate::BlasName() + b].push_back(blas);
        vision["sgemm_gflops.onednn" + b].push_back(onednn_sgemm);
        vision["sgemm_gflops.onednn_linear" + b].push_back(onednn_linear);
      }
    }
  }
  if (wants("vision")) {
    const double clip_flops = model::VisionForwardFlops(config, clip.local_aware_patches, clip.plain_patches);
    const double anoclip_flops = model::VisionForwardFlops(config, anoclip.local_aware_patches, anoclip.plain_patches);
    out["vision.clip.gflop_per_image"] = clip_flops / 1e9;
    out["vision.anoclip.gflop_per_image"] = anoclip_flops / 1e9;
    for (const char* b : {".b1", ".b8"}) {
      const double clip_s = Median(vision[std::string("vision.clip") + b]);
      const double anoclip_s = Median(vision[std::string("vision.anoclip") + b]);
      out[std::string("vision.clip") + b] = clip_s;
      out[std::string("vision.anoclip") + b] = anoclip_s;
      out[std::string("vision.clip.gflops") + b] = clip_flops / clip_s / 1e9;
      out[std::string("vision.anoclip.gflops") + b] = anoclip_flops / anoclip_s / 1e9;
      const auto shape = model::LargestVisionGemm(config, b == std::string(".b1") ? 1 : 8);
      out[std::string("sgemm_shape") + b] = absl::StrCat(shape.m, "x", shape.k, "x", shape.n);
      std::string best_library;
      double best = 0;
      for (const std::string library : {GemmRate::BlasName(), std::string("onednn"), std::string("onednn_linear")}) {
        const double rate = Median(vision["sgemm_gflops." + library + b]);
        out["sgemm_gflops." + library + b] = rate;
        if (rate > best) best = rate, best_library = library;
      }
      out[std::string("sgemm_gflops") + b] = best;
      out[std::string("sgemm_library") + b] = best_library;
      out[std::string("ratio.anoclip_over_sgemm") + b] = anoclip_flops / anoclip_s / 1e9 / best;
    }
  }

  // Batch sizes: the AnoCLIP forward per image at each, alternated within each run, so that an
  // operator can set --max-batch to the fastest (on a CPU larger is not always faster).
  if (wants("batches")) {
    const std::vector<int64_t> batches = {1, 2, 4, 8, 12, 16};
    std::map<int64_t, std::vector<double>> per_image;
    std::map<int64_t, at::Tensor> inputs;
    for (const int64_t batch : batches) inputs[batch] = loaded.ToModelInput(torch::randn({batch, 3, size, size}));
    for (int run = -1; run < options.runs; ++run) {  // run -1 warms up
      for (const int64_t batch : batches) {
        const double seconds = Seconds([&] { model->EncodeImage(inputs[batch], anoclip); sync(); });
        if (run >= 0) per_image[batch].push_back(seconds / batch);
      }
    }
    int64_t fastest = batches.front();
    for (const int64_t batch : batches) {
      out["batches.anoclip.b" + std::to_string(batch)] = Median(per_image[batch]);
      if (Median(per_image[batch]) < Median(per_image[fastest])) fastest = batch;
    }
    out["batches.fastest"] = fastest;
  }

  // Text: one class's 2N prompts, truncated at the longest prompt versus all positions.
  anomaly::PromptSpec spec;
  spec.class_name = "bottle";
  auto prompts = anomaly::BuildPromptSet(spec);
  std::vector<int64_t> ids;
  for (const auto* list : {&prompts->normal, &prompts->abnormal}) {
    for (const auto& text : *list) {
      auto row = loaded.tokenizer->EncodeForModel(text, config.text.context_length);
      ids.insert(ids.end(), row.begin(), row.end());
    }
  }
  const int64_t prompt_count = static_cast<int64_t>(ids.size()) / config.text.context_length;
  auto tokens = torch::tensor(ids, torch::kLong).view({prompt_count, config.text.context_length}).to(loaded.device);
  std::vector<double> class_s, full_s;
  if (wants("text")) model->EncodeText(tokens.narrow(0, 0, 8));  // warm-up
  for (int run = 0; run < options.text_runs && wants("text"); ++run) {
    class_s.push_back(Seconds([&] { model->EncodeText(tokens); sync(); }));
    full_s.push_back(Seconds([&] { model->EncodeText(tokens, /*full_context=*/true); sync(); }));
  }
  if (wants("text")) {
    // The work the bucketed pass does: each prompt runs to its bucket's longest prompt, the
    // positions that prompts share once.
    const auto ends = tokens.argmax(-1).cpu();
    std::vector<int64_t> lengths;
    for (int64_t i = 0; i < prompt_count; ++i) lengths.push_back(ends[i].item<int64_t>() + 1);
    double class_flops = 0;
    int64_t positions = 0, nodes = 0;
    for (const auto& bucket : model::TextBuckets(lengths, model::kTextBucketMinTokens, model::kTextBucketMaxTokens)) {
      const auto tree = model::BuildTextPrefixTree(ids.data(), config.text.context_length, bucket);
      const auto rows = static_cast<int64_t>(bucket.rows.size());
      const auto tree_nodes = static_cast<int64_t>(tree.tokens.size());
      class_flops += model::TextTreeForwardFlops(config, tree_nodes, rows, bucket.length);
      positions += rows * bucket.length;
      nodes += tree_nodes;
    }
    out["text.bucketed_positions"] = positions;
    out["text.computed_positions"] = nodes;
    const double full_flops = prompt_count * model::TextForwardFlops(config, config.text.context_length);
    out["text.prompts"] = prompt_count;
    out["text.class_s"] = Median(class_s);
    out["text.full_context_s"] = Median(full_s);
    out["text.gflop_class"] = class_flops / 1e9;
    out["text.gflops"] = class_flops / Median(class_s) / 1e9;
    out["text.gflops_full_context"] = full_flops / Median(full_s) / 1e9;
  }

  // TTA alone, on real patch tokens and text features.
  auto text = detector->EncodeText(spec);
  if (!text.ok()) {
    std::cerr << "anoclip bench: " << text.status().message() << "\n";
    return 1;
  }
  anomaly::TtaOptions tta_options;  // the adapter's products in the mode the Detector uses
  tta_options.compute_dtype = loaded.tta_dtype;
  auto adapter = anomaly::TestTimeAdapter::Create(tta_options);
  std::map<int64_t, std::vector<double>> tta;
  // AnoCLIP+ over AnoCLIP at batch 1 from an AnoCLIP forward timed beside each adaptation: the
  // vision runs above took place minutes earlier, and this machine's speed drifts in between.
  std::vector<double> forward_beside_tta;
  for (int64_t batch : {1, 8}) {
    if (!wants("tta")) break;
    const auto images = loaded.ToModelInput(torch::randn({batch, 3, size, size}));
    auto patches = model->EncodeImage(images, {true, false}).local_aware_patches.to(torch::kFloat32);
    // Each image's prompts as the Detector gives them: the class's rows, and under --precision
    // int8 their int8 copy, which the class keeps from its first adaptation on.
    const std::vector<anomaly::AdapterPrompts> prompt_rows(batch, text->ForAdapter(loaded.tta_dtype, loaded.device));
    auto features = text->features.unsqueeze(0).expand({batch, -1, -1}).contiguous();
    for (int run = -1; run < options.runs; ++run) {
      const double s = Seconds([&] { adapter->Adapt(patches, prompt_rows, features); sync(); });
      if (run >= 0) tta[batch].push_back(s / batch);
      if (batch == 1 && run >= 0 && wants("vision")) {
        forward_beside_tta.push_back(Seconds([&] { model->EncodeImage(images, {true, false}); sync(); }));
      }
    }
  }
  // The whole engine call the service makes per batch (forward, scores, heatmaps), for
  // comparing the service's throughput with what one process does offline.
  std::map<int64_t, std::vector<double>> detect;
  for (int64_t batch : {1, 8}) {
    if (!wants("detect")) break;
    auto images = torch::randn({batch, 3, size, size});
    auto shared = std::make_shared<const anomaly::TextFeatures>(*text);
    std::vector<std::shared_ptr<const anomaly::TextFeatures>> texts(batch, shared);
    for (int run = -1; run < options.runs; ++run) {
      const double s = Seconds([&] { (void)detector->Detect(images, texts, {anomaly::DetectOptions{}}); sync(); });
      if (run >= 0) detect[batch].push_back(s / batch);
    }
  }
  // Reduced precision against float32 on the same images: the forward's speed-up within each
  // run, and how far the results move.
  const std::string precision = args->String("precision", "fp32");
  if (precision != "fp32" && wants("precision")) {
    auto reference_options = DetectorOptionsFromArguments(*args);
    reference_options->precision = "fp32";
    auto reference_engine = anomaly::LoadEngine(*reference_options);
    if (!reference_engine.ok()) {
      std::cerr << "anoclip bench: " << reference_engine.status().message() << "\n";
      return 1;
    }
    const auto reference = anomaly::Detector::FromEngine(*reference_engine);
    const anomaly::Engine& reference_loaded = **reference_engine;
    auto reference_model = reference_loaded.model;
    const model::VisionRequest anoclip_request{true, false};
    std::map<int64_t, std::vector<double>> speedup;
    for (int64_t batch : {1, 8}) {
      auto images = torch::randn({batch, 3, size, size});
      auto reduced_input = loaded.ToModelInput(images), reference_input = reference_loaded.ToModelInput(images);
      for (int run = -1; run < options.runs; ++run) {
        const double fp32_s = Seconds([&] { reference_model->EncodeImage(reference_input, anoclip_request); sync(); });
        const double reduced_s = Seconds([&] { model->EncodeImage(reduced_input, anoclip_request); sync(); });
        if (run >= 0) speedup[batch].push_back(fp32_s / reduced_s);
      }
    }
    auto images = torch::randn({8, 3, size, size});
    auto shared = std::make_shared<const anomaly::TextFeatures>(*text);
    std::vector<std::shared_ptr<const anomaly::TextFeatures>> texts(8, shared);
    anomaly::DetectOptions with_tta;
    with_tta.tta = true;
    double min_correlation = 1, min_tta_correlation = 1, max_score_diff = 0;
    auto reduced = detector->Detect(images, texts, {with_tta});
    auto full = reference->Detect(images, texts, {with_tta});
    if (!reduced.ok() || !full.ok()) {
      std::cerr << "anoclip bench: " << (reduced.ok() ? full.status() : reduced.status()).message() << "\n";
      return 1;
    }
    for (size_t i = 0; i < full->size(); ++i) {
      const auto &r = (*reduced)[i], &f = (*full)[i];
      min_correlation = std::min(min_correlation, Correlation(r.zero_shot_anomaly_map, f.zero_shot_anomaly_map));
      min_tta_correlation = std::min(min_tta_correlation, Correlation(r.anomaly_map, f.anomaly_map));
      max_score_diff = std::max<double>(max_score_diff, std::abs(r.image_score - f.image_score));
    }
    out["precision"] = precision;
    out["precision.speedup.b1"] = Median(speedup[1]);
    out["precision.speedup.b8"] = Median(speedup[8]);
    out["precision.map_correlation_min"] = min_correlation;
    out["precision.tta_map_correlation_min"] = min_tta_correlation;
    out["precision.image_score_max_abs_diff"] = max_score_diff;
  }
  if (wants("detect")) {
    out["detect.b1"] = Median(detect[1]);
    out["detect.b8"] = Median(detect[8]);
    out["detect.b8_images_per_s"] = 1.0 / out["detect.b8"].get<double>();
  }
  if (wants("tta")) {
    out["tta.b1"] = Median(tta[1]);
    out["tta.b8"] = Median(tta[8]);
    out["ratio.tta_8xb8_over_b1"] = 8 * out["tta.b8"].get<double>() / out["tta.b1"].get<double>();
  }
  if (wants("vision")) {
    const double anoclip_b1 = out["vision.anoclip.b1"];
    out["ratio.anoclip_over_clip.b1"] = anoclip_b1 / out["vision.clip.b1"].get<double>();
    out["ratio.anoclip_over_clip.b8"] = out["vision.anoclip.b8"].get<double>() / out["vision.clip.b8"].get<double>();
    if (wants("tta")) {
      const double forward = Median(forward_beside_tta);
      out["ratio.anoclip_plus_over_anoclip.b1"] = (forward + out["tta.b1"].get<double>()) / forward;
    }
  }
  if (wants("text")) {
    out["ratio.text_full_over_class"] = out["text.full_context_s"].get<double>() / out["text.class_s"].get<double>();
  }
  if (wants("vision")) {
    out["ratio.anoclip_b8_over_b1"] = out["vision.anoclip.b8"].get<double>() / out["vision.anoclip.b1"].get<double>();
  }
  // Memory against the weight file: the peak while loading, and resident after the runs above.
  std::error_code error;
  const auto weights_bytes = std::filesystem::file_size(args->String("model") + "/open_clip_model.safetensors", error);
  if (!error) out["memory.weights_file_mb"] = weights_bytes / 1048576.0;
  out["memory.load_s"] = load_s;
  out["memory.peak_after_load_mb"] = hwm_after_load_mb;
  out["memory.rss_after_load_mb"] = rss_after_load_mb;
  out["memory.peak_mb"] = ProcessMemoryMb("VmHWM");
  out["memory.rss_mb"] = ProcessMemoryMb("VmRSS");
  const CpuInfo cpu_info = ReadCpuInfo();
  const std::string cpu = cpu_info.model_name, cpu_flags = PrecisionFlags(cpu_info);
  out["cpu"] = cpu;
  out["cpu_precision_flags"] = cpu_flags;
  out["threads"] = at::get_num_threads();
  out["blas"] = BlasLibraryPath();
  out["blas_kernels"] = OpenBlasCoreName();
  out["gemm_library"] = detector->gemm_library();  // what --gemm chose for the forwards
  // the adapter's products
  out["tta_dtype"] = loaded.tta_dtype == torch::kInt8 ? "int8" : loaded.tta_dtype == torch::kBFloat16 ? "bf16" : "fp32";
  out["device"] = loaded.device_name;
  out["model"] = detector->model_id();
  out["image_size"] = size;
  out["runs"] = options.runs;

  if (options.json) {
    std::cout << out.dump(2) << std::endl;
  } else {
    for (const auto& [key, value] : out.items()) std::cout << key << ": " << value << "\n";
  }
  return 0;
}

}  // namespace anoclip::cli
