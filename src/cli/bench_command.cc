#include "common/arguments.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "anomaly/detector.h"
#include "anomaly/detector_impl.h"
#include "anomaly/test_time_adapter.h"
#include "common/blas_info.h"

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

constexpr char kUsage[] =
    "usage: anoclip bench --model DIR [--vocab FILE] [--device cpu|cuda:N] [--threads N]\n"
    "                     [--runs N (>=3)] [--text-runs N] [--parts vision,text,tta,detect] [--json]\n";

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
  const std::string parts = args->String("parts", "vision,text,tta,detect");
  auto wants = [&parts](const std::string& part) { return parts.find(part) != std::string::npos; };
  auto detector = DetectorFromArguments(*args);
  if (!detector.ok()) {
    std::cerr << "anoclip bench: " << detector.status().message() << "\n";
    return 1;
  }
  const auto& impl = (*detector)->impl();
  auto model = impl.model;
  const auto& config = impl.config;
  const int64_t size = config.vision.image_size;
  const bool cuda = impl.device.is_cuda();
  auto sync = [&] {
    if (cuda) torch::cuda::synchronize();
  };

  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  nlohmann::ordered_json out;

  // Vision: plain CLIP and AnoCLIP alternated inside each run, so drift hits both alike.
  std::map<std::string, std::vector<double>> vision;
  for (int64_t batch : {1, 8}) {
    if (!wants("vision")) break;
    auto images = impl.ToModelInput(torch::randn({batch, 3, size, size}));
    const model::VisionRequest clip{false, true}, anoclip{true, false};
    for (int run = -1; run < options.runs; ++run) {  // run -1 warms up
      const double clip_s = Seconds([&] { model->EncodeImage(images, clip); sync(); });
      const double anoclip_s = Seconds([&] { model->EncodeImage(images, anoclip); sync(); });
      if (run < 0) continue;
      vision["vision.clip.b" + std::to_string(batch)].push_back(clip_s / batch);
      vision["vision.anoclip.b" + std::to_string(batch)].push_back(anoclip_s / batch);
    }
  }
  for (const char* key : {"vision.clip.b1", "vision.clip.b8", "vision.anoclip.b1", "vision.anoclip.b8"}) {
    if (wants("vision")) out[key] = Median(vision[key]);
  }

  // Text: one class's 2N prompts, truncated at the longest prompt versus all positions.
  anomaly::PromptSpec spec;
  spec.class_name = "bottle";
  auto prompts = anomaly::BuildPromptSet(spec);
  std::vector<int64_t> ids;
  for (const auto* list : {&prompts->normal, &prompts->abnormal}) {
    for (const auto& text : *list) {
      auto row = impl.tokenizer->EncodeForModel(text, config.text.context_length);
      ids.insert(ids.end(), row.begin(), row.end());
    }
  }
  const int64_t prompt_count = static_cast<int64_t>(ids.size()) / config.text.context_length;
  auto tokens = torch::tensor(ids, torch::kLong).view({prompt_count, config.text.context_length}).to(impl.device);
  std::vector<double> class_s, full_s;
  if (wants("text")) model->EncodeText(tokens.narrow(0, 0, 8));  // warm-up
  for (int run = 0; run < options.text_runs && wants("text"); ++run) {
    class_s.push_back(Seconds([&] { model->EncodeText(tokens); sync(); }));
    full_s.push_back(Seconds([&] { model->EncodeText(tokens, /*full_context=*/true); sync(); }));
  }
  if (wants("text")) {
    out["text.prompts"] = prompt_count;
    out["text.class_s"] = Median(class_s);
    out["text.full_context_s"] = Median(full_s);
  }

  // TTA alone, on real patch tokens and text features.
  auto text = (*detector)->EncodeText(spec);
  if (!text.ok()) {
    std::cerr << "anoclip bench: " << text.status().message() << "\n";
    return 1;
  }
  auto adapter = anomaly::TestTimeAdapter::Create(anomaly::TtaOptions{});
  std::map<int64_t, std::vector<double>> tta;
  for (int64_t batch : {1, 8}) {
    if (!wants("tta")) break;
    auto patches = model->EncodeImage(impl.ToModelInput(torch::randn({batch, 3, size, size})), {true, false})
                       .local_aware_patches.to(torch::kFloat32);
    auto prompt_rows = text->prompts.unsqueeze(0).expand({batch, -1, -1}).contiguous();
    auto features = text->features.unsqueeze(0).expand({batch, -1, -1}).contiguous();
    for (int run = -1; run < options.runs; ++run) {
      const double s = Seconds([&] { adapter->Adapt(patches, prompt_rows, features); sync(); });
      if (run >= 0) tta[batch].push_back(s / batch);
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
      const double s = Seconds([&] { (void)(*detector)->Detect(images, texts, {anomaly::DetectOptions{}}); sync(); });
      if (run >= 0) detect[batch].push_back(s / batch);
    }
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
    if (wants("tta")) out["ratio.anoclip_plus_over_anoclip.b1"] = (anoclip_b1 + out["tta.b1"].get<double>()) / anoclip_b1;
  }
  if (wants("text")) {
    out["ratio.text_full_over_class"] = out["text.full_context_s"].get<double>() / out["text.class_s"].get<double>();
  }
  out["threads"] = at::get_num_threads();
  out["blas"] = BlasLibraryPath();
  out["blas_kernels"] = OpenBlasCoreName();
  out["device"] = impl.device_name;
  out["model"] = (*detector)->model_id();
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
