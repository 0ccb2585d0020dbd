// `anoclip eval`: accuracy on labelled images (MVTec AD, VisA or a folder of the user's own
// parts). Every image goes through Detector::Detect, the engine call the server makes, in batches
// of one class; per-image results are appended to OUT/results/<class>.bin as they come, so an
// interrupted run continues with --resume. Then the metrics of docs/algorithm.md §8 per class and
// their mean, the operating point of a calibration or --threshold, and the reports.
#include <ATen/ATen.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "inspection/calibration.h"
#include "inspection/decision.h"
#include "cli/command_support.h"
#include "cli/commands.h"
#include "cli/engine_setup.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "common/stopwatch.h"
#include "eval/dataset.h"
#include "eval/evaluation.h"
#include "eval/overlay.h"
#include "eval/progress.h"
#include "eval/report.h"
#include "eval/results_store.h"
#include "image/pil_resize.h"
#include "inspection/render.h"

namespace anoclip::cli {
namespace {

namespace fs = std::filesystem;
using Clock = anoclip::SteadyClock;

constexpr char kUsage[] =
    "usage: anoclip eval --data DIR --dataset mvtec|visa|folder --model DIR [--classes a,b]\n"
    "         [--views 1|22] [--mode anoclip|clip]\n"
    "         [--tta [--tta-steps N] [--tta-lr X] [--tta-sigma X] [--tta-init text|random] [--seed N]]\n"
    "         [--calibration-dir DIR | --threshold X] [--out DIR] [--vis N] [--resume] [--batch N]\n"
    "         [--vocab FILE] [--device cpu|cuda:N] [--dtype float32|float16|bfloat16] [--threads N]\n"
    "         [--gemm auto|blas|onednn]\n"
    "  Scores every test image, then writes OUT/metrics.md (also printed), metrics.json, metrics.csv,\n"
    "  report.html and, with --vis N, N overlays per class under OUT/vis/. Per-image results stay in\n"
    "  OUT/results/; --resume continues an interrupted run with the same settings.\n"
    "  --classes: the classes to evaluate (default all); for the folder layout the class name\n"
    "  (default the folder's name). --calibration-dir DIR holds <class>.json from anoclip calibrate.\n"
    "  Files that cannot be read are named on stderr and in the reports, and the exit status is 1.\n";

constexpr int64_t kMaxBatch = 64;
constexpr int64_t kMaxVis = 100;

struct EvalRequest {
  anomaly::DetectorOptions detector;
  anomaly::DetectOptions options;
  std::string data, out;
  eval::Layout layout = eval::Layout::kMvtec;
  std::vector<std::string> classes;
  std::string calibration_dir;
  std::optional<double> threshold;
  int64_t vis = 0, batch = 8;
  bool resume = false;
  nlohmann::ordered_json settings;  // what makes two runs' results comparable
};

absl::StatusOr<EvalRequest> EvalRequestFromArguments(const Arguments& args) {
  EvalRequest request;
  ANOCLIP_ASSIGN_OR_RETURN(request.detector, DetectorOptionsFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.options, DetectOptionsFromArguments(args));
  ANOCLIP_ASSIGN_OR_RETURN(request.data, args.Required("data"));
  ANOCLIP_ASSIGN_OR_RETURN(const std::string layout, args.Required("dataset"));
  ANOCLIP_ASSIGN_OR_RETURN(request.layout, eval::ParseLayout(layout));
  if (args.Has("classes")) {
    for (absl::string_view name : absl::StrSplit(args.String("classes"), ',', absl::SkipWhitespace())) {
      request.classes.emplace_back(name);
    }
    if (request.classes.empty()) return absl::InvalidArgumentError("--classes is empty");
  }
  if (args.Has("calibration-dir") && args.Has("threshold")) {
    return absl::InvalidArgumentError("give --calibration-dir or --threshold, not both");
  }
  if (args.Has("calibration-dir")) {
    ANOCLIP_ASSIGN_OR_RETURN(request.calibration_dir, args.Required("calibration-dir"));
  }
  if (args.Has("threshold")) {
    ANOCLIP_ASSIGN_OR_RETURN(double threshold, args.Double("threshold", 0.5));
    ANOCLIP_RETURN_IF_ERROR(inspection::ValidateThreshold(threshold));
    request.threshold = threshold;
  }
  request.out = args.String("out", "eval-out");
  if (request.out.empty()) return absl::InvalidArgumentError("--out is empty");
  ANOCLIP_ASSIGN_OR_RETURN(request.vis, args.Int("vis", 0, 0, kMaxVis));
  ANOCLIP_ASSIGN_OR_RETURN(request.batch, args.Int("batch", 8, 1, kMaxBatch));
  request.resume = args.Flag("resume");
  const auto& tta = request.options.tta_options;
  request.settings = {{"dataset", layout},
                      {"data", fs::absolute(request.data).lexically_normal().string()},
                      {"classes", request.classes},
                      {"model_dir", request.detector.model_dir},
                      {"views", request.options.views},
                      {"mode", args.String("mode", "anoclip")},
                      {"tta", request.options.tta},
                      {"dtype", request.detector.dtype}};
  if (request.options.tta) {
    request.settings["tta_options"] = {{"steps", tta.steps}, {"lr", tta.lr}, {"sigma", tta.sigma},
                                       {"init", args.String("tta-init", "text")}, {"seed", tta.seed}};
  }
  return request;
}

cv::Mat ToMat(const at::Tensor& map) {
  auto contiguous = map.to(at::kFloat).cpu().contiguous();
  return cv::Mat(static_cast<int>(contiguous.size(0)), static_cast<int>(contiguous.size(1)), CV_32F,
                 contiguous.data_ptr<float>())
      .clone();
}

// The ground truth at the evaluation size (docs/algorithm.md §8): nonzero mask pixels are defect, the
// binary mask is resized like the images and binarised at 0.5. Returns 0/1.
absl::StatusOr<cv::Mat> ReadMask(const std::string& path, int size) {
  ANOCLIP_ASSIGN_OR_RETURN(cv::Mat rgb, ReadImageForDetector(path));
  cv::Mat gray;
  cv::cvtColor(rgb, gray, cv::COLOR_RGB2GRAY);
  const cv::Mat binary = gray != 0;  // 0 or 255
  const cv::Mat resized = image::ResizeBilinearLikePil(binary, size, size);
  return cv::Mat((resized > 127) / 255);  // value/255 > 0.5, as 0/1
}

std::string ResultsPath(const EvalRequest& request, const std::string& class_name) {
  return (fs::path(request.out) / "results" / (class_name + ".bin")).string();
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

// A new run writes OUT/run.json; --resume requires the same settings, and a second run without
// it refuses to mix its results into an earlier one's.
absl::Status PrepareOutput(const EvalRequest& request) {
  std::error_code error;
  fs::create_directories(fs::path(request.out) / "results", error);
  if (error) return absl::PermissionDeniedError(absl::StrCat("cannot create ", request.out, ": ", error.message()));
  const fs::path run = fs::path(request.out) / "run.json";
  if (fs::exists(run, error)) {
    if (!request.resume) {
      return absl::AlreadyExistsError(absl::StrCat(request.out, " holds an earlier evaluation (", run.string(),
                                                   "); give --resume to continue it, or another --out"));
    }
    ANOCLIP_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(run.string()));
    const auto saved = nlohmann::ordered_json::parse(text, nullptr, false);
    if (saved.is_discarded()) return absl::DataLossError(absl::StrCat(run.string(), " is not JSON"));
    for (const auto& [key, value] : request.settings.items()) {
      if (!saved.contains(key) || saved[key] != value) {
        return absl::FailedPreconditionError(
            absl::StrCat("--resume: ", run.string(), " was made with ", key, " = ",
                         saved.contains(key) ? saved[key].dump() : "(unset)", ", this run has ", value.dump()));
      }
    }
    if (saved.size() != request.settings.size()) {
      return absl::FailedPreconditionError(absl::StrCat("--resume: ", run.string(), " has other settings"));
    }
    return absl::OkStatus();
  }
  return WriteText(run, request.settings.dump(2) + "\n");
}

struct ClassState {
  const eval::ClassSet* set;
  std::vector<const eval::Sample*> pending;
  uint64_t valid_bytes = 0;
  std::shared_ptr<const inspection::Calibration> calibration;
};

// Scores the pending samples of one class in batches and appends their results.
absl::Status ScoreClass(const EvalRequest& request, const anomaly::Detector& detector, ClassState& state,
                        std::vector<eval::Problem>& failures, eval::Progress& progress, double* text_seconds,
                        int64_t* scored) {
  if (state.pending.empty()) return absl::OkStatus();
  const eval::ClassSet& set = *state.set;
  anomaly::PromptSpec spec;
  spec.class_name = set.prompt_class;
  spec.kind = anomaly::DefaultKindForClass(set.prompt_class);
  const auto text_start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(auto text, detector.EncodeText(spec));
  *text_seconds += SecondsSince(text_start);
  const auto shared_text = std::make_shared<const anomaly::TextFeatures>(std::move(text));
  ANOCLIP_ASSIGN_OR_RETURN(auto writer, eval::ResultsWriter::Open(ResultsPath(request, set.name), state.valid_bytes));
  const int size = detector.config().vision.image_size;
  for (size_t begin = 0; begin < state.pending.size(); begin += request.batch) {
    const size_t end = std::min(state.pending.size(), begin + static_cast<size_t>(request.batch));
    std::vector<at::Tensor> inputs;
    std::vector<eval::ImageResult> results;
    for (size_t i = begin; i < end; ++i) {
      const eval::Sample& sample = *state.pending[i];
      auto rgb = ReadImageForDetector(sample.image);
      if (!rgb.ok()) {
        failures.push_back({sample.image, std::string(rgb.status().message())});
        continue;
      }
      eval::ImageResult result{sample.image, sample.defect, sample.anomalous, 0.f, {}, {}};
      if (set.has_masks) {
        if (sample.mask.empty()) {
          result.mask = cv::Mat::zeros(size, size, CV_8U);
        } else {
          auto mask = ReadMask(sample.mask, size);
          if (!mask.ok()) {
            failures.push_back({sample.mask, std::string(mask.status().message())});
            continue;
          }
          result.mask = *mask;
        }
      }
      inputs.push_back(PreprocessForDetector(*rgb, detector));
      results.push_back(std::move(result));
    }
    if (!inputs.empty()) {
      ANOCLIP_ASSIGN_OR_RETURN(
          auto detections,
          detector.Detect(at::stack(inputs),
                          std::vector<std::shared_ptr<const anomaly::TextFeatures>>(inputs.size(), shared_text),
                          {request.options}));
      for (size_t i = 0; i < results.size(); ++i) {
        results[i].image_score = detections[i].image_score;
        results[i].map = ToMat(detections[i].anomaly_map);
        ANOCLIP_RETURN_IF_ERROR(writer->Append(results[i]));
      }
      *scored += static_cast<int64_t>(results.size());
    }
    progress.Advance(static_cast<int64_t>(end - begin), set.name);
  }
  return absl::OkStatus();
}

// Up to `count` images of a class for the report: defective ones first, in listing order.
std::vector<const eval::ImageResult*> PickOverlays(const std::vector<eval::ImageResult>& results, int64_t count) {
  std::vector<const eval::ImageResult*> picked;
  for (bool anomalous : {true, false}) {
    for (const auto& result : results) {
      if (static_cast<int64_t>(picked.size()) < count && result.anomalous == anomalous) picked.push_back(&result);
    }
  }
  return picked;
}

absl::StatusOr<eval::OverlayImage> MakeOverlay(const EvalRequest& request, const eval::ImageResult& result,
                                               const eval::ClassEvaluation& evaluation,
                                               const eval::OperatingRule& rule) {
  ANOCLIP_ASSIGN_OR_RETURN(cv::Mat rgb, ReadImageForDetector(result.image));
  const cv::Mat input = image::ResizeBilinearLikePil(rgb, result.map.cols, result.map.rows);
  cv::Mat gray;
  std::vector<std::vector<cv::Point>> regions;
  if (rule.calibration != nullptr || rule.threshold) {
    ANOCLIP_ASSIGN_OR_RETURN(auto decision,
                             inspection::Decide(result.image_score, result.map, rule.calibration, rule.threshold, 1));
    for (const auto& region : decision.regions) regions.push_back(region.contour);
    // Calibrated maps on their fixed scale; raw ones over the class's range, comparable within it.
    gray = rule.calibration ? inspection::HeatmapToGray(decision.map, 0.f, 1.f)
                            : inspection::HeatmapToGray(result.map, evaluation.pixel_low, evaluation.pixel_high);
  } else {
    gray = inspection::HeatmapToGray(result.map, evaluation.pixel_low, evaluation.pixel_high);
  }
  const cv::Mat overlay = eval::RenderEvaluationOverlay(input, gray, result.mask, regions);
  eval::OverlayImage out{evaluation.name, result.image, result.anomalous, {}};
  ANOCLIP_ASSIGN_OR_RETURN(out.png, inspection::EncodePng(overlay));
  const fs::path dir = fs::path(request.out) / "vis" / evaluation.name;
  std::error_code error;
  fs::create_directories(dir, error);
  const std::string name = absl::StrCat(result.anomalous ? result.defect + "_" : "good_",
                                        fs::path(result.image).stem().string(), ".png");
  ANOCLIP_RETURN_IF_ERROR(WriteText(dir / name, out.png));
  return out;
}

absl::Status RunEval(const EvalRequest& request, int* exit_code) {
  const auto total_start = Clock::now();
  ANOCLIP_ASSIGN_OR_RETURN(eval::Dataset dataset,
                           eval::ReadDataset(request.data, request.layout, request.classes, ""));
  std::vector<eval::Problem> failures = dataset.problems;
  for (const auto& problem : dataset.problems) {
    std::cerr << "anoclip eval: " << problem.file << ": " << problem.error << "\n";
  }
  // Calibrations before the model: a missing one fails fast and names itself.
  std::map<std::string, std::shared_ptr<const inspection::Calibration>> calibrations;
  if (!request.calibration_dir.empty()) {
    for (const auto& set : dataset.classes) {
      const std::string path = (fs::path(request.calibration_dir) / (set.name + ".json")).string();
      ANOCLIP_ASSIGN_OR_RETURN(auto calibration, inspection::LoadCalibration(path));
      if (calibration.class_name != set.prompt_class) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, " is for class ", calibration.class_name, ", not ", set.prompt_class));
      }
      calibrations[set.name] = std::make_shared<const inspection::Calibration>(std::move(calibration));
    }
  }
  // A resumed run keeps the GEMM library the run began with (`--gemm auto` times the libraries
  // afresh in each process), so that its scores equal an uninterrupted run's to the last bit.
  anomaly::DetectorOptions detector_options = request.detector;
  if (request.resume && detector_options.gemm == "auto") {
    const auto saved = ReadFileToString((fs::path(request.out) / "run.json").string());
    const auto json = saved.ok() ? nlohmann::ordered_json::parse(*saved, nullptr, false) : nlohmann::ordered_json();
    if (json.is_object() && json.contains("gemm") && json["gemm"].is_string()) detector_options.gemm = json["gemm"];
  }
  ANOCLIP_ASSIGN_OR_RETURN(auto detector, anomaly::Detector::Create(detector_options));
  for (const auto& [name, calibration] : calibrations) {
    if (calibration->model_id != detector->model_id()) {
      return absl::InvalidArgumentError(absl::StrCat("the calibration of ", name, " was made with model ",
                                                     calibration->model_id, ", not ", detector->model_id()));
    }
  }
  EvalRequest run = request;
  run.settings["model"] = detector->model_id();
  run.settings["image_size"] = detector->config().vision.image_size;
  run.settings["gemm"] = detector->gemm_library();
  ANOCLIP_RETURN_IF_ERROR(PrepareOutput(run));

  // What is already scored (--resume), and what is left.
  std::vector<ClassState> states;
  int64_t pending = 0, resumed = 0;
  for (const auto& set : dataset.classes) {
    ClassState state{&set, {}, 0, calibrations[set.name]};
    ANOCLIP_ASSIGN_OR_RETURN(auto done, eval::ReadResults(ResultsPath(run, set.name), &state.valid_bytes));
    std::set<std::string> scored;
    for (const auto& result : done) scored.insert(result.image);
    for (const auto& sample : set.samples) {
      if (!scored.count(sample.image)) state.pending.push_back(&sample);
    }
    resumed += static_cast<int64_t>(set.samples.size() - state.pending.size());
    pending += static_cast<int64_t>(state.pending.size());
    states.push_back(std::move(state));
  }
  if (resumed > 0) std::cerr << "anoclip eval: resuming; " << resumed << " images already scored\n";

  const auto score_start = Clock::now();
  double text_seconds = 0;
  int64_t scored = 0;
  eval::Progress progress(pending, isatty(STDERR_FILENO) != 0, std::cerr);
  for (auto& state : states) {
    ANOCLIP_RETURN_IF_ERROR(ScoreClass(run, *detector, state, failures, progress, &text_seconds, &scored));
  }
  progress.Finish();
  const double score_seconds = SecondsSince(score_start);

  // Metrics over the results of the images listed now, in listing order.
  eval::EvaluationReport report;
  report.settings = run.settings;
  const auto metrics_start = Clock::now();
  std::vector<std::vector<eval::ImageResult>> class_results;
  for (const auto& state : states) {
    ANOCLIP_ASSIGN_OR_RETURN(auto stored, eval::ReadResults(ResultsPath(run, state.set->name)));
    std::map<std::string, size_t> index;
    for (size_t i = 0; i < stored.size(); ++i) index[stored[i].image] = i;
    std::vector<eval::ImageResult> results;
    for (const auto& sample : state.set->samples) {
      if (auto it = index.find(sample.image); it != index.end()) results.push_back(std::move(stored[it->second]));
    }
    if (results.empty()) {
      failures.push_back({state.set->name, "no image of this class could be scored"});
      class_results.emplace_back();
      continue;
    }
    const eval::OperatingRule rule{state.calibration.get(), run.threshold};
    ANOCLIP_ASSIGN_OR_RETURN(auto evaluation,
                             eval::EvaluateClass(state.set->name, state.set->prompt_class, results, rule));
    report.classes.push_back(std::move(evaluation));
    class_results.push_back(std::move(results));
  }
  const double metrics_seconds = SecondsSince(metrics_start);

  const auto report_start = Clock::now();
  if (!calibrations.empty()) report.operating_rule = "calibration (calibrated scores, decision at 0.5)";
  if (run.threshold) report.operating_rule = absl::StrCat("threshold ", *run.threshold, " on raw scores");
  size_t evaluated = 0;
  for (size_t c = 0; c < states.size(); ++c) {
    if (class_results[c].empty()) continue;
    const eval::ClassEvaluation& evaluation = report.classes[evaluated++];
    const eval::OperatingRule rule{states[c].calibration.get(), run.threshold};
    for (const auto* result : PickOverlays(class_results[c], run.vis)) {
      auto overlay = MakeOverlay(run, *result, evaluation, rule);
      if (!overlay.ok()) {
        failures.push_back({result->image, absl::StrCat("overlay: ", overlay.status().message())});
        continue;
      }
      report.overlays.push_back(std::move(overlay).value());
    }
  }
  report.failures = failures;
  report.timings = {{"scoring", score_seconds},
                    {"text_features", text_seconds},
                    {"images_scored", scored},
                    {"images_resumed", resumed},
                    {"images_per_s", score_seconds - text_seconds > 0 ? scored / (score_seconds - text_seconds) : 0.0},
                    {"metrics", metrics_seconds}};
  const std::string tables = eval::MarkdownTables(report);
  const fs::path out(run.out);
  ANOCLIP_RETURN_IF_ERROR(WriteText(out / "metrics.md", tables));
  ANOCLIP_RETURN_IF_ERROR(WriteText(out / "metrics.csv", eval::ReportCsv(report)));
  report.timings["report"] = SecondsSince(report_start);
  report.timings["total"] = SecondsSince(total_start);
  ANOCLIP_RETURN_IF_ERROR(WriteText(out / "metrics.json", eval::ReportJson(report).dump(2) + "\n"));
  ANOCLIP_RETURN_IF_ERROR(WriteText(out / "report.html", eval::ReportHtml(report)));
  std::cout << tables << std::flush;
  std::cerr << "anoclip eval: reports in " << out.string() << " (metrics.md, metrics.json, metrics.csv, report.html)\n";
  if (!failures.empty()) {
    std::vector<std::string> names;
    for (const auto& failure : failures) names.push_back(absl::StrCat(failure.file, " (", failure.error, ")"));
    std::cerr << "anoclip eval: " << failures.size() << " files could not be used: " << absl::StrJoin(names, "; ")
              << "\n";
    *exit_code = kExitRuntimeError;
  }
  return absl::OkStatus();
}

}  // namespace

int RunEvalCommand(const std::vector<std::string>& words) {
  auto value_flags = EngineValueFlags();
  value_flags.merge(ScoringValueFlags());
  value_flags.insert({"data", "dataset", "classes", "calibration-dir", "threshold", "out", "vis", "batch"});
  int exit_code = kExitOk;
  auto args = ParseCommandLine("eval", words, value_flags, {"tta", "resume"}, kUsage, &exit_code);
  if (!args) return exit_code;
  auto request = EvalRequestFromArguments(*args);
  if (!request.ok()) return ReportError("eval", request.status(), kExitUsageError);
  if (auto status = RunEval(*request, &exit_code); !status.ok()) return ReportError("eval", status, kExitRuntimeError);
  return exit_code;
}

}  // namespace anoclip::cli
