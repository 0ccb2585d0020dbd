// Times the metrics stage of `anoclip eval` on a synthetic set the size of MVTec AD's test split:
// 15 classes with its per-class image and defect counts (1,725 images), 240x240 maps. The maps
// and masks are written as per-image results first (untimed); the timed stage is what eval does
// after scoring: read each class's results and compute every metric, curve and PRO.
// Not a test: `build/bin/eval_metrics_bench [DIR]` prints JSON.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "eval/evaluation.h"
#include "eval/results_store.h"

namespace {

struct ClassSize {
  const char* name;
  int images, anomalous;
};

// MVTec AD's test split.
constexpr ClassSize kClasses[] = {
    {"bottle", 83, 63},     {"cable", 150, 92},   {"capsule", 132, 109}, {"carpet", 117, 89},
    {"grid", 78, 57},       {"hazelnut", 110, 70}, {"leather", 124, 92},  {"metal_nut", 115, 93},
    {"pill", 167, 141},     {"screw", 160, 119},  {"tile", 117, 84},     {"toothbrush", 42, 30},
    {"transistor", 100, 40}, {"wood", 79, 60},     {"zipper", 151, 119}};
constexpr int kSize = 240;

// User plus system CPU seconds of this process so far: the stage is single-threaded, so on an
// idle machine its wall time is about this; on a shared one wall time also counts waiting.
double CpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec + 1e-6 * (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
}

std::string CpuName() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// A model-like map: probabilities near 0.5 with a small spread, higher on and near the defect.
anoclip::eval::ImageResult MakeResult(cv::RNG& rng, const std::string& name, int index, bool anomalous) {
  anoclip::eval::ImageResult result;
  result.image = name + "/" + std::to_string(index) + ".png";
  result.defect = anomalous ? "defect" : "good";
  result.anomalous = anomalous;
  result.mask = cv::Mat::zeros(kSize, kSize, CV_8U);
  if (anomalous) {
    for (int k = rng.uniform(1, 4); k > 0; --k) {
      cv::ellipse(result.mask, cv::Point(rng.uniform(20, kSize - 20), rng.uniform(20, kSize - 20)),
                  cv::Size(rng.uniform(3, 30), rng.uniform(3, 30)), rng.uniform(0, 180), 0, 360, cv::Scalar(1),
                  cv::FILLED);
    }
  }
  cv::Mat noise(kSize, kSize, CV_32F), signal;
  rng.fill(noise, cv::RNG::NORMAL, 0.5, 0.004);
  result.mask.convertTo(signal, CV_32F, 0.006);
  cv::GaussianBlur(signal, signal, cv::Size(9, 9), 3);
  result.map = noise + signal;
  result.image_score = static_cast<float>(0.5 + rng.gaussian(0.002) + (anomalous ? 0.002 : 0.0));
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : (std::filesystem::temp_directory_path() / "anoclip_metrics_bench").string();
  std::filesystem::create_directories(dir);
  cv::RNG rng(7);
  int images = 0;
  for (const auto& c : kClasses) {
    auto writer = anoclip::eval::ResultsWriter::Open(dir + "/" + c.name + ".bin", 0);
    if (!writer.ok()) {
      std::cerr << writer.status() << "\n";
      return 1;
    }
    for (int i = 0; i < c.images; ++i) {
      if (auto s = (*writer)->Append(MakeResult(rng, c.name, i, i >= c.images - c.anomalous)); !s.ok()) {
        std::cerr << s << "\n";
        return 1;
      }
    }
    images += c.images;
  }
  const auto start = std::chrono::steady_clock::now();
  const double cpu_start = CpuSeconds();
  nlohmann::ordered_json per_class;
  double mean_pixel_auroc = 0, mean_pro = 0;
  for (const auto& c : kClasses) {
    const auto class_start = std::chrono::steady_clock::now();
    auto results = anoclip::eval::ReadResults(dir + "/" + c.name + ".bin");
    if (!results.ok()) {
      std::cerr << results.status() << "\n";
      return 1;
    }
    auto evaluation = anoclip::eval::EvaluateClass(c.name, c.name, *results, {nullptr, 0.5});
    if (!evaluation.ok()) {
      std::cerr << evaluation.status() << "\n";
      return 1;
    }
    mean_pixel_auroc += evaluation->pixel.auroc.value_or(0) / std::size(kClasses);
    mean_pro += evaluation->pro.value_or(0) / std::size(kClasses);
    per_class[c.name] = std::chrono::duration<double>(std::chrono::steady_clock::now() - class_start).count();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double cpu_seconds = CpuSeconds() - cpu_start;
  double load[1] = {0};
  getloadavg(load, 1);
  nlohmann::ordered_json out = {{"cpu", CpuName()},
                                {"images", images},
                                {"map_size", kSize},
                                {"metrics_stage_s", seconds},
                                {"metrics_stage_cpu_s", cpu_seconds},
                                {"load_average_1min", load[0]},
                                {"mean_pixel_auroc", mean_pixel_auroc},
                                {"mean_pro", mean_pro},
                                {"per_class_s", per_class}};
  std::cout << out.dump(2) << std::endl;
  std::filesystem::remove_all(dir);
  return 0;
}
